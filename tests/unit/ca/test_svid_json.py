"""The agent API's SVID JSON: the chain is the SVID's own chain in PEM, leaf first, whichever
intermediate signed it (CA certificates' PEM is kept once encoded, the leaf's never)."""

from __future__ import annotations

from s2s.ca.http import svid_json
from s2s.testing import TestAuthority


def test_the_chain_is_the_svids_chain_in_pem() -> None:
    authority = TestAuthority()
    first = authority.issue_x509_svid("spiffe://example.org/a")
    second = authority.issue_x509_svid("spiffe://example.org/b")
    for svid in (first, second, first):
        body = svid_json(svid)
        assert body["svid_chain"] == svid.chain_pem().decode("ascii")
        assert body["serial"] == format(svid.serial, "x")
    assert svid_json(first)["svid_chain"] != svid_json(second)["svid_chain"]


def test_an_svid_under_another_intermediate_carries_that_intermediate() -> None:
    before = TestAuthority().issue_x509_svid("spiffe://example.org/a")
    after = TestAuthority().issue_x509_svid("spiffe://example.org/a")
    assert before.cert_chain[1] != after.cert_chain[1]
    for svid in (before, after, before):
        assert svid_json(svid)["svid_chain"] == svid.chain_pem().decode("ascii")


def test_a_leaf_without_intermediate_is_the_whole_chain() -> None:
    svid = TestAuthority().issue_x509_svid("spiffe://example.org/a", include_intermediate=False)
    assert svid_json(svid)["svid_chain"] == svid.chain_pem().decode("ascii")
    assert svid_json(svid)["svid_chain"].count("BEGIN CERTIFICATE") == 1
