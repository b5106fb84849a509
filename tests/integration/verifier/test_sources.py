"""Sources against a real Workload API server on a Unix socket (PEM files: test_source_pem.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client import CollectorRegistry
from verifier_support import Updates, exchange, serial_is, serving, wait_for, write_svid

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.backoff import Backoff
from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidToken, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.crls import ChainIssuer
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source import DEFAULT_BACKOFF, JwtSource, X509Source
from s2s.verifier.source_pem import PemFileX509Source
from s2s.verifier.sync import SyncX509Source, open_jwt_source, open_x509_source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509SourceLike

ME = "spiffe://example.org/me"
AUD = "spiffe://example.org/api"
FAST = Backoff(initial=0.01, cap=0.05)
_T = TypeVar("_T")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def ca() -> TestAuthority:
    return TestAuthority("example.org")


@pytest.fixture
def provider(ca: TestAuthority) -> StaticIdentityProvider:
    return StaticIdentityProvider(bundles=BundleSet.of(ca.bundle()), jwt_signer=ca.issue_jwt_svid)


@pytest.fixture
async def agent(
    provider: StaticIdentityProvider, socket_dir: Path
) -> AsyncIterator[WorkloadApiServer]:
    server = WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(socket_dir / "agent.sock")
    )
    async with server:
        yield server


def register(provider: StaticIdentityProvider, svid: X509Svid) -> None:
    provider.put("me", [f"unix:uid:{os.getuid()}"], svid)


# --- Backoff ------------------------------------------------------------------------------------


def test_default_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    b = DEFAULT_BACKOFF
    assert [round(b.delay(n, 0.5), 3) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert b.delay(0, 0.0) == pytest.approx(0.08)
    assert b.delay(0, 0.999999) == pytest.approx(0.12)
    assert b.delay(10_000, 0.999999) == 5.0


# --- X509Source on the Workload API --------------------------------------------------------------


async def test_x509_source_gets_the_svid_and_follows_rotation(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    first = ca.issue_x509_svid(ME)
    register(provider, first)
    async with X509Source(socket=agent.socket_path, backoff=FAST) as source:
        assert isinstance(source, X509SourceLike)
        assert source.current().default_svid.serial == first.serial
        bundle = source.current().bundles.get(ca.trust_domain)
        assert bundle is not None
        assert bundle.x509_authorities == (ca.root,)
        updates = Updates()
        source.subscribe(updates)
        second = ca.issue_x509_svid(ME)
        register(provider, second)
        await updates.wait(serial_is(second.serial))
        assert source.current().default_svid.serial == second.serial
        other = TestAuthority("other.org")
        provider.set_bundles(BundleSet.of(ca.bundle(), other.bundle()))
        await updates.wait(lambda ctx: len(ctx.bundles) == 2)


async def test_x509_source_start_waits_for_the_first_identity(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    source = X509Source(socket=agent.socket_path, backoff=FAST)
    starting = asyncio.create_task(source.start(timeout=5))
    while source.reconnects < 2:  # PERMISSION_DENIED (no identity yet) is retried
        await asyncio.sleep(0.01)
    with pytest.raises(Unavailable):
        source.current()
    svid = ca.issue_x509_svid(ME)
    register(provider, svid)
    await starting
    assert source.current().default_svid.serial == svid.serial
    await source.close()


async def test_x509_source_times_out_without_identity(agent: WorkloadApiServer) -> None:
    source = X509Source(socket=agent.socket_path, backoff=FAST)
    with pytest.raises(Unavailable, match=r"within 0\.3 s"):
        await source.start(timeout=0.3)


async def test_x509_source_times_out_without_an_agent(socket_dir: Path) -> None:
    source = X509Source(socket=str(socket_dir / "nobody.sock"), backoff=FAST)
    with pytest.raises(Unavailable, match="no Workload API socket"):
        await source.start(timeout=0.2)


async def test_x509_source_keeps_the_last_snapshot_across_an_agent_restart(
    provider: StaticIdentityProvider, socket_dir: Path, ca: TestAuthority
) -> None:
    path = str(socket_dir / "agent.sock")
    first, second = ca.issue_x509_svid(ME), ca.issue_x509_svid(ME)
    register(provider, first)
    server = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=path)
    await server.start()
    source = X509Source(socket=path, backoff=FAST)
    await source.start(timeout=5)
    updates = Updates()
    source.subscribe(updates)
    await server.stop(grace=0)
    reconnects = source.reconnects
    while source.reconnects < reconnects + 2:  # the stream broke and reconnects keep failing
        await asyncio.sleep(0.01)
    assert source.current().default_svid.serial == first.serial  # last good snapshot kept
    register(provider, second)
    server = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=path)
    async with server:
        await updates.wait(serial_is(second.serial))
    await source.close()
    await source.close()  # idempotent
    assert source.current().default_svid.serial == second.serial  # still readable after close


async def test_x509_source_follows_crls_signed_by_its_trust_domain(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    svid = ca.issue_x509_svid(ME)
    register(provider, svid)
    async with X509Source(socket=agent.socket_path, backoff=FAST) as source:
        assert len(source.revocations.current()) == 0
        updates = Updates()
        source.subscribe(updates)
        foreign = TestAuthority("example.org")
        provider.set_crls([crl_der(foreign.intermediate, foreign.intermediate_key, 7)])
        await wait_for(lambda: source.crls() != ())
        # Another CA's CRL: set aside until a chain through its issuer is checked, and it never
        # speaks for our intermediate (whose status stays unknown: nothing is revoked).
        assert source.revocations.error is None
        assert len(source.revocations.book.pending) == 1
        mine = [ChainIssuer.of(ca.intermediate)]
        assert not source.revocations.current_for_chain(mine).is_serial_revoked_by_any_issuer(7)
        provider.set_crls([crl_der(ca.intermediate, ca.intermediate_key, svid.serial)])
        await wait_for(lambda: source.revocations.next_update is not None)
        assert source.revocations.current().is_serial_revoked_by_any_issuer(svid.serial)
        assert source.revocations.error is None


def crl_der(issuer: x509.Certificate, key: Any, serial: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    revoked = x509.RevokedCertificateBuilder(serial_number=serial, revocation_date=now).build()
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=now,
        next_update=now + dt.timedelta(hours=1),
        revoked_certificates=[revoked],
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def test_x509_source_drives_mtls_and_its_revocations_reject_a_revoked_client(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority, tmp_path: Path
) -> None:
    server_svid = ca.issue_x509_svid(ME)
    register(provider, server_svid)
    client_svid = ca.issue_x509_svid("spiffe://example.org/client")
    paths = write_svid(tmp_path, client_svid, ca.bundle_pem())
    async with X509Source(socket=agent.socket_path, backoff=FAST) as source:
        server_ctx = server_context(
            source, authorize=authorize_any(), revocations=source.revocations,
            metrics=PeerMetrics(CollectorRegistry()),
        )  # fmt: skip
        client_ctx = client_context(
            PemFileX509Source(*paths), authorize=authorize_id(SpiffeId.parse(ME)),
            metrics=PeerMetrics(CollectorRegistry()), revocations=no_revocation_check(),
        )  # fmt: skip
        async with serving(server_ctx) as served:
            assert await exchange(served.port, client_ctx) == b"spiffe://example.org/client"
            assert served.peers == ["spiffe://example.org/client"]
            # Twin: a client that pins another server ID refuses this server.
            pinned_elsewhere = client_context(
                PemFileX509Source(*paths), authorize=authorize_id(SpiffeId.parse(AUD)),
                metrics=PeerMetrics(CollectorRegistry()), revocations=no_revocation_check(),
            )  # fmt: skip
            with pytest.raises(ssl.SSLError):
                await exchange(served.port, pinned_elsewhere)
            # The agent's CRL revokes the client's certificate: the next handshake is refused.
            provider.set_crls([crl_der(ca.intermediate, ca.intermediate_key, client_svid.serial)])
            await wait_for(
                lambda: source.revocations.current().is_serial_revoked_by_any_issuer(
                    client_svid.serial
                )
            )
            accepted = len(served.peers)
            assert await exchange(served.port, client_ctx) == b""
            assert len(served.peers) == accepted  # the handler never saw the revoked client


# --- JwtSource ----------------------------------------------------------------------------------


async def test_jwt_source_bundles_validate_the_agents_jwt_svids(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    register(provider, ca.issue_x509_svid(ME))
    async with JwtSource(socket=agent.socket_path, backoff=FAST) as source:
        # This test agent serves no revocations: checking none is said explicitly.
        validator = JwtValidator(
            source, AUD, revocations=no_revocation_check(), metrics=JwtMetrics(CollectorRegistry())
        )
        svid = await source.fetch_jwt_svid(AUD)
        assert str(validator.validate(svid.token).spiffe_id) == ME
        # Twin: a token signed by another authority of the same name is not trusted.
        impostor = TestAuthority("example.org").issue_jwt_svid(ME, AUD)
        with pytest.raises(InvalidToken) as info:
            validator.validate(impostor)
        assert info.value.reason == "kid"
        # The trust domain drops its JWT key: the source follows, and the cached success goes.
        updates = Updates()
        source.subscribe(updates)
        other = TestAuthority("other.org")
        provider.set_bundles(BundleSet.of(other.bundle()))
        await updates.wait(lambda bundles: ca.trust_domain not in bundles.trust_domains())
        with pytest.raises(InvalidToken) as info:
            validator.validate(svid.token)
        assert info.value.reason == "untrusted"


async def test_agent_jwt_svid_validates_here_and_with_the_official_spiffe_client(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    spiffe = pytest.importorskip("spiffe")
    register(provider, ca.issue_x509_svid(ME))
    async with JwtSource(socket=agent.socket_path, backoff=FAST) as source:
        token = (await source.fetch_jwt_svid(AUD)).token
        ours = JwtValidator(
            source, AUD, revocations=no_revocation_check(), metrics=JwtMetrics(CollectorRegistry())
        )
        assert str(ours.validate(token).spiffe_id) == ME
        bundle = source.current().get(ca.trust_domain)
        assert bundle is not None
        theirs = spiffe.JwtBundle.parse(spiffe.TrustDomain("example.org"), bundle.jwt_jwks())
        assert str(spiffe.JwtSvid.parse_and_validate(token, theirs, {AUD}).spiffe_id) == ME
        # Twins: both refuse another audience and a token from a foreign key.
        with pytest.raises(InvalidToken):
            JwtValidator(
                source,
                "spiffe://example.org/x",
                revocations=no_revocation_check(),
                metrics=JwtMetrics(CollectorRegistry()),
            ).validate(token)
        with pytest.raises(spiffe.svid.errors.InvalidTokenError):
            spiffe.JwtSvid.parse_and_validate(token, theirs, {"spiffe://example.org/x"})
        foreign = TestAuthority("example.org").issue_jwt_svid(ME, AUD, kid=ca.jwt_kid)
        with pytest.raises(InvalidToken):
            ours.validate(foreign)
        with pytest.raises(spiffe.svid.errors.JwtSvidError):
            spiffe.JwtSvid.parse_and_validate(foreign, theirs, {AUD})


# --- the synchronous facade --------------------------------------------------------------------


async def test_sync_workload_api_sources(
    agent: WorkloadApiServer, provider: StaticIdentityProvider, ca: TestAuthority
) -> None:
    svid = ca.issue_x509_svid(ME)
    register(provider, svid)
    # The sync facade blocks its caller, so it runs in a thread while this loop serves the agent.
    x509_source = await asyncio.to_thread(open_x509_source, agent.socket_path, timeout=5)
    jwt_source = await asyncio.to_thread(open_jwt_source, agent.socket_path, timeout=5)
    try:
        assert x509_source.current().default_svid.serial == svid.serial
        token = (await asyncio.to_thread(jwt_source.fetch_jwt_svid, AUD)).token
        validator = JwtValidator(
            jwt_source,
            AUD,
            revocations=no_revocation_check(),
            metrics=JwtMetrics(CollectorRegistry()),
        )
        assert str(validator.validate(token).spiffe_id) == ME
    finally:
        await asyncio.to_thread(x509_source.close)
        await asyncio.to_thread(jwt_source.close)


def test_sync_source_reports_a_missing_agent(socket_dir: Path) -> None:
    with pytest.raises(Unavailable):
        SyncX509Source(
            lambda: X509Source(socket=str(socket_dir / "none.sock"), backoff=FAST), timeout=0.2
        )
