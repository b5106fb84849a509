"""A trust domain's normal life must not make fresh verifiers fail closed.

A real CA and a real agent; a service started the way the README shows (``X509Source()`` and
``server_context(..., revocations=source.revocations)``) after an intermediate rotation
(``authority prepare`` + ``activate``) and a revocation, or beside a second CA replica with its
own intermediate: peers of every intermediate are accepted, and the revoked ones, whichever
intermediate issued them, are refused. The agent serves one CRL per issuing CA; the verifier
holds only the roots and its own chain, so the CRLs of the other intermediates are verified
against the chain of the peer that needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from s2s.ca.lifecycle import LifecycleKind
from s2s.core.bundle import BundleSet
from s2s.core.x509svid import X509Svid
from s2s.verifier.authorize import authorize_any
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source import X509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(120)
MY_UID = f"unix:uid:{os.getuid()}"


@contextlib.asynccontextmanager
async def readme_service(socket: str) -> AsyncIterator[tuple[int, PeerMetrics, X509Source]]:
    """A service exactly as the README starts one, on a fresh X509Source."""
    metrics = PeerMetrics(CollectorRegistry())
    async with X509Source(socket=socket) as source:
        ctx = server_context(
            source, authorize=authorize_any(), revocations=source.revocations, metrics=metrics
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                writer.write(b"hello")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        try:
            yield server.sockets[0].getsockname()[1], metrics, source
        finally:
            server.close()
            await server.wait_closed()


async def outcome(port: int, metrics: PeerMetrics, svid: X509Svid, bundles: BundleSet) -> str:
    """ "ok", or the reason the service refused ``svid``."""
    before = metrics.rejection_counts()
    ctx = client_context(
        StaticX509Source(X509Context((svid,), bundles)),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            if await asyncio.wait_for(reader.read(), 5) == b"hello":
                return "ok"
        finally:
            writer.close()
    except (OSError, ssl.SSLError, TimeoutError):
        pass
    after = metrics.rejection_counts()
    return next((r for r, n in after.items() if n > before.get(r, 0)), "no-answer")


async def _agent(harness: Any) -> Any:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/client", [MY_UID])
    return await harness.start_agent(harness.config(token=token))


async def _crls_cover(harness: Any, running: Any, issuers: int) -> None:
    async with X509Source(socket=str(running.agent.config.socket)) as probe:
        await harness.wait_until(
            lambda: len(probe.crls()) >= issuers, timeout=15, what=f"{issuers} CRLs served"
        )


async def test_fresh_service_after_an_intermediate_rotation_and_a_revocation(
    harness: Any,
) -> None:
    running = await _agent(harness)
    server = harness.ca.server
    old_good = await server.issuer.mint_x509_svid(harness.ca.td.id("/peer/old"))
    old_revoked = await server.issuer.mint_x509_svid(harness.ca.td.id("/peer/old-revoked"))
    await server.services.lifecycle.prepare(LifecycleKind.X509)
    await server.services.lifecycle.activate(LifecycleKind.X509, None)
    new_good = await server.issuer.mint_x509_svid(harness.ca.td.id("/peer/new"))
    new_revoked = await server.issuer.mint_x509_svid(harness.ca.td.id("/peer/new-revoked"))
    assert old_good.cert_chain[1] != new_good.cert_chain[1]  # two intermediates issue now
    for svid in (old_revoked, new_revoked):
        await server.revocations.revoke_serial(svid.serial)
    await _crls_cover(harness, running, 3)  # the root's, the previous and the new intermediate's
    async with readme_service(str(running.agent.config.socket)) as (port, metrics, source):
        bundles = source.current().bundles
        got = [await outcome(port, metrics, s, bundles)
               for s in (old_good, new_good, old_revoked, new_revoked)]  # fmt: skip
        assert got == ["ok", "ok", "revoked", "revoked"], got
        assert source.revocations.error is None


async def test_fresh_service_beside_a_second_replica(harness: Any) -> None:
    running = await _agent(harness)
    second = await harness.replica("ca-1")  # same store, its own intermediate
    mine = await harness.ca.server.issuer.mint_x509_svid(harness.ca.td.id("/peer/one"))
    theirs = await second.server.issuer.mint_x509_svid(harness.ca.td.id("/peer/two"))
    theirs_revoked = await second.server.issuer.mint_x509_svid(harness.ca.td.id("/peer/three"))
    assert mine.cert_chain[1] != theirs.cert_chain[1]
    await harness.ca.server.revocations.revoke_serial(theirs_revoked.serial)
    await harness.ca.server.refresh_crls()
    await _crls_cover(harness, running, 3)
    async with readme_service(str(running.agent.config.socket)) as (port, metrics, source):
        bundles = source.current().bundles
        got = [await outcome(port, metrics, s, bundles) for s in (mine, theirs, theirs_revoked)]
        assert got == ["ok", "ok", "revoked"], got
