"""Real mTLS handshakes over loopback through server_context/client_context, both directions.

Every case has an accepting twin: the same setup with a good SVID is accepted, then one thing is
broken and the handshake must fail with the named reason, counted in the metric.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from verifier_support import exchange, serving, source_of

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.revocation import RevocationRecord
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id, authorize_member_of
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.tls import client_context, server_context

PEER = "spiffe://example.org/peer"
LOCAL = "spiffe://example.org/local"
HOUR = dt.timedelta(hours=1)


@dataclass
class Case:
    """The presenting peer's SVID and what the verifying side trusts/authorizes."""

    svid: X509Svid
    verifier_bundles: BundleSet
    authorize: Any = field(default_factory=lambda: authorize_member_of("example.org"))
    revocations: InMemoryRevocations = field(default_factory=InMemoryRevocations)


def _revoke(serial: int) -> InMemoryRevocations:
    now = dt.datetime.now(dt.UTC)
    revs = InMemoryRevocations()
    revs.add(RevocationRecord.for_serial(serial, revoked_at=now, expires_at=now + HOUR))
    return revs


def make_case(name: str, ca: TestAuthority, other: TestAuthority) -> tuple[Case, str]:
    """(case, expected rejection reason); name "good" is the accepting twin."""
    own = BundleSet.of(ca.bundle())
    issue = ca.issue_x509_svid
    simple = {
        "expired": ({"expired": True}, "expired"),
        "not-yet-valid": ({"not_yet_valid": True}, "not-yet-valid"),
        "two-uri-sans": ({"two_uri_sans": True}, "svid-uri-san"),
        "no-uri-san": ({"no_uri_san": True}, "svid-uri-san"),
        "ca-as-leaf": ({"ca_leaf": True}, "svid-leaf-basic-constraints"),
        "no-key-usage": ({"missing_key_usage": True}, "svid-leaf-key-usage"),
        "cert-sign-usage": ({"cert_sign_usage": True}, "svid-leaf-key-usage"),
        "untrusted-root": ({"issuer": TestAuthority("example.org")}, "untrusted-root"),
    }
    if name == "good":
        return Case(issue(PEER), own), ""
    if name in simple:
        kwargs, reason = simple[name]
        return Case(issue(PEER, **kwargs), own), reason
    if name == "other-trust-domain":  # a TD we hold no bundle for
        return Case(other.issue_x509_svid("spiffe://other.org/peer"), own), "untrusted-root"
    if name == "foreign-root":  # TD other.org, chained to example.org's root, both bundles held
        svid = other.issue_x509_svid("spiffe://other.org/peer", issuer=ca)
        return Case(svid, BundleSet.of(ca.bundle(), other.bundle())), "foreign-root"
    if name == "revoked-leaf":
        svid = issue(PEER)
        return Case(svid, own, revocations=_revoke(svid.serial)), "revoked"
    if name == "revoked-intermediate":
        svid = issue(PEER)
        return Case(svid, own, revocations=_revoke(svid.cert_chain[1].serial_number)), "revoked"
    if name == "revoked-spiffe-id":
        svid = issue(PEER)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        revs = InMemoryRevocations()
        revs.add(RevocationRecord.for_spiffe_id(PEER, revoked_at=later, expires_at=later + HOUR))
        return Case(svid, own, revocations=revs), "revoked"
    if name == "unauthorized":
        return Case(issue(PEER), own, authorize=authorize_id(LOCAL)), "unauthorized"
    raise AssertionError(name)


REJECTIONS = [
    "untrusted-root",
    "other-trust-domain",
    "foreign-root",
    "expired",
    "not-yet-valid",
    "revoked-leaf",
    "revoked-intermediate",
    "revoked-spiffe-id",
    "two-uri-sans",
    "no-uri-san",
    "ca-as-leaf",
    "no-key-usage",
    "cert-sign-usage",
    "unauthorized",
]


def _all_bundles(ca: TestAuthority, other: TestAuthority) -> BundleSet:
    return BundleSet.of(ca.bundle(), other.bundle())


async def _server_checks_client(
    name: str, ca: TestAuthority, other: TestAuthority, metrics: PeerMetrics
) -> tuple[bytes, list[str], str]:
    case, reason = make_case(name, ca, other)
    server_src = source_of(ca.issue_x509_svid(LOCAL), *case.verifier_bundles)
    server_ctx = server_context(
        server_src, authorize=case.authorize, revocations=case.revocations, metrics=metrics
    )
    client_src = source_of(case.svid, *_all_bundles(ca, other))
    client_ctx = client_context(
        client_src,
        metrics=PeerMetrics(_registry()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    async with serving(server_ctx) as served:
        answer = await exchange(served.port, client_ctx)
    return answer, served.peers, reason


def _registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_server_accepts_good_client(
    ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, peers, _ = await _server_checks_client("good", ca, other_ca, metrics)
    assert answer == PEER.encode()
    assert peers == [PEER]
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("name", REJECTIONS)
async def test_server_rejects_client(
    name: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, peers, reason = await _server_checks_client(name, ca, other_ca, metrics)
    assert answer == b""
    assert peers == [], "the application must never see a rejected connection"
    assert metrics.rejection_count(reason) == 1
    assert metrics.accepted_count() == 0


async def test_server_rejects_client_without_certificate(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    server_ctx = server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.load_verify_locations(cadata=ca.bundle_pem().decode())
    async with serving(server_ctx) as served:
        assert await exchange(served.port, plain) == b""
        assert served.peers == []
    assert metrics.rejection_count("no-certificate") == 1


async def _client_checks_server(
    name: str, ca: TestAuthority, other: TestAuthority, metrics: PeerMetrics
) -> tuple[bytes | PeerRejected, str]:
    case, reason = make_case(name, ca, other)
    server_src = source_of(case.svid, *_all_bundles(ca, other))
    server_ctx = server_context(
        server_src,
        metrics=PeerMetrics(_registry()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    client_src = source_of(ca.issue_x509_svid(LOCAL), *case.verifier_bundles)
    client_ctx = client_context(
        client_src, authorize=case.authorize, revocations=case.revocations, metrics=metrics
    )
    async with serving(server_ctx) as served:
        try:
            return await exchange(served.port, client_ctx), reason
        except PeerRejected as exc:
            return exc, reason


async def test_client_accepts_good_server(
    ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, _ = await _client_checks_server("good", ca, other_ca, metrics)
    assert answer == LOCAL.encode()  # the server saw us
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("name", REJECTIONS)
async def test_client_rejects_server(
    name: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    outcome, reason = await _client_checks_server(name, ca, other_ca, metrics)
    assert isinstance(outcome, PeerRejected), outcome
    assert outcome.reason == reason
    assert isinstance(outcome, ssl.SSLError)
    assert metrics.rejection_count(reason) == 1


async def test_injected_clock_expires_a_peer_openssl_still_accepts(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    server_src = source_of(ca.issue_x509_svid(LOCAL), ca.bundle())
    server_ctx = server_context(
        server_src,
        clock=clock,
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    client_ctx = client_context(
        source_of(ca.issue_x509_svid(PEER), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    async with serving(server_ctx) as served:
        assert await exchange(served.port, client_ctx) == PEER.encode()
        clock.advance(seconds=6 * 60)  # past the 5-minute SVID, still valid on the wall clock
        assert await exchange(served.port, client_ctx) == b""
    assert metrics.rejection_count("expired") == 1


async def test_blocking_sockets_verify_in_handshake(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    """sslsocket_class: a blocking client refuses an unauthorized server during connect."""
    server_ctx = server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    good = client_context(
        source_of(ca.issue_x509_svid(PEER), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    pinned = client_context(
        source_of(ca.issue_x509_svid(PEER), ca.bundle()),
        authorize=authorize_id("spiffe://example.org/someone-else"),
        metrics=metrics,
        revocations=no_revocation_check(),
    )
    async with serving(server_ctx) as served:

        def connect(ctx: ssl.SSLContext) -> SpiffeId | None:
            raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            with raw, ctx.wrap_socket(raw) as tls:
                return tls.peer_spiffe_id  # type: ignore[attr-defined,no-any-return]

        assert str(await asyncio.to_thread(connect, good)) == LOCAL
        with pytest.raises(PeerRejected) as info:
            await asyncio.to_thread(connect, pinned)
        assert info.value.reason == "unauthorized"


async def test_resumed_tls12_session_is_checked_again(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    """A resumed session has no verified chain; the chain of its full handshake is re-checked
    (revocation, bundle, authorizer) on every resumption."""
    revocations = InMemoryRevocations()
    server_ctx = server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        revocations=revocations,
        metrics=metrics,
        authorize=authorize_any(),
    )
    svid = ca.issue_x509_svid(PEER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.load_verify_locations(cadata=ca.bundle_pem().decode())
    load_cert_chain_from_memory(client, svid.chain_pem(), svid.key_pem())

    async with serving(server_ctx) as served:

        def connect(session: ssl.SSLSession | None) -> tuple[bytes, ssl.SSLSession | None, bool]:
            raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            with raw, client.wrap_socket(raw, session=session) as tls:
                try:
                    data = tls.recv(1000)
                except (ssl.SSLError, ConnectionResetError):
                    data = b""
                return data, tls.session, tls.session_reused

        data, session, reused = await asyncio.to_thread(connect, None)
        assert (data, reused) == (PEER.encode(), False)
        data, _, reused = await asyncio.to_thread(connect, session)
        assert (data, reused) == (PEER.encode(), True)
        now = dt.datetime.now(dt.UTC)
        revocations.add(
            RevocationRecord.for_serial(svid.serial, revoked_at=now, expires_at=now + HOUR)
        )
        data, _, reused = await asyncio.to_thread(connect, session)
        assert (data, reused) == (b"", True)
    assert metrics.rejection_count("revoked") == 1
