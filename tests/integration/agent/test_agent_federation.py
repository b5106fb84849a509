"""Federated bundles through a real CA and a real agent to the Workload API: a workload receives a
foreign trust domain's bundle only when one of its entries federates with it, in
X509SVIDResponse.federated_bundles, X509BundlesResponse and JWTBundlesResponse (our client and the
official ``spiffe`` client); a change reaches open streams; a deleted bundle is redacted."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

import pytest
import spiffe
from click.testing import CliRunner
from cryptography import x509

from s2s.cli.agent import cli as agent_cli
from s2s.core.bundle import Bundle
from s2s.core.errors import InvalidToken
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier.workload_client import WorkloadApiClient

MY_UID = f"unix:uid:{os.getuid()}"
OTHER = TrustDomain.parse("other.test")
OWN = TrustDomain.parse("example.org")


async def federated_agent(harness: Any, *, federates: bool) -> tuple[Any, Any, TestAuthority]:
    """A CA holding other.test's bundle, and an agent serving us one entry; another entry of the
    agent (for a gid we do not have) always federates with other.test."""
    foreign = TestAuthority(OTHER)
    server = harness.ca.server
    await server.federated_bundles.put(foreign.bundle(), source="manual")
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/other-gid", [MY_UID, "unix:gid:4242424"],
                           federates_with=[OTHER])  # fmt: skip
    entry = await harness.ca.entry(
        agent_id, "/billing", [MY_UID], federates_with=[OTHER] if federates else []
    )
    running = await harness.start_agent(harness.config(token=token))
    return running, entry, foreign


async def test_no_federated_bundle_unless_the_callers_entry_federates(harness: Any) -> None:
    running, entry, foreign = await federated_agent(harness, federates=False)
    # the agent holds other.test's bundle (for the other entry) ...
    await harness.wait_until(
        lambda: running.agent.cache.state.federated.get(OTHER) is not None, what="federated"
    )
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        # ... but this caller's entry does not federate: it never sees it
        context = await client.fetch_x509_context()
        assert context.bundles.trust_domains() == frozenset({OWN})
        assert (await client.fetch_x509_bundles()).trust_domains() == frozenset({OWN})
        assert (await client.fetch_jwt_bundles()).trust_domains() == frozenset({OWN})
        token = foreign.issue_jwt_svid("spiffe://other.test/api", "billing")
        with pytest.raises(InvalidToken):  # the agent holds the keys, but not for this caller
            await client.validate_jwt_svid(token, "billing")
        # twin: once the entry federates, the same caller gets it in all three answers
        await harness.ca.server.registry.update_entry(entry.id, federates_with=[OTHER])
        deadline = time.monotonic() + 10
        while OTHER not in (await client.fetch_x509_context()).bundles.trust_domains():
            assert time.monotonic() < deadline, "the federated bundle never reached the caller"
            await asyncio.sleep(0.05)
        x509 = await client.fetch_x509_bundles()
        jwt = await client.fetch_jwt_bundles()
    assert x509.get(OTHER) is not None
    assert x509.get(OTHER).x509_authorities == (foreign.root,)  # type: ignore[union-attr]
    assert jwt.get(OTHER) is not None
    assert jwt.get(OTHER).jwt_authority(foreign.jwt_kid) is not None  # type: ignore[union-attr]
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        sid, _claims = await client.validate_jwt_svid(token, "billing")  # twin: now it may
    assert str(sid) == "spiffe://other.test/api"


async def test_official_client_sees_federated_bundles_and_their_changes(harness: Any) -> None:
    running, _entry, foreign = await federated_agent(harness, federates=True)
    socket = f"unix://{running.agent.config.socket}"

    def official() -> dict[str, Any]:
        client = spiffe.WorkloadApiClient(socket_path=socket, default_timeout=10)
        try:
            context = client.fetch_x509_context()
            x509 = client.fetch_x509_bundles()
            jwt = client.fetch_jwt_bundles()
            td = spiffe.TrustDomain(str(OTHER))
            x509_other = x509.get_bundle_for_trust_domain(td)
            jwt_other = jwt.get_bundle_for_trust_domain(td)
            assert x509_other is not None
            assert jwt_other is not None
            return {
                "context": sorted(str(b.trust_domain) for b in context.x509_bundle_set.bundles),
                "x509": sorted(str(b.trust_domain) for b in x509.bundles),
                "jwt": sorted(str(b.trust_domain) for b in jwt.bundles),
                "other_roots": len(x509_other.x509_authorities),
                "other_kid": jwt_other.get_jwt_authority(foreign.jwt_kid) is not None,
            }
        finally:
            client.close()

    seen = await asyncio.to_thread(official)
    # the files for TLS stacks that know no SPIFFE: our bundle alone in bundle.pem, other.test's
    # in a file of its own (a PEM file is one trust pool: never merge them)
    out = harness.tmp_path / "out"
    args = ["api", "fetch", "x509", "--socket", str(running.agent.config.socket)]
    args += ["--write", str(out)]
    wrote = await asyncio.to_thread(CliRunner().invoke, agent_cli, args)
    assert wrote.exit_code == 0, wrote.output
    assert "bundle.pem and 1 federated.<td>.pem" in wrote.output
    own_roots = x509.load_pem_x509_certificates((out / "bundle.pem").read_bytes())
    other_roots = x509.load_pem_x509_certificates((out / "federated.other.test.pem").read_bytes())
    assert foreign.root not in own_roots
    assert other_roots == [foreign.root]
    assert seen["context"] == seen["x509"] == seen["jwt"] == ["example.org", "other.test"]
    assert seen["other_roots"] == 1
    assert seen["other_kid"]

    cache = running.agent.cache
    assert cache.current() is cache.current()  # one snapshot: the JWT validator's caches hold
    assert running.agent.metrics.federated_bundles._value.get() == 1
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        # a JWT-SVID of other.test validates with other.test's keys ...
        token = foreign.issue_jwt_svid("spiffe://other.test/api", "billing")
        sid, _claims = await client.validate_jwt_svid(token, "billing")
        assert str(sid) == "spiffe://other.test/api"
        # ... never with ours: the same claims signed with our key id but other.test's sub fail
        forged = foreign.issue_jwt_svid(
            "spiffe://other.test/api", "billing", kid=next(iter(
                cache.bundles().get(OWN).jwt_authorities)).kid,  # type: ignore[union-attr]
        )  # fmt: skip
        with pytest.raises(InvalidToken):
            await client.validate_jwt_svid(forged, "billing")
        # a changed foreign bundle (its root rotated in: two roots) reaches an open stream
        stream = client.watch_x509_context()
        first = await anext(stream)
        assert first.bundles.get(OTHER) is not None
        rotated = TestAuthority(OTHER)
        bundle = foreign.bundle()
        grown = dataclasses.replace(
            bundle, x509_authorities=(foreign.root, rotated.root), sequence=bundle.sequence + 1
        )
        started = time.monotonic()
        await harness.ca.server.federated_bundles.put(grown, source="endpoint", refreshed=True)
        update = await asyncio.wait_for(anext(stream), 10)
        took = time.monotonic() - started
        other: Bundle | None = update.bundles.get(OTHER)
        assert other is not None
        assert set(other.x509_authorities) == {foreign.root, rotated.root}
        assert took < 5, took
        # deleted at the CA: redacted from the stream
        await harness.ca.server.federated_bundles.delete(OTHER)
        update = await asyncio.wait_for(anext(stream), 10)
        assert update.bundles.trust_domains() == frozenset({OWN})
        await stream.aclose()
        with pytest.raises(InvalidToken):  # twin: no bundle for other.test any more
            await client.validate_jwt_svid(token, "billing")
