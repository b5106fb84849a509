"""The agent API of a running CA over real TLS: attest -> entries -> sign -> JWT -> renew."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import jwt as pyjwt
import pytest
from ca_harness import (
    TRUST_DOMAIN,
    Agent,
    RunningCa,
    ca_client,
    csr_pem,
    load_chain,
    new_key,
    served_leaf,
    start_ca,
    stop_ca,
)
from cryptography.hazmat.primitives import serialization

from s2s.core.x509svid import check_x509_svid
from s2s.testing import TestAuthority

PEM = serialization.Encoding.PEM


def openssl_verify(tmp_path: Path, chain_pem: str, bundle_pem: bytes) -> str:
    """``openssl verify`` of a served chain (leaf then intermediate) against ``bundle_pem``."""
    chain = load_chain(chain_pem)
    (tmp_path / "bundle.pem").write_bytes(bundle_pem)
    (tmp_path / "untrusted.pem").write_bytes(b"".join(c.public_bytes(PEM) for c in chain[1:]))
    (tmp_path / "leaf.pem").write_bytes(chain[0].public_bytes(PEM))
    done = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", "bundle.pem",
         "-untrusted", "untrusted.pem", "leaf.pem"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return "OK" if done.returncode == 0 else done.stdout + done.stderr


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@needs_openssl
async def test_attest_gives_an_agent_svid_that_openssl_and_the_profile_accept(
    ca: RunningCa, agent: Agent, tmp_path: Path
) -> None:
    chain = load_chain(agent.chain_pem)
    assert str(check_x509_svid(chain)) == agent.spiffe_id
    assert agent.spiffe_id.startswith(f"spiffe://{TRUST_DOMAIN}/s2s/agent/join_token/")
    assert openssl_verify(tmp_path, agent.chain_pem, ca.bundle_pem) == "OK"
    foreign = TestAuthority(TRUST_DOMAIN).bundle_pem()
    assert "unable to get local issuer certificate" in openssl_verify(
        tmp_path, agent.chain_pem, foreign
    )
    assert agent.bundle["keys"]


@needs_openssl
async def test_full_flow_entries_batch_sign_jwt_renew(
    ca: RunningCa, agent: Agent, tmp_path: Path
) -> None:
    billing = await ca.entry(agent, "/billing", dns_names=["billing.local"])
    shop = await ca.entry(agent, "/shop")
    status, listed = await agent.call("GET", "/v1/agent/entries")
    assert status == 200
    assert {e["id"] for e in listed["entries"]} == {billing["id"], shop["id"]}
    assert listed["revision"] >= 2

    keys = {billing["id"]: new_key(), shop["id"]: new_key()}
    requests = [{"entry_id": i, "csr": csr_pem(k)} for i, k in keys.items()]
    status, signed = await agent.call("POST", "/v1/agent/x509", json={"requests": requests})
    assert status == 200, signed
    by_entry = {r["entry_id"]: r for r in signed["results"]}
    for entry in (billing, shop):
        result = by_entry[entry["id"]]
        chain = load_chain(result["svid_chain"])
        assert str(check_x509_svid(chain)) == entry["spiffe_id"] == result["spiffe_id"]
        assert chain[0].public_key() == keys[entry["id"]].public_key()
        lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
        assert lifetime <= dt.timedelta(minutes=5, seconds=30)
        assert openssl_verify(tmp_path, result["svid_chain"], ca.bundle_pem) == "OK"
        foreign = TestAuthority(TRUST_DOMAIN).bundle_pem()
        assert openssl_verify(tmp_path, result["svid_chain"], foreign) != "OK"

    status, minted = await agent.call(
        "POST", "/v1/agent/jwt", json={"entry_id": billing["id"], "audience": ["shop", "ledger"]}
    )
    assert status == 200, minted
    _, jwks = await ca.public("GET", "/.well-known/jwks.json")
    claims = verify_jwt(minted["token"], jwks, audience="ledger")
    assert claims["sub"] == billing["spiffe_id"]
    with pytest.raises(pyjwt.InvalidAudienceError):
        verify_jwt(minted["token"], jwks, audience="elsewhere")
    # A foreign key published under the same kid: the signature must not verify.
    foreign_key = json.loads(TestAuthority(TRUST_DOMAIN).bundle().jwt_jwks())["keys"][0]
    foreign_key["kid"] = pyjwt.get_unverified_header(minted["token"])["kid"]
    with pytest.raises(pyjwt.InvalidSignatureError):
        verify_jwt(minted["token"], {"keys": [foreign_key]}, audience="ledger")

    await _renew_and_retire_old_svid(agent)


def verify_jwt(token: str, jwks: dict, *, audience: str) -> dict:
    """Plain PyJWT: pick the key by kid from the JWKS, ES256 only."""
    kid = pyjwt.get_unverified_header(token)["kid"]
    matching = [k for k in jwks["keys"] if k.get("kid") == kid]
    if not matching:
        raise pyjwt.InvalidKeyError(f"no key {kid} in the JWKS")
    key = pyjwt.PyJWK.from_dict(matching[0])
    return pyjwt.decode(token, key.key, algorithms=["ES256"], audience=audience)


async def _renew_and_retire_old_svid(agent: Agent) -> None:
    old_chain = agent.chain_pem
    status, renewed = await agent.call("POST", "/v1/agent/renew", json={"csr": csr_pem(agent.key)})
    assert status == 200, renewed
    assert renewed["spiffe_id"] == agent.spiffe_id
    assert (
        load_chain(renewed["svid_chain"])[0].serial_number != load_chain(old_chain)[0].serial_number
    )
    agent.chain_pem = renewed["svid_chain"]
    status, _ = await agent.call("GET", "/v1/agent/entries")  # first use promotes the new serial
    assert status == 200
    agent.chain_pem = old_chain
    status, body = await agent.call("GET", "/v1/agent/entries")
    assert (status, body["error"]) == (403, "not_authorized")


async def test_entries_long_poll_wakes_on_a_change(ca: RunningCa, agent: Agent) -> None:
    status, first = await agent.call("GET", "/v1/agent/entries")
    assert status == 200
    assert first["entries"] == []
    poll = asyncio.create_task(
        agent.call("GET", f"/v1/agent/entries?since={first['revision']}&wait=20")
    )
    await asyncio.sleep(0)  # let the request start; the assertion below does not depend on it
    created = await ca.entry(agent, "/late")
    status, woke = await asyncio.wait_for(poll, 10)
    assert status == 200
    assert [e["id"] for e in woke["entries"]] == [created["id"]]
    assert woke["revision"] > first["revision"]


@pytest.mark.parametrize("delta", ["", "&delta=1"])
async def test_a_change_to_another_agents_entries_does_not_answer_this_long_poll(
    ca: RunningCa, agent: Agent, delta: str
) -> None:
    other = await ca.attest()
    status, first = await agent.call("GET", "/v1/agent/entries")
    assert status == 200
    query = f"/v1/agent/entries?since={first['revision']}&wait=20{delta}"
    poll = asyncio.create_task(agent.call("GET", query))
    status, theirs = await other.call("GET", "/v1/agent/entries")
    watch = asyncio.create_task(
        other.call("GET", f"/v1/agent/entries?since={theirs['revision']}&wait=20")
    )
    await asyncio.sleep(0.2)  # both polls are held (the assertions below do not depend on it)
    await ca.entry(other, "/theirs")
    status, woke = await asyncio.wait_for(watch, 10)  # the agent it concerns is answered
    assert (status, len(woke["entries"])) == (200, 1)
    await asyncio.sleep(0.3)
    assert not poll.done()  # this agent is not: nothing of its own changed
    created = await ca.entry(agent, "/mine")  # twin: its own change answers it
    status, answer = await asyncio.wait_for(poll, 10)
    assert status == 200
    assert [e["id"] for e in answer["entries"]] == [created["id"]]
    assert answer["revision"] > woke["revision"]


async def test_long_poll_without_change_returns_after_wait(ca: RunningCa, agent: Agent) -> None:
    status, first = await agent.call("GET", "/v1/agent/entries")
    status, again = await agent.call("GET", f"/v1/agent/entries?since={first['revision']}&wait=0.2")
    assert status == 200
    assert again["revision"] == first["revision"]


async def test_entries_of_another_agent_are_not_listed(ca: RunningCa, agent: Agent) -> None:
    other = await ca.attest()
    await ca.entry(other, "/theirs")
    status, mine = await agent.call("GET", "/v1/agent/entries")
    assert (status, mine["entries"]) == (200, [])


async def test_ca_renews_its_server_certificate_in_place(ca: RunningCa, agent: Agent) -> None:
    before = await served_leaf(ca)
    assert await ca.server.reload_tls(force=True)
    after = await served_leaf(ca)
    assert after.serial_number != before.serial_number
    assert after.serial_number == ca.server.server_svid.serial
    status, _ = await agent.call("GET", "/v1/agent/entries")  # a new handshake still works
    assert status == 200


async def test_shutdown_answers_pending_long_polls_at_once(data_dir: Path) -> None:
    server, task, stop = await start_ca(data_dir)
    async with ca_client(server) as ca:
        agent = await ca.attest()
        _, first = await agent.call("GET", "/v1/agent/entries")
        poll = asyncio.create_task(
            agent.call("GET", f"/v1/agent/entries?since={first['revision']}&wait=50")
        )
        deadline = time.monotonic() + 5
        while not server.metrics.registry.get_sample_value("s2s_ca_entry_long_polls"):
            assert time.monotonic() < deadline, "the long-poll never reached the CA"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await stop_ca(server, task, stop)
        assert time.monotonic() - started < 2.0
        status, body = await asyncio.wait_for(poll, 5)
        assert (status, body["revision"]) == (200, first["revision"])


class _BundleOverride:
    """The CA's authority with another set of bundle roots (root retirement is issue 6; this
    drives the TLS side of it: a root that leaves the bundle must stop verifying clients)."""

    def __init__(self, authority: object, bundle: object) -> None:
        self._authority = authority
        self.bundle = bundle

    def __getattr__(self, name: str) -> object:
        return getattr(self._authority, name)


async def test_a_root_leaving_the_bundle_stops_verifying_its_clients(
    ca: RunningCa, agent: Agent
) -> None:
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    foreign = TestAuthority(TRUST_DOMAIN)
    real = ca.server.authority
    ca.server.authority = _BundleOverride(real, foreign.bundle())  # type: ignore[assignment]
    try:
        assert await ca.server.reload_tls()
        with pytest.raises(aiohttp.ClientError):  # our agent's chain no longer verifies
            await agent.call("GET", "/v1/agent/entries")
        # A client chained to the root now trusted gets through TLS (and is then unknown).
        other = foreign.issue_x509_svid(f"spiffe://{TRUST_DOMAIN}/s2s/agent/join_token/x")
        ctx = ca.client_ssl(other.chain_pem(), other.key_pem())
        connector = aiohttp.TCPConnector(ssl=ctx)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(ca.url + "/v1/agent/entries") as resp,
        ):
            assert resp.status == 403
    finally:
        ca.server.authority = real
    assert await ca.server.reload_tls()
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
