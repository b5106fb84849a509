"""CRL-based revocation fails closed once the CRLs are out of date (RFC 5280 6.3.3).

Both lookups (a CRL file, and the CRLs the agent pushes in the Workload API ``crl`` fields) answer
from a current CRL, raise ``RevocationsStale`` once the earliest nextUpdate + grace has passed (so
handshakes and JWTs are rejected with ``revocations-stale``), and recover with a fresh CRL. The
lookups read a fake clock of their own; TLS stacks and the JWT claims read the wall clock.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from crl_support import crl_without_next_update, make_crl
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry
from verifier_support import exchange, serving, source_of, wait_for

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.backoff import Backoff
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken
from s2s.core.revocation import RevocationLookup, issuer_key_id
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.crls import ChainIssuer, CrlBook, CrlLookup
from s2s.verifier.feeds import RevocationsStale
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import CrlFileRevocations, parse_crls
from s2s.verifier.source import CrlRevocations, X509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.workload_client import X509Update
from s2s.verifier.x509context import X509Context

CLIENT = "spiffe://example.org/client"
SERVER = "spiffe://example.org/server"
AUD = "spiffe://example.org/api"
HOUR = dt.timedelta(hours=1)
GRACE = 300.0
PAST_GRACE = dt.timedelta(seconds=GRACE + 1)
FAST = Backoff(initial=0.01, cap=0.05)


@pytest.fixture
def crl_clock() -> FakeClock:
    """The clock the revocation lookups read (only they move with it)."""
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


def current_crl(ca: TestAuthority, clock: FakeClock, *serials: int, der: bool = True) -> bytes:
    """A CRL issued a minute ago on ``clock``, next update in an hour."""
    now = clock.now()
    return make_crl(
        ca, *serials, this_update=now - dt.timedelta(minutes=1), next_update=now + HOUR, der=der
    )


class Peers:
    """A verifying server (revocations from ``lookup``), a good and a revoked client, and a
    JwtValidator reading the same lookup."""

    def __init__(self, ca: TestAuthority, lookup: RevocationLookup, good: X509Svid, bad: X509Svid):
        self.ca, self.good, self.bad = ca, good, bad
        self.metrics = PeerMetrics(CollectorRegistry())
        self.server_ctx = server_context(
            source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
            authorize=authorize_any(), revocations=lookup, metrics=self.metrics,
        )  # fmt: skip
        self.jwt_metrics = JwtMetrics(CollectorRegistry())
        self.jwt = JwtValidator(
            BundleSet.of(ca.bundle()), AUD, revocations=lookup, metrics=self.jwt_metrics
        )

    async def handshakes(self) -> tuple[bool, bool]:
        """(good client accepted, revoked client accepted) in real handshakes."""
        results = []
        async with serving(self.server_ctx) as served:
            for svid in (self.good, self.bad):
                ctx = client_context(
                    source_of(svid, self.ca.bundle()),
                    authorize=authorize_any(),
                    revocations=no_revocation_check(),
                )
                results.append(await exchange(served.port, ctx) == CLIENT.encode())
        return results[0], results[1]

    def jwt_reason(self) -> str | None:
        """None when a fresh JWT-SVID is accepted, else the rejection reason."""
        try:
            self.jwt.validate(self.ca.issue_jwt_svid(CLIENT, AUD))
        except InvalidToken as exc:
            return exc.reason
        return None


# --- the CRL file -------------------------------------------------------------------------------


async def test_crl_file_fails_closed_past_next_update_and_recovers(
    ca: TestAuthority, crl_clock: FakeClock, tmp_path: Path
) -> None:
    good, bad = ca.issue_x509_svid(CLIENT), ca.issue_x509_svid(CLIENT)
    path = tmp_path / "ca.crl"
    path.write_bytes(current_crl(ca, crl_clock, bad.serial))
    lookup = _follow(path, ca, crl_clock)
    peers = Peers(ca, lookup, good, bad)
    assert await peers.handshakes() == (True, False)
    assert peers.metrics.rejection_count("revoked") == 1
    assert peers.jwt_reason() is None
    # Twin: at nextUpdate + grace exactly the CRL is still used.
    crl_clock.set(lookup.next_update + dt.timedelta(seconds=GRACE))
    assert lookup.current().is_serial_revoked(peers.bad.serial, issuer_key_id(ca.intermediate))
    # One second later every peer is rejected: nothing says the good one was not revoked since.
    crl_clock.advance(seconds=1)
    with pytest.raises(RevocationsStale, match="nextUpdate") as stale:
        lookup.current()
    assert stale.value.age is not None
    assert stale.value.age > HOUR.total_seconds()  # since thisUpdate: how old the knowledge is
    assert await peers.handshakes() == (False, False)
    assert peers.metrics.rejection_count("revocations-stale") == 2
    assert peers.jwt_reason() == "revocations-stale"
    # A new CRL in the file: accepted again, the revoked serial still rejected.
    path.write_bytes(current_crl(ca, crl_clock, peers.bad.serial, der=False))
    assert lookup.refresh()
    assert await peers.handshakes() == (True, False)
    assert peers.jwt_reason() is None
    assert peers.metrics.rejection_count("revocations-stale") == 2


def test_an_old_crl_rewritten_does_not_recover(
    ca: TestAuthority, crl_clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "ca.crl"
    stale_then = crl_clock.now() - 2 * HOUR
    old = make_crl(ca, 7, this_update=stale_then - HOUR, next_update=stale_then)
    path.write_bytes(old)
    lookup = _follow(path, ca, crl_clock)  # a stale file at start is not a config error
    with pytest.raises(RevocationsStale):
        lookup.current()
    os.utime(path, ns=(0, 0))  # the same CRL written again (a publisher replaying what it had)
    assert lookup.refresh()
    with pytest.raises(RevocationsStale):
        lookup.current()
    # Twin: a CRL signed by the wrong key keeps the stale set (and the error), not a fresh one.
    path.write_bytes(make_crl(ca, this_update=crl_clock.now(), next_update=crl_clock.now() + HOUR,
                              key=TestAuthority().intermediate_key))  # fmt: skip
    assert not lookup.refresh()
    assert lookup.error is not None
    assert "not signed by its issuer's key" in lookup.error
    with pytest.raises(RevocationsStale):
        lookup.current()


def test_each_issuers_next_update_governs_only_the_chains_through_it(
    ca: TestAuthority, crl_clock: FakeClock, tmp_path: Path
) -> None:
    other = TestAuthority("example.org")
    now = crl_clock.now()
    path = tmp_path / "all.crl"
    path.write_bytes(
        make_crl(ca, 1, this_update=now, next_update=now + HOUR, der=False)
        + make_crl(other, 2, this_update=now, next_update=now + 2 * HOUR, der=False)
    )
    lookup = CrlFileRevocations(
        path, trusted=lambda: [ca.intermediate, other.intermediate], clock=crl_clock, grace=0
    )
    mine, theirs = [ChainIssuer.of(ca.intermediate)], [ChainIssuer.of(other.intermediate)]
    assert lookup.next_update == now + HOUR
    crl_clock.advance(HOUR)
    assert lookup.current_for_chain(mine).is_serial_revoked(1, mine[0].key)
    assert not lookup.current_for_chain(mine).is_serial_revoked(2, mine[0].key)
    crl_clock.advance(seconds=1)
    with pytest.raises(RevocationsStale, match="nextUpdate"):
        lookup.current_for_chain(mine)  # only the chains through the stale CRL's issuer
    assert lookup.current_for_chain(theirs).is_serial_revoked(2, theirs[0].key)
    assert lookup.current().is_serial_revoked(2, theirs[0].key)  # not every CRL is stale
    crl_clock.advance(HOUR)
    with pytest.raises(RevocationsStale, match="every CRL"):
        lookup.current()


def test_crl_without_next_update_is_refused(
    ca: TestAuthority, crl_clock: FakeClock, tmp_path: Path
) -> None:
    der = crl_without_next_update(ca, 5, now=crl_clock.now())
    (crl,) = parse_crls(der)
    assert crl.next_update_utc is None
    assert crl.is_signature_valid(ca.intermediate.public_key())  # type: ignore[arg-type]
    (error,) = CrlBook.build([crl], [ca.intermediate]).errors
    assert "no nextUpdate" in error
    path = tmp_path / "ca.crl"
    path.write_bytes(der)
    with pytest.raises(InvalidConfig, match="no nextUpdate"):
        _follow(path, ca, crl_clock)
    # Twin: the same CRL with a nextUpdate loads.
    path.write_bytes(current_crl(ca, crl_clock, 5))
    assert (
        _follow(path, ca, crl_clock).current().is_serial_revoked(5, issuer_key_id(ca.intermediate))
    )


def test_no_crl_is_refused(ca: TestAuthority, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(ca.intermediate.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidConfig, match="not a CRL"):
        CrlFileRevocations(path, trusted=lambda: [ca.root])


@pytest.mark.parametrize("grace", [-1.0, float("nan")])
def test_grace_must_not_be_negative(grace: float) -> None:
    with pytest.raises(InvalidConfig):
        CrlLookup("test", grace=grace)
    with pytest.raises(InvalidConfig):
        X509Source(socket="unix:///nowhere", crl_grace=grace)


def _follow(path: Path, ca: TestAuthority, clock: FakeClock) -> CrlFileRevocations:
    return CrlFileRevocations(
        path, trusted=lambda: [ca.root, ca.intermediate], check_interval=3600, clock=clock,
        grace=GRACE,
    )  # fmt: skip


# --- the agent's CRLs (Workload API) ------------------------------------------------------------


def _update(ca: TestAuthority, *crls: bytes) -> X509Update:
    context = X509Context((ca.issue_x509_svid(SERVER),), BundleSet.of(ca.bundle()))
    return X509Update(context, crls)


def test_agent_crls_before_during_and_after_their_validity(
    ca: TestAuthority, crl_clock: FakeClock
) -> None:
    lookup = CrlRevocations(clock=crl_clock, grace=GRACE)
    key = issuer_key_id(ca.intermediate)
    with pytest.raises(RevocationsStale, match=r"no X\.509 update"):
        lookup.current()  # nothing heard from the agent yet
    lookup.update(_update(ca))
    assert len(lookup.current()) == 0  # an agent that publishes no CRLs
    lookup.update(_update(ca, current_crl(ca, crl_clock, 9)))
    assert lookup.current().is_serial_revoked(9, key)
    crl_clock.set(lookup.next_update + PAST_GRACE)  # type: ignore[operator]
    with pytest.raises(RevocationsStale, match="every CRL of the agent's CRLs passed"):
        lookup.current()
    lookup.update(_update(ca))  # the agent drops its CRLs: the stale ones stay, still stale
    with pytest.raises(RevocationsStale):
        lookup.current()
    foreign = TestAuthority("example.org")
    lookup.update(_update(ca, current_crl(foreign, crl_clock, 9)))  # not ours: set aside
    assert lookup.error is None
    assert len(lookup.book.pending) == 1
    with pytest.raises(RevocationsStale):  # our intermediate's last CRL is still the stale one
        lookup.current_for_chain([ChainIssuer.of(ca.intermediate)])
    lookup.update(_update(ca, current_crl(ca, crl_clock, 10)))
    assert lookup.current().is_serial_revoked(10, key)
    assert not lookup.current().is_serial_revoked(9, key)
    assert lookup.error is None


def test_agent_crls_that_cannot_be_used_or_are_required(
    ca: TestAuthority, crl_clock: FakeClock
) -> None:
    mine = [ChainIssuer.of(ca.intermediate)]
    lookup = CrlRevocations(clock=crl_clock)
    lookup.update(_update(ca, current_crl(TestAuthority("example.org"), crl_clock, 1)))
    # Another issuer's CRL: pending, and the status of our chains is unknown (accepted, counted).
    assert len(lookup.current_for_chain(mine)) == 0
    assert lookup.unknown_issuers == 1
    lookup.update(_update(ca, crl_without_next_update(ca, 1, now=crl_clock.now())))
    assert lookup.error is not None
    assert "no nextUpdate" in lookup.error
    required = CrlRevocations(clock=crl_clock, require_crls=True)
    required.update(_update(ca))
    with pytest.raises(RevocationsStale, match="required"):
        required.current_for_chain(mine)
    required.update(_update(ca, current_crl(ca, crl_clock)))
    assert len(required.current_for_chain(mine)) == 0


async def test_x509_source_crls_fail_closed_in_handshakes_and_recover(
    ca: TestAuthority, crl_clock: FakeClock, socket_dir: Path
) -> None:
    provider = StaticIdentityProvider(bundles=BundleSet.of(ca.bundle()))
    provider.put("me", [f"unix:uid:{os.getuid()}"], ca.issue_x509_svid(SERVER))
    agent = WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(socket_dir / "agent.sock")
    )
    async with agent:
        source = X509Source(socket=agent.socket_path, backoff=FAST, clock=crl_clock,
                            crl_grace=GRACE)  # fmt: skip
        good, bad = ca.issue_x509_svid(CLIENT), ca.issue_x509_svid(CLIENT)
        peers = Peers(ca, source.revocations, good, bad)
        assert await peers.handshakes() == (False, False)  # before any update: nothing is known
        assert peers.metrics.rejection_count("revocations-stale") == 2
        async with source:
            first = current_crl(ca, crl_clock, peers.bad.serial)
            provider.set_crls([first])
            await wait_for(lambda: source.revocations.next_update is not None)
            assert await peers.handshakes() == (True, False)
            assert peers.jwt_reason() is None
            crl_clock.advance(HOUR + PAST_GRACE)  # the agent stopped refreshing its CRLs
            assert await peers.handshakes() == (False, False)
            assert peers.metrics.rejection_count("revocations-stale") == 4
            assert peers.jwt_reason() == "revocations-stale"
            assert peers.jwt_metrics.rejection_count("revocations-stale") == 1
            provider.set_crls([current_crl(ca, crl_clock, peers.bad.serial)])
            await wait_for(lambda: source.revocations.next_update != first_next(first))
            assert await peers.handshakes() == (True, False)
            assert peers.jwt_reason() is None
            assert peers.metrics.rejection_count("revoked") == 2


def first_next(der: bytes) -> dt.datetime | None:
    return parse_crls(der)[0].next_update_utc
