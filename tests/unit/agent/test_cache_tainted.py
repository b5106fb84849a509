"""Tainted authorities in the agent's cache (fake clock): SVIDs under a tainted intermediate are
re-issued at once but served until replaced; others are untouched; JWT-SVIDs signed by a tainted
key are forgotten; the entries answer's bundle sequence and authorities revision are followed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from test_cache import UID, cache, entry, issue

from s2s.agent.ca_wire import EntriesResponse, parse_entries
from s2s.agent.cache import SvidCache
from s2s.agent.tainted import ca_key_ids, signed_by_any
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable
from s2s.testing import TestAuthority

__all__ = ["cache"]  # the fixture, shared with test_cache.py


def ski(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def test_an_svid_under_a_tainted_intermediate_is_reissued_now_and_served_meanwhile(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("b", "/billing")], revision=1)
    issue(cache, authority)
    held = cache.svids_for(UID)[0]
    assert cache._due(fake_clock.now()) == []
    assert cache.apply_tainted(frozenset({ski(authority.intermediate)}), frozenset()) == 1
    assert cache.svids_for(UID) == (held,)  # still served until the new one arrives
    assert [i.entry.id for i in cache._due(fake_clock.now())] == ["b"]
    # Twins: an unrelated key id, or the root's (not in the served chain), change nothing.
    issue(cache, authority)
    assert cache.svids_for(UID)[0].serial != held.serial  # the re-issue replaced it
    other = TestAuthority("example.org", clock=fake_clock)
    assert cache.apply_tainted(frozenset({ski(other.intermediate)}), frozenset()) == 0
    assert cache.apply_tainted(frozenset(), frozenset()) == 0
    assert cache._due(fake_clock.now()) == []


def test_signed_by_any_reads_the_chain_cas_only(authority: TestAuthority) -> None:
    svid = authority.issue_x509_svid("spiffe://example.org/billing")
    assert ca_key_ids(svid) == {ski(authority.intermediate)}
    assert signed_by_any(svid, [ski(authority.intermediate).upper()])
    assert not signed_by_any(svid, [ski(svid.leaf)])  # the leaf is not an authority
    assert not signed_by_any(svid, [])


def test_jwt_svids_signed_by_a_tainted_key_are_forgotten(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    jwt = cache._jwt
    until = fake_clock.now() + timedelta(minutes=5)
    token = authority.issue_jwt_svid("spiffe://example.org/billing", "aud")
    other = authority.issue_jwt_svid("spiffe://example.org/api", "aud", kid="other-kid")
    sid_b, sid_a = entry("b", "/billing").spiffe_id, entry("a", "/api").spiffe_id
    jwt._tokens = {
        (sid_b, frozenset({"aud"})): (token, until, until),
        (sid_a, frozenset({"aud"})): (other, until, until),
    }
    assert cache.apply_tainted(frozenset(), frozenset({authority.jwt_kid})) == 1
    assert list(jwt._tokens) == [(sid_a, frozenset({"aud"}))]
    assert jwt.drop_signed_by(frozenset({"unknown"})) == 0


def test_the_entries_answer_wakes_the_bundle_fetch_when_the_sequence_moved(
    cache: SvidCache, authority: TestAuthority
) -> None:
    own = authority.bundle().sequence
    cache._follow_authorities(EntriesResponse(1, (), bundle_sequence=own, authorities_revision=7))
    assert not cache._wake_bundle.is_set()
    assert cache._authorities_revision == 7
    cache._follow_authorities(EntriesResponse(1, (), bundle_sequence=own + 1))
    assert cache._wake_bundle.is_set()
    assert cache._authorities_revision == 7  # an answer without it keeps the last one


def test_parse_entries_reads_the_authority_fields_and_refuses_bad_ones() -> None:
    doc = {"revision": 3, "entries": [], "bundle_sequence": 4, "authorities_revision": 9,
           "tainted": {"x509": ["ab"], "jwt": ["k"]}}  # fmt: skip
    answer = parse_entries(doc)
    assert (answer.bundle_sequence, answer.authorities_revision) == (4, 9)
    assert (answer.tainted_x509, answer.tainted_jwt) == ({"ab"}, {"k"})
    old_ca = parse_entries({"revision": 3, "entries": []})
    assert (old_ca.bundle_sequence, old_ca.tainted_x509) == (None, frozenset())
    for bad in ({"bundle_sequence": "4"}, {"tainted": {"x509": [1]}}, {"tainted": ["x"]}):
        with pytest.raises(Unavailable, match="malformed"):
            parse_entries({"revision": 3, "entries": [], **bad})
