"""Getting SVIDs from the CA: local keys and CSRs out, the CA's answers checked in.

Keys are generated on the node and never leave it (:func:`new_key`, :func:`build_csr`); the CA
takes the SPIFFE ID and names from its records, not from the CSR. :func:`request_svids` sends one
batch of workload entries to the CA and :func:`issued_item` keeps an answer only if it names the
entry's SPIFFE ID and certifies the key generated for it. :func:`renewal_due_at` is when an SVID
(a workload's or the agent's own) is renewed. Used by :meth:`s2s.agent.cache.SvidCache.issue`
and, for the key, CSR and renewal time of the agent SVID, by :mod:`s2s.agent.node`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient
from s2s.agent.ca_wire import X509Result
from s2s.agent.cache_state import CachedSvid
from s2s.core.rotation import jitter_from, renewal_time
from s2s.core.x509svid import X509Svid

__all__ = [
    "MIN_RENEW_INTERVAL",
    "build_csr",
    "issued_item",
    "keys_and_csrs",
    "merge_updates",
    "new_key",
    "renewal_due_at",
    "request_svids",
]

MIN_RENEW_INTERVAL: Final = timedelta(seconds=1)

KeyGen = Callable[[], ec.EllipticCurvePrivateKey]


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (the default key type everywhere in s2s)."""
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """A CSR proving possession of ``key``; the CA takes the ID and names from its records."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256())


def renewal_due_at(
    svid: X509Svid, received_at: datetime, *, jitter: float, now: datetime | None = None
) -> datetime:
    """When to renew ``svid``: half its life, counted from when it was received, +-10%."""
    start = max(svid.not_before, min(received_at, svid.not_after - timedelta(seconds=1)))
    due = renewal_time(start, svid.not_after, jitter=jitter)
    if now is not None:
        due = max(due, min(now + MIN_RENEW_INTERVAL, svid.not_after))
    return due


def keys_and_csrs(
    keygen: KeyGen, n: int
) -> list[tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]]:
    out = []
    for _ in range(n):
        key = keygen()
        out.append((key, build_csr(key)))
    return out


async def request_svids(
    client: CaClient, batch: Sequence[CachedSvid], keygen: KeyGen
) -> tuple[list[ec.EllipticCurvePrivateKey], tuple[X509Result, ...], int | None]:
    """One batch to the CA: a new key per item (in a thread), their CSRs signed in one call.
    Returns the keys and the CA's results (both in ``batch`` order) and its bundle sequence."""
    keys = await asyncio.to_thread(keys_and_csrs, keygen, len(batch))
    requests = [(item.entry.id, csr) for item, (_key, csr) in zip(batch, keys, strict=True)]
    results, sequence = await client.sign_x509(requests)
    return [key for key, _ in keys], results, sequence


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
