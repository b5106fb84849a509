"""Authorizers: which peer SPIFFE IDs may talk to us (or we to them).

An authorizer is any ``Callable[[SpiffeId], bool]``; these build the common ones. They are called
after the chain was verified, so they see only authenticated IDs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "Authorizer",
    "authorize_any",
    "authorize_id",
    "authorize_if",
    "authorize_member_of",
    "authorize_one_of",
]

Authorizer = Callable[[SpiffeId], bool]


def authorize_any() -> Authorizer:
    """Accept any peer whose SVID verified (authentication only)."""
    return _any


def _any(_: SpiffeId) -> bool:
    return True


def authorize_id(expected: SpiffeId | str) -> Authorizer:
    """Accept exactly one SPIFFE ID."""
    want = expected if isinstance(expected, SpiffeId) else SpiffeId.parse(expected)

    def check(peer: SpiffeId) -> bool:
        return peer == want

    return check


def authorize_one_of(allowed: Iterable[SpiffeId | str]) -> Authorizer:
    """Accept any of a fixed set of SPIFFE IDs (O(1) per check)."""
    ids = frozenset(a if isinstance(a, SpiffeId) else SpiffeId.parse(a) for a in allowed)

    def check(peer: SpiffeId) -> bool:
        return peer in ids

    return check


def authorize_member_of(*trust_domains: TrustDomain | str) -> Authorizer:
    """Accept any SPIFFE ID of the given trust domains."""
    tds = frozenset(
        t if isinstance(t, TrustDomain) else TrustDomain.parse(t) for t in trust_domains
    )

    def check(peer: SpiffeId) -> bool:
        return peer.trust_domain in tds

    return check


def authorize_if(predicate: Callable[[SpiffeId], object]) -> Authorizer:
    """Accept when ``predicate(peer)`` is truthy; a predicate that raises rejects."""

    def check(peer: SpiffeId) -> bool:
        try:
            return bool(predicate(peer))
        except Exception:  # an authorizer bug must fail closed, never open
            return False

    return check
