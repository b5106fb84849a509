"""The token service of a CA replica cut off from etcd (real ``s2s-ca serve`` processes on a real
3-member etcd, the replica's links to every member cut): ``/oauth/token`` and
``/oauth/introspect`` answer 503 ``temporarily_unavailable`` with ``Retry-After`` in RFC 6749's
error format, because the replica's client set and revocations may miss changes made through
other replicas. Twins: the same requests at the healthy replica succeed, and at the cut replica
before the cut and after the heal."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from etcd_replicas import Replica, Replicas

ISSUER = "https://ca.example.test"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
API = "https://billing.example.org"


async def _assertion(replica: Replica, client: str) -> str:
    assert replica.ca is not None
    body = {"spiffe_id": client, "audience": [ISSUER + "/oauth/token"]}
    return str((await replica.ca.admin_call("POST", "/v1/jwt/mint", body))["token"])


async def _post(
    replica: Replica, path: str, form: dict[str, str]
) -> tuple[int, dict[str, Any], str | None]:
    assert replica.ca is not None
    async with replica.ca.session.post(replica.url + path, data=form) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, body, resp.headers.get("Retry-After")


async def _token(replica: Replica, assertion: str) -> tuple[int, dict[str, Any], str | None]:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}  # fmt: skip
    return await _post(replica, "/oauth/token", form)


async def _introspect(
    replica: Replica, assertion: str, token: str
) -> tuple[int, dict[str, Any], str | None]:
    form = {"token": token, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}  # fmt: skip
    return await _post(replica, "/oauth/introspect", form)


def _unavailable(answer: tuple[int, dict[str, Any], str | None]) -> bool:
    status, body, retry_after = answer
    return (
        status == 503
        and body.get("error") == "temporarily_unavailable"
        and "cannot reach its store" in body.get("error_description", "")
        and retry_after == "1"
    )


async def test_a_cut_replica_issues_and_introspects_no_tokens(etcd_fleet: Replicas) -> None:
    issuer = ("--jwt-issuer", ISSUER)
    cut = await etcd_fleet.start("ca-0", through_links=True, extra_args=issuer)
    healthy = await etcd_fleet.start("ca-1", extra_args=issuer)
    assert healthy.ca is not None
    client = f"spiffe://{etcd_fleet.td}/ns/shop/sa/checkout"
    body = {"spiffe_id": client, "scopes": ["billing.read"], "audiences": [API]}
    await healthy.ca.admin_call("POST", "/v1/oauth/clients", body)

    async def token_at(replica: Replica) -> tuple[int, dict[str, Any], str | None]:
        return await _token(replica, await _assertion(healthy, client))

    status, issued, _ = await token_at(cut)  # before the cut: served
    assert status == 200, issued
    cut.cut()
    await until_ready(cut, ready=False)
    assert _unavailable(await token_at(cut))
    access = issued["access_token"]
    assert _unavailable(await _introspect(cut, await _assertion(healthy, client), access))
    # twins: the healthy replica serves both
    status, other, _ = await token_at(healthy)
    assert status == 200, other
    status, answer, _ = await _introspect(healthy, await _assertion(healthy, client), access)
    assert (status, answer.get("active")) == (200, True), answer
    cut.heal()
    await until_ready(cut, ready=True)
    status, again, _ = await token_at(cut)
    assert status == 200, again


async def until_ready(replica: Replica, *, ready: bool, deadline: float = 30.0) -> None:
    start = time.monotonic()
    while await replica.ready() != ready:
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{replica.name} ready is not {ready} within {deadline} s")
        await asyncio.sleep(0.1)
