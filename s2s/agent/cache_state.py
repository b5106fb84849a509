"""What the SVID cache holds, and the pure rules that move it on (no I/O, ``now`` passed in).

:class:`CacheState` is the immutable snapshot :class:`~s2s.agent.cache.SvidCache` swaps whole;
the functions here decide, from a snapshot and an instant, which items to (re)issue, how a changed
entry carries its SVID over, and which SVIDs a revocation or a tainted authority hits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from s2s.agent.tainted import signed_by_any
from s2s.core.bundle import BundleSet
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationSet
from s2s.core.selectors import Selector, matches
from s2s.core.x509svid import X509Svid

__all__ = [
    "COALESCE",
    "CacheState",
    "CachedSvid",
    "carry_over",
    "due_items",
    "missing_ids",
    "entry_order",
    "event_times",
    "renew_now",
    "revoked_ids",
    "serving",
    "tainted_ids",
    "trusted_bundles",
]

COALESCE: Final = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class CachedSvid:
    """One entry and the SVID held for it (None until the first issue succeeds)."""

    entry: RegistrationEntry
    svid: X509Svid | None = None
    renew_at: datetime | None = None
    retry_at: datetime | None = None  # after a per-entry error from the CA


@dataclass(frozen=True, slots=True)
class CacheState:
    """Entries in serving order (oldest first: the first match is a workload's default).
    ``bundles`` holds our own trust domain's bundle; ``federated`` the bundles of the foreign
    trust domains this agent's entries federate with, as the CA last sent them."""

    items: tuple[CachedSvid, ...] = ()
    bundles: BundleSet = field(default_factory=BundleSet.of)
    revision: int = -1
    federated: BundleSet = field(default_factory=BundleSet.of)

    def by_id(self) -> dict[str, CachedSvid]:
        return {item.entry.id: item for item in self.items}


def serving(
    items: Iterable[CachedSvid], selectors: frozenset[Selector], now: datetime
) -> tuple[X509Svid, ...]:
    """The unexpired SVIDs of the items whose entry ``selectors`` match, in serving order."""
    return tuple(
        item.svid
        for item in items
        if item.svid is not None
        and item.svid.not_after > now
        and matches(item.entry.selectors, selectors)
    )


def trusted_bundles(state: CacheState, selectors: frozenset[Selector] | None) -> BundleSet:
    """Our own bundle plus the federated bundles of the trust domains that the entries matching
    ``selectors`` federate with (every federated bundle held when ``selectors`` is None). Never
    merged: one bundle per trust domain, and a federated one never stands in for our own."""
    if not state.federated:
        return state.bundles
    if selectors is None:
        wanted = state.federated.trust_domains()
    else:
        wanted = frozenset(
            td
            for item in state.items
            if matches(item.entry.selectors, selectors)
            for td in item.entry.federates_with
        )
    own = state.bundles.bundles
    chosen = {td: b for td, b in state.federated.bundles.items() if td in wanted and td not in own}
    return BundleSet({**chosen, **own}) if chosen else state.bundles


def missing_ids(items: Iterable[CachedSvid], now: datetime) -> list[str]:
    """Entry ids holding no unexpired SVID."""
    return [item.entry.id for item in items if item.svid is None or item.svid.not_after <= now]


def due_items(items: Iterable[CachedSvid], now: datetime) -> list[CachedSvid]:
    """Items to (re)issue now; once one is due, those due within ``COALESCE`` join its batch
    (jitter still spreads renewals; this only saves round trips)."""
    ready = [i for i in items if i.retry_at is None or i.retry_at <= now]
    if not any(i.svid is None or i.renew_at is None or i.renew_at <= now for i in ready):
        return []
    soon = now + COALESCE
    return [i for i in ready if i.svid is None or i.renew_at is None or i.renew_at <= soon]


def revoked_ids(items: Iterable[CachedSvid], revoked: RevocationSet) -> set[str]:
    """Entry ids whose SVID has a revoked certificate (leaf or CA), by serial."""
    return {
        i.entry.id
        for i in items
        if i.svid
        and any(revoked.is_serial_revoked_by_any_issuer(c.serial_number) for c in i.svid.cert_chain)
    }


def tainted_ids(items: Iterable[CachedSvid], x509_ids: frozenset[str], now: datetime) -> set[str]:
    """Entry ids whose SVID a tainted intermediate signed and that are not already due."""
    return {
        i.entry.id
        for i in items
        if i.svid is not None
        and (i.renew_at is None or i.renew_at > now)
        and signed_by_any(i.svid, x509_ids)
    }


def renew_now(items: Iterable[CachedSvid], ids: set[str], now: datetime) -> tuple[CachedSvid, ...]:
    """``items`` with those in ``ids`` due at ``now`` (their SVIDs still held until replaced)."""
    return tuple(
        dataclasses.replace(i, renew_at=now, retry_at=None) if i.entry.id in ids else i
        for i in items
    )


def entry_order(entry: RegistrationEntry) -> tuple[str, str]:
    return (entry.created_at.isoformat() if entry.created_at else "", entry.id)


def carry_over(old: CachedSvid | None, entry: RegistrationEntry) -> CachedSvid:
    """The cached item for ``entry`` given what was held for its previous revision."""
    if old is None:
        return CachedSvid(entry)
    if old.entry == entry:
        return old
    same_svid = (
        old.entry.spiffe_id == entry.spiffe_id
        and old.entry.dns_names == entry.dns_names
        and old.entry.x509_svid_ttl == entry.x509_svid_ttl
    )
    if not same_svid or old.svid is None:
        return CachedSvid(entry)  # re-issue at once; the old SVID no longer describes the entry
    svid = old.svid
    if svid.hint != entry.hint:
        svid = dataclasses.replace(svid, hint=entry.hint)
    return dataclasses.replace(old, entry=entry, svid=svid)


def event_times(item: CachedSvid) -> list[datetime]:
    times = [t for t in (item.renew_at, item.retry_at) if t is not None]
    if item.svid is not None:
        times.append(item.svid.not_after)
    return times
