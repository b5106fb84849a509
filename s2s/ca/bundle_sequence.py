"""The trust bundle the CA publishes, built from the store's authorities, and its
``spiffe_sequence``: kept in the store and grown by compare-and-swap whenever the published set of
keys differs from the one it was last bumped for, so every replica agrees on it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s2s.core.bundle import Bundle, JwtAuthority
from s2s.core.errors import Conflict, InvalidConfig, Unavailable
from s2s.core.spiffe_id import TrustDomain
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState

__all__ = ["BUNDLE_STATE_KEY", "build_bundle", "bump_sequence", "published_authorities"]

log = logging.getLogger(__name__)

BUNDLE_STATE_KEY = "bundle.sequence"
# States whose public keys are published (roots, JWT keys): everything not revoked.
_PUBLISHED = frozenset(
    {AuthorityState.PREPARED, AuthorityState.ACTIVE, AuthorityState.OLD, AuthorityState.TAINTED}
)


def published_authorities(
    records: Sequence[AuthorityRecord], now: datetime
) -> tuple[list[AuthorityRecord], list[AuthorityRecord], str]:
    """(roots, JWT keys, digest of both) among ``records`` that are published and unexpired."""
    published = [r for r in records if r.state in _PUBLISHED and r.not_after > now]
    roots = [r for r in published if r.kind is AuthorityKind.X509_ROOT]
    jwts = [r for r in published if r.kind is AuthorityKind.JWT]
    digest = hashlib.sha256(
        "\n".join(sorted(f"{r.kind}:{r.id}" for r in roots + jwts)).encode()
    ).hexdigest()
    return roots, jwts, digest


def build_bundle(
    trust_domain: TrustDomain,
    roots: Sequence[AuthorityRecord],
    jwts: Sequence[AuthorityRecord],
    *,
    sequence: int,
    refresh_hint: int,
) -> Bundle:
    """The bundle of these roots and JWT keys."""
    return Bundle(
        trust_domain=trust_domain,
        x509_authorities=tuple(x509.load_der_x509_certificate(r.public_der) for r in roots),
        jwt_authorities=tuple(
            JwtAuthority(
                kid=r.id,
                public_key=serialization.load_der_public_key(r.public_der),
                not_after=r.not_after,
            )
            for r in jwts
        ),
        sequence=sequence,
        refresh_hint=refresh_hint,
    )


async def bump_sequence(store: Store, digest: str) -> int:
    """The sequence for the published set ``digest``: the stored one if it was bumped for this
    digest, else one more (compare-and-swap; another replica's bump is re-read)."""
    for _ in range(16):
        raw = await store.get_state(BUNDLE_STATE_KEY)
        sequence, stored_digest = _parse_sequence(raw)
        if stored_digest == digest:
            return sequence
        new = json.dumps({"sequence": sequence + 1, "digest": digest})
        try:
            await store.cas_state(BUNDLE_STATE_KEY, raw, new)
        except Conflict:
            continue  # another replica bumped it; re-read
        log.info("bundle.changed", extra={F.REVISION: sequence + 1})
        return sequence + 1
    raise Unavailable("could not update the bundle sequence (too much contention)")


def _parse_sequence(raw: str | None) -> tuple[int, str]:
    if raw is None:
        return 0, ""
    try:
        doc = json.loads(raw)
        return int(doc["sequence"]), str(doc["digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidConfig(f"the stored bundle sequence is corrupt: {exc}") from exc
