"""Authorizers and the in-memory X.509 source (pure, no sockets)."""

from __future__ import annotations

import pytest

from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidRequest, InvalidSpiffeId, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import (
    authorize_any,
    authorize_id,
    authorize_if,
    authorize_member_of,
    authorize_one_of,
)
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context, X509SourceLike

A = SpiffeId.parse("spiffe://example.org/a")
B = SpiffeId.parse("spiffe://example.org/b")
X = SpiffeId.parse("spiffe://other.org/a")


def test_authorize_any_accepts_every_id() -> None:
    assert all(authorize_any()(sid) for sid in (A, B, X))


def test_authorize_id_accepts_exactly_one() -> None:
    check = authorize_id("spiffe://example.org/a")
    assert check(A)
    assert not check(B)
    assert not check(X)  # same path, other trust domain


def test_authorize_one_of() -> None:
    check = authorize_one_of([A, "spiffe://other.org/a"])
    assert check(A)
    assert check(X)
    assert not check(B)


def test_authorize_member_of() -> None:
    check = authorize_member_of("example.org")
    assert check(A)
    assert check(B)
    assert not check(X)


def test_predicate_hook_and_failing_predicates_reject() -> None:
    assert authorize_if(lambda sid: sid.path.startswith("/a"))(A)
    assert not authorize_if(lambda sid: sid.path.startswith("/a"))(B)

    def broken(_: SpiffeId) -> bool:
        raise RuntimeError("bug")

    assert not authorize_if(broken)(A)


def test_bad_ids_in_authorizer_config_are_errors() -> None:
    with pytest.raises(InvalidSpiffeId):
        authorize_id("https://example.org/a")
    with pytest.raises(InvalidSpiffeId):
        authorize_member_of("Not A Domain!")


def test_static_source_notifies_and_unsubscribes() -> None:
    ca = TestAuthority("example.org")
    first, second = ca.issue_x509_svid(str(A)), ca.issue_x509_svid(str(B))
    src = StaticX509Source(X509Context((first,), BundleSet.of(ca.bundle())))
    assert isinstance(src, X509SourceLike)
    seen: list[X509Context] = []
    unsubscribe = src.subscribe(seen.append)
    src.set_svids(second)
    assert [c.default_svid.spiffe_id for c in seen] == [B]
    assert src.current().default_svid is second
    unsubscribe()
    unsubscribe()  # idempotent
    src.set_svids(first)
    assert len(seen) == 1


def test_static_source_refuses_svids_without_keys_and_empty_contexts() -> None:
    ca = TestAuthority("example.org")
    svid = ca.issue_x509_svid(str(A))
    public_only = X509Svid(svid.spiffe_id, svid.cert_chain)
    with pytest.raises(InvalidRequest):
        StaticX509Source(X509Context((public_only,), BundleSet.of(ca.bundle())))
    empty = X509Context((), BundleSet.of(ca.bundle()))
    with pytest.raises(Unavailable):
        _ = empty.default_svid
