"""The agent's federated bundles without I/O: which bundles a caller may trust (only those its
matching entries federate with; never a federated bundle in place of our own), and the entries
answer's federated fields parsed strictly."""

from __future__ import annotations

import json

import pytest

from s2s.agent.ca_wire import parse_entries
from s2s.agent.cache_state import CachedSvid, CacheState, trusted_bundles
from s2s.core.bundle import BundleSet
from s2s.core.errors import Unavailable
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import Selector, parse_selectors
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.testing import TestAuthority

OWN = TestAuthority("example.org")
B = TestAuthority("b.test")
C = TestAuthority("c.test")
AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a1")


def entry(eid: str, selectors: list[str], *federates: TrustDomain) -> RegistrationEntry:
    return RegistrationEntry(
        id=eid,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/{eid}"),
        parent_id=AGENT,
        selectors=parse_selectors(selectors),
        federates_with=frozenset(federates),
    )


def state(*entries: RegistrationEntry, federated: BundleSet | None = None) -> CacheState:
    return CacheState(
        items=tuple(CachedSvid(e) for e in entries),
        bundles=BundleSet.of(OWN.bundle()),
        federated=federated if federated is not None else BundleSet.of(B.bundle(), C.bundle()),
    )


def sel(*texts: str) -> frozenset[Selector]:
    return frozenset(Selector.parse(t) for t in texts)


def tds(bundles: BundleSet) -> set[str]:
    return {str(td) for td in bundles.trust_domains()}


def test_only_what_the_matching_entries_federate_with() -> None:
    s = state(
        entry("a", ["unix:uid:1"], B.trust_domain),
        entry("c", ["unix:uid:2"], C.trust_domain),
        entry("plain", ["unix:uid:3"]),
    )
    assert tds(trusted_bundles(s, sel("unix:uid:1"))) == {"example.org", "b.test"}
    assert tds(trusted_bundles(s, sel("unix:uid:2"))) == {"example.org", "c.test"}
    assert tds(trusted_bundles(s, sel("unix:uid:3"))) == {"example.org"}  # twin: no federation
    assert tds(trusted_bundles(s, sel("unix:uid:9"))) == {"example.org"}  # no entry at all
    both = sel("unix:uid:1", "unix:uid:2")
    assert tds(trusted_bundles(s, both)) == {"example.org", "b.test", "c.test"}
    assert tds(trusted_bundles(s, None)) == {"example.org", "b.test", "c.test"}


def test_a_federated_bundle_never_replaces_our_own() -> None:
    fake_own = TestAuthority("example.org").bundle()  # another key pair claiming our name
    s = state(
        entry("a", ["unix:uid:1"], OWN.trust_domain, B.trust_domain),
        federated=BundleSet.of(fake_own, B.bundle()),
    )
    got = trusted_bundles(s, sel("unix:uid:1"))
    assert got.get(OWN.trust_domain) == OWN.bundle()
    assert got.get(B.trust_domain) == B.bundle()


def test_no_federated_bundles_is_the_own_set_itself() -> None:
    s = state(entry("a", ["unix:uid:1"], B.trust_domain), federated=BundleSet())
    assert trusted_bundles(s, sel("unix:uid:1")) is s.bundles


def answer(**extra: object) -> dict[str, object]:
    return {"revision": 3, "entries": [], **extra}


def test_entries_answer_federated_fields() -> None:
    doc = json.loads(B.bundle().encode())
    parsed = parse_entries(answer(federated_revision=7, federated_bundles={"b.test": doc}))
    assert parsed.federated_revision == 7
    assert parsed.federated_bundles == BundleSet.of(B.bundle())
    old_ca = parse_entries(answer())  # a CA without federation: nothing to apply
    assert old_ca.federated_revision is None
    assert old_ca.federated_bundles is None
    for bad in (
        {"federated_revision": "7", "federated_bundles": {}},
        {"federated_revision": 7, "federated_bundles": []},
        {"federated_revision": 7, "federated_bundles": {"not a td": doc}},
        {"federated_revision": 7, "federated_bundles": {"b.test": {"keys": "x"}}},
    ):
        with pytest.raises(Unavailable, match="malformed"):
            parse_entries(answer(**bad))
