"""CRLs of several issuers at once, as a trust domain has them: two CA replicas' intermediates,
a prepared and a previous one, the root's. Each CRL is verified against its own issuer (at once,
or when a peer chain through that issuer arrives), revokes only that issuer's serials, and ages on
its own. Real handshakes through ``server_context`` with the agent's CRL lookup
(``CrlRevocations``) fed X.509 updates as the Workload API delivers them."""

from __future__ import annotations

import datetime as dt

import pytest
from crl_support import make_crl
from cryptography import x509
from prometheus_client import CollectorRegistry
from verifier_support import exchange, serving, source_of

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.revocation import issuer_key_id
from s2s.core.x509svid import X509Svid
from s2s.testing import IssuerKey, TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.crls import ChainIssuer, CrlBook
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source import CrlRevocations
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.workload_client import X509Update
from s2s.verifier.x509context import X509Context

CLIENT = "spiffe://example.org/client"
SERVER = "spiffe://example.org/server"
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


class Replicas:
    """One trust domain with two intermediates (replica A: ours; replica B: the other)."""

    def __init__(self, clock: FakeClock) -> None:
        self.ca = TestAuthority("example.org")
        self.clock = clock
        self.a = (self.ca.intermediate, self.ca.intermediate_key)
        self.b = self.ca.new_intermediate()

    def svid(self, replica: tuple[x509.Certificate, IssuerKey], sid: str = CLIENT) -> X509Svid:
        return self.ca.issue_x509_svid(sid, intermediate=replica)

    def crl(
        self,
        replica: tuple[x509.Certificate, IssuerKey],
        *serials: int,
        number: int | None = None,
        age: dt.timedelta = dt.timedelta(0),
        key: IssuerKey | None = None,
    ) -> bytes:
        now = self.clock.now() - age
        return make_crl(self.ca, *serials, this_update=now - dt.timedelta(minutes=1),
                        next_update=now + HOUR, issuer=replica[0], key=key or replica[1],
                        number=number)  # fmt: skip

    def root_crl(self, *serials: int) -> bytes:
        now = self.clock.now()
        start = now - dt.timedelta(minutes=1)
        return make_crl(self.ca, *serials, this_update=start, next_update=now + HOUR,
                        issuer=self.ca.root, key=self.ca.root_key)  # fmt: skip

    def update(self, *crls: bytes) -> X509Update:
        """What the agent sends our workload: its SVID (through replica A) and the CRLs."""
        own = self.svid(self.a, SERVER)
        return X509Update(X509Context((own,), BundleSet.of(self.ca.bundle())), crls)


async def accepted(ca: TestAuthority, lookup: CrlRevocations, *clients: X509Svid) -> list[str]:
    """Per client: "ok", or the rejection reason counted by the server's verifier."""
    metrics = PeerMetrics(CollectorRegistry())
    own = source_of(ca.issue_x509_svid(SERVER), ca.bundle())
    ctx = server_context(own, authorize=authorize_any(), revocations=lookup, metrics=metrics)
    out = []
    async with serving(ctx) as served:
        for client in clients:
            before = metrics.rejection_counts()
            client_ctx = client_context(
                source_of(client, ca.bundle()),
                authorize=authorize_any(),
                revocations=no_revocation_check(),
            )
            if await exchange(served.port, client_ctx) == CLIENT.encode():
                out.append("ok")
                continue
            after = metrics.rejection_counts()
            out.append(next(r for r, n in after.items() if n > before.get(r, 0)))
    return out


async def test_another_replicas_crl_is_verified_by_the_chain_that_needs_it(
    clock: FakeClock,
) -> None:
    """The issue's outage: our bundle holds the root, our chain replica A; replica B's CRL
    cannot be checked on arrival. It must not discard A's CRL, and it must be enforced on B's
    chains once one arrives."""
    td = Replicas(clock)
    a_bad, a_good = td.svid(td.a), td.svid(td.a)
    b_bad, b_good = td.svid(td.b), td.svid(td.b)
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update(td.crl(td.a, a_bad.serial), td.crl(td.b, b_bad.serial)))
    assert lookup.error is None
    assert set(lookup.book.verified) == {issuer_key_id(td.a[0])}  # B's waits for a chain
    assert await accepted(td.ca, lookup, a_good, a_bad, b_good, b_bad) == [
        "ok", "revoked", "ok", "revoked"
    ]  # fmt: skip
    assert set(lookup.book.verified) == {issuer_key_id(td.a[0]), issuer_key_id(td.b[0])}
    # The next CRL of B is verified on arrival (B's certificate is known now).
    b_new = td.svid(td.b)
    lookup.update(td.update(td.crl(td.a, a_bad.serial), td.crl(td.b, b_bad.serial, b_new.serial)))
    assert not lookup.book.pending
    assert await accepted(td.ca, lookup, b_good, b_new) == ["ok", "revoked"]


async def test_one_issuers_crl_never_revokes_another_issuers_serial(clock: FakeClock) -> None:
    td = Replicas(clock)
    a_svid = td.svid(td.a)
    # B's CRL lists the serial of a certificate A issued: a serial is unique per issuer only.
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update(td.crl(td.a), td.crl(td.b, a_svid.serial)))
    assert await accepted(td.ca, lookup, a_svid, td.svid(td.b)) == ["ok", "ok"]
    revoked = lookup.current()
    assert revoked.is_serial_revoked(a_svid.serial, issuer_key_id(td.b[0]))
    assert not revoked.is_serial_revoked(a_svid.serial, issuer_key_id(td.a[0]))


async def test_a_foreign_trust_domains_crl_never_revokes_ours(
    clock: FakeClock, other_ca: TestAuthority
) -> None:
    """A federated trust domain's CA forges a CRL in our intermediate's name (same issuer name,
    same authority key identifier) listing our serial: refused, ours stays accepted."""
    td = Replicas(clock)
    victim = td.svid(td.a)
    forged = make_crl(td.ca, victim.serial, this_update=clock.now(), next_update=clock.now() + HOUR,
                      issuer=td.a[0], key=other_ca.intermediate_key)  # fmt: skip
    own = td.svid(td.a, SERVER)
    bundles = BundleSet.of(td.ca.bundle(), other_ca.bundle())
    lookup = CrlRevocations(clock=clock)
    lookup.update(X509Update(X509Context((own,), bundles), (td.crl(td.a), forged)))
    assert lookup.error is not None
    assert "not signed by its issuer's key" in lookup.error
    assert await accepted(td.ca, lookup, victim) == ["ok"]
    # Twin: the foreign CA's CRL in its own name is kept under its own key only.
    theirs = make_crl(other_ca, victim.serial, this_update=clock.now(),
                      next_update=clock.now() + HOUR)  # fmt: skip
    lookup.update(X509Update(X509Context((own,), bundles), (td.crl(td.a), theirs)))
    lookup.current_for_chain([ChainIssuer.of(other_ca.intermediate)])
    assert lookup.current().is_serial_revoked(victim.serial, issuer_key_id(other_ca.intermediate))
    assert await accepted(td.ca, lookup, victim) == ["ok"]


async def test_the_roots_crl_revokes_an_intermediate_and_all_it_signed(clock: FakeClock) -> None:
    td = Replicas(clock)
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update(td.crl(td.a), td.crl(td.b), td.root_crl(td.b[0].serial_number)))
    assert await accepted(td.ca, lookup, td.svid(td.a), td.svid(td.b)) == ["ok", "revoked"]


async def test_a_stale_crl_only_refuses_the_chains_through_its_issuer(clock: FakeClock) -> None:
    """An expired CRL among valid ones: B's CRL is an hour and a half old, A's is current."""
    td = Replicas(clock)
    old = td.crl(td.b, age=dt.timedelta(minutes=90))
    lookup = CrlRevocations(clock=clock, grace=300)
    lookup.update(td.update(td.crl(td.a), old))
    assert await accepted(td.ca, lookup, td.svid(td.a), td.svid(td.b)) == [
        "ok", "revocations-stale"
    ]  # fmt: skip
    lookup.update(td.update(td.crl(td.a), td.crl(td.b)))  # B's publisher catches up
    assert await accepted(td.ca, lookup, td.svid(td.b)) == ["ok"]


async def test_a_crl_rollback_is_refused_and_the_newer_one_stays(clock: FakeClock) -> None:
    td = Replicas(clock)
    revoked = td.svid(td.a)
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update(td.crl(td.a, revoked.serial, number=7)))
    # A replay of an older CRL (number 6, which did not list the serial yet).
    lookup.update(td.update(td.crl(td.a, number=6)))
    assert lookup.error is not None
    assert "rollback" in lookup.error
    assert await accepted(td.ca, lookup, revoked) == ["revoked"]
    # Twin: a newer number is taken.
    lookup.update(td.update(td.crl(td.a, number=8)))
    assert lookup.error is None
    assert await accepted(td.ca, lookup, revoked) == ["ok"]


async def test_a_crl_signed_by_the_wrong_key_keeps_the_last_good_one(clock: FakeClock) -> None:
    td = Replicas(clock)
    revoked = td.svid(td.a)
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update(td.crl(td.a, revoked.serial)))
    lookup.update(td.update(td.crl(td.a, key=td.b[1])))  # A's name and key id, B's signature
    assert lookup.error is not None
    assert await accepted(td.ca, lookup, revoked) == ["revoked"]


async def test_an_agent_without_crls_and_an_empty_list(clock: FakeClock) -> None:
    td = Replicas(clock)
    revoked = td.svid(td.a)
    lookup = CrlRevocations(clock=clock)
    lookup.update(td.update())  # an agent that publishes no CRL: unknown status, accepted
    assert await accepted(td.ca, lookup, revoked) == ["ok"]
    required = CrlRevocations(clock=clock, require_crls=True)
    required.update(td.update())
    assert await accepted(td.ca, required, revoked) == ["revocations-stale"]
    # CRLs arrive (required: of every issuer of the chain, the root's too), then an update with
    # an empty list while revocations exist: kept.
    for each in (lookup, required):
        each.update(td.update(td.crl(td.a, revoked.serial), td.root_crl()))
        each.update(td.update())
        assert await accepted(td.ca, each, revoked) == ["revoked"]


def test_crls_kept_until_their_issuer_expires(clock: FakeClock) -> None:
    """An issuer's CRL that the publisher stops sending ages instead of vanishing; once the
    issuer's certificate has expired it is dropped."""
    td = Replicas(clock)
    first = CrlBook.build([x509.load_der_x509_crl(td.crl(td.a, 5))], [td.a[0]], now=clock.now())
    kept = CrlBook.build([], [td.a[0]], previous=first, now=clock.now())
    assert kept.revocations.is_serial_revoked(5, issuer_key_id(td.a[0]))
    later = td.a[0].not_valid_after_utc + dt.timedelta(seconds=1)
    assert not CrlBook.build([], [], previous=first, now=later).verified
