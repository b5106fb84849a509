"""ResponseMemo: an encoding is reused only for the very objects it was built from."""

from __future__ import annotations

from s2s.agent import workload_messages as msg
from s2s.agent.workload_messages import ResponseMemo
from s2s.core.bundle import BundleSet
from s2s.testing import TestAuthority


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: object) -> bytes:
        self.calls += 1
        return repr([id(a) for a in args]).encode()


def test_same_objects_are_encoded_once() -> None:
    authority = TestAuthority("example.org")
    svids = (authority.issue_x509_svid("spiffe://example.org/a"),)
    bundles = BundleSet.of(authority.bundle())
    memo = ResponseMemo()
    first = memo.get(msg.x509_svid_response, svids, bundles, ())
    assert first == msg.x509_svid_response(svids, bundles, ())
    build = Counting()
    memo.get(build, svids, bundles)
    memo.get(build, tuple(svids), bundles)  # another tuple of the same SVIDs
    assert build.calls == 1


def test_other_objects_are_encoded_again() -> None:
    authority = TestAuthority("example.org")
    old = authority.issue_x509_svid("spiffe://example.org/a")
    new = authority.issue_x509_svid("spiffe://example.org/a")
    other = authority.issue_x509_svid("spiffe://example.org/b")
    bundles = BundleSet.of(authority.bundle())
    memo = ResponseMemo()
    build = Counting()
    memo.get(build, (old, other), bundles)
    memo.get(build, (new, other), bundles)  # rotated
    memo.get(build, (other,), bundles)  # one expired: the provider no longer serves it
    memo.get(build, (other,), BundleSet.of(TestAuthority("example.org").bundle()))
    assert build.calls == 4
    first = memo.get(msg.x509_svid_response, (old,), bundles, ())
    assert memo.get(msg.x509_svid_response, (new,), bundles, ()) != first


def test_only_the_most_recent_entries_are_kept() -> None:
    memo = ResponseMemo(max_entries=2)
    build = Counting()
    a, b, c = object(), object(), object()
    for arg in (a, b, a, c, a, b):
        memo.get(build, arg)
    assert build.calls == 4  # a, b, c, then b again (pushed out by c)
