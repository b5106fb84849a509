"""From a batch of cached items to SVIDs: local keys and CSRs out, the CA's answers checked in.

Keys are generated on the node and never leave it; the CA's answer for an item is kept only if it
names the entry's SPIFFE ID and certifies the key generated for it. Used by
:meth:`s2s.agent.cache.SvidCache.issue`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.cache_state import CachedSvid
from s2s.agent.node import build_csr, renewal_due_at
from s2s.core.rotation import jitter_from
from s2s.core.x509svid import X509Svid

__all__ = ["issued_item", "keys_and_csrs", "merge_updates"]


def keys_and_csrs(
    keygen: Callable[[], ec.EllipticCurvePrivateKey], n: int
) -> list[tuple[ec.EllipticCurvePrivateKey, Any]]:
    out = []
    for _ in range(n):
        key = keygen()
        out.append((key, build_csr(key)))
    return out


def issued_item(
    item: CachedSvid,
    key: ec.EllipticCurvePrivateKey,
    svid: X509Svid,
    *,
    now: datetime,
    rand: Callable[[], float],
) -> CachedSvid | None:
    """``item`` holding ``svid`` (with ``key``) and its renewal time; None if the CA's SVID is
    for another SPIFFE ID or another key."""
    if svid.spiffe_id != item.entry.spiffe_id or svid.leaf.public_key() != key.public_key():
        return None
    full = X509Svid(
        spiffe_id=svid.spiffe_id,
        cert_chain=svid.cert_chain,
        private_key=key,
        hint=item.entry.hint,
    )
    renew_at = renewal_due_at(full, now, jitter=jitter_from(rand), now=now)
    return CachedSvid(item.entry, full, renew_at, None)


def merge_updates(
    items: Iterable[CachedSvid], updates: Mapping[str, CachedSvid]
) -> tuple[CachedSvid, ...]:
    """``items`` with ``updates`` applied by entry id."""
    # Entries may have changed while the batch was out: only update those still identical.
    return tuple(
        updates[i.entry.id] if i.entry.id in updates and i.entry == updates[i.entry.id].entry else i
        for i in items
    )
