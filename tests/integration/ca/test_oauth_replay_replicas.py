"""Two CA replicas of one trust domain on a real etcd share the token service's state: a JWT-SVID
client assertion is spent once (the same assertion at replica A, then at replica B), and a client
changed or deleted through one replica is followed by the other's in-memory client set. On SQLite,
an assertion stays spent across a restart and until the validator's leeway after ``exp``."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from pathlib import Path
from typing import Any

from ca_harness import RunningCa, ca_client, start_ca, stop_ca

from s2s.ca.store_config import StoreSettings
from s2s.cli.ca import main
from s2s.core.clock import FakeClock
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

ISSUER = "https://ca.example.test"
TOKEN_ENDPOINT = ISSUER + "/oauth/token"
API = "https://billing.example.org"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OPTIONS: dict[str, Any] = {"config_overrides": {"jwt_issuer": ISSUER}}


async def _register(ca: RunningCa, spiffe_id: str) -> None:
    body = {"spiffe_id": spiffe_id, "scopes": ["billing.read"], "audiences": [API]}
    await ca.admin_call("POST", "/v1/oauth/clients", body)


async def _assertion(ca: RunningCa, spiffe_id: str) -> str:
    body = {"spiffe_id": spiffe_id, "audience": [TOKEN_ENDPOINT]}
    return str((await ca.admin_call("POST", "/v1/jwt/mint", body))["token"])


async def _token(ca: RunningCa, assertion: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}  # fmt: skip
    async with ca.session.post(ca.url + "/oauth/token", data=form) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, body


def _refused_as_replay(answer: tuple[int, dict[str, Any]]) -> bool:
    status, body = answer
    return (status, body.get("error")) == (401, "invalid_client") and "already used" in body.get(
        "error_description", ""
    )


async def test_an_assertion_used_at_one_replica_is_refused_by_the_other(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    td = f"t{uuid.uuid4().hex[:12]}.example.org"
    client = f"spiffe://{td}/ns/shop/sa/checkout"
    argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", td]
    assert await asyncio.to_thread(main, [*argv, "--store", f"{etcd.url}/{td}"]) == 0
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "kek.bin", tmp_path / "b" / "kek.bin")
    settings = StoreSettings(url=etcd.url, trust_domain=td)
    first = await start_ca(tmp_path / "a", store=settings, replica_name="ca-a", **OPTIONS)
    second = await start_ca(tmp_path / "b", store=settings, replica_name="ca-b", **OPTIONS)
    try:
        async with ca_client(first[0]) as ca_a, ca_client(second[0]) as ca_b:
            await _register(ca_a, client)
            assertion = await _assertion(ca_a, client)
            status, body = await _token(ca_a, assertion)
            assert status == 200, body
            assert _refused_as_replay(await _token(ca_b, assertion))  # the other replica
            assert _refused_as_replay(await _token(ca_a, assertion))  # the same one, too
            # twins: a distinct assertion still works at B, then is spent there for A
            fresh = await _assertion(ca_b, client)
            status, body = await _token(ca_b, fresh)
            assert status == 200, body
            assert _refused_as_replay(await _token(ca_a, fresh))
            # two replicas racing with one assertion: exactly one token
            racing = await _assertion(ca_a, client)
            answers = await asyncio.gather(*(_token(ca, racing) for ca in (ca_a, ca_b) * 3))
            assert sorted(status for status, _ in answers) == [200, 401, 401, 401, 401, 401]
    finally:
        await stop_ca(*second)
        await stop_ca(*first)


async def _two_replicas(etcd: EtcdServer, tmp_path: Path) -> tuple[str, list[Any]]:
    td = f"t{uuid.uuid4().hex[:12]}.example.org"
    argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", td]
    assert await asyncio.to_thread(main, [*argv, "--store", f"{etcd.url}/{td}"]) == 0
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "kek.bin", tmp_path / "b" / "kek.bin")
    settings = StoreSettings(url=etcd.url, trust_domain=td)
    replicas = [
        await start_ca(tmp_path / name, store=settings, replica_name=f"ca-{name}", **OPTIONS)
        for name in ("a", "b")
    ]
    return td, replicas


async def _secret_token(ca: RunningCa, client_id: str, secret: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    async with ca.session.post(ca.url + "/oauth/token", data=form) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        return resp.status, body


async def _until(check: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_client_changed_at_one_replica_is_followed_by_the_other(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    _, replicas = await _two_replicas(etcd, tmp_path)
    try:
        async with ca_client(replicas[0][0]) as ca_a, ca_client(replicas[1][0]) as ca_b:
            assert (await _secret_token(ca_b, "reports", "x"))[0] == 401  # unknown at first
            body = {"client_id": "reports", "scopes": ["a", "b"], "audiences": [API]}
            secret = (await ca_a.admin_call("POST", "/v1/oauth/clients", body))["client_secret"]
            status, issued = await _secret_token(ca_b, "reports", secret)  # created: at once
            assert (status, issued.get("scope")) == (200, "a b")
            update = {"client_id": "reports", "scopes": ["a"]}
            await ca_a.admin_call("POST", "/v1/oauth/clients/update", update)

            async def narrowed() -> bool:
                return (await _secret_token(ca_b, "reports", secret))[1].get("scope") == "a"

            await _until(narrowed, "replica b still grants the old scopes")
            await ca_a.admin_call("POST", "/v1/oauth/clients/delete", {"client_id": "reports"})

            async def refused() -> bool:
                return (await _secret_token(ca_b, "reports", secret))[0] == 401

            await _until(refused, "replica b still issues tokens to a deleted client")
            # the twin: replica a, whose own write it was, refuses at once
            assert (await _secret_token(ca_a, "reports", secret))[0] == 401
    finally:
        for running in reversed(replicas):
            await stop_ca(*running)


async def test_an_assertion_stays_spent_across_a_restart_and_through_the_leeway(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "ca"
    argv = ["--data-dir", str(data_dir), "init", "--trust-domain", "example.org"]
    assert await asyncio.to_thread(main, argv) == 0
    client = "spiffe://example.org/ns/shop/sa/checkout"
    clock = FakeClock(dt.datetime.now(dt.UTC))
    running = await start_ca(data_dir, clock=clock, **OPTIONS)
    try:
        async with ca_client(running[0]) as ca:
            await _register(ca, client)
            assertion = await _assertion(ca, client)
            spare = await _assertion(ca, client)
            status, body = await _token(ca, assertion)
            assert status == 200, body
    finally:
        await stop_ca(*running)
    running = await start_ca(data_dir, clock=clock, **OPTIONS)  # a new process's empty memory
    try:
        async with ca_client(running[0]) as ca:
            assert _refused_as_replay(await _token(ca, assertion))
            # past exp, within the validator's 30 s leeway: still accepted if unused, so a
            # replay must still be refused
            clock.advance(dt.timedelta(minutes=5, seconds=10))
            assert _refused_as_replay(await _token(ca, assertion))
            status, body = await _token(ca, spare)  # the twin: an unused one is accepted
            assert status == 200, body
            assert _refused_as_replay(await _token(ca, spare))
    finally:
        await stop_ca(*running)
