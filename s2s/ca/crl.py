"""CRLs: one per issuing CA, so that ``openssl verify -crl_check`` works on any leaf.

Issuers: every unexpired intermediate (any state: a prepared one gets its CRL before its first
leaf) and every unexpired root that is still published (its CRL lists revoked intermediates).
Each CRL is RFC 5280 v2: issuer = the CA's subject, thisUpdate (backdated by the CA's skew
cushion, so a verifier whose clock lags does not see a CRL from the future), nextUpdate,
authority key identifier (= the CA's SKI, section 5.2.1), a cRLNumber (5.2.3) kept per issuer in
the store (compare-and-swap, so it only grows, across restarts and replicas), and one entry per
revoked serial that CA issued (revocation date = the record's ``revoked_at``; a reason code when
the text names one of RFC 5280's, 5.3.1). Expired certificates leave the index and the CRL.

The values (building, the set, the ``/v1/crl`` encodings) are in ``crl_values``. Entries are
built once per serial and passed whole to the builder's constructor: the chained
``add_revoked_certificate`` copies its list on every call (O(N^2): at 100,000 entries
about 9 s instead of 0.4 s).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.config import CaConfig
from s2s.ca.crl_values import (
    CrlSet,
    IssuerCrl,
    build_crl,
    key_id_of,
    revoked_entry,
)
from s2s.ca.keys import KeyEncryptionKey, SigningKey
from s2s.core.clock import Clock, utc
from s2s.core.errors import (
    Conflict,
    InvalidConfig,
    NotFound,
    S2SError,
    Unavailable,
)
from s2s.core.revocation import (
    RevocationKind,
    RevocationLookup,
    RevocationRecord,
    issuer_key_id,
)
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState

__all__ = [
    "CRL_NUMBER_KEY",
    "DEFAULT_CRL_VALIDITY",
    "CrlPublisher",
]

log = logging.getLogger(__name__)

DEFAULT_CRL_VALIDITY: Final = timedelta(hours=1)
CRL_NUMBER_KEY: Final = "crl.number.{authority_id}"
_THREAD_ABOVE: Final = 2000  # build larger CRLs off the event loop
_EMPTY_RETRY: Final = timedelta(seconds=30)  # no CRL could be built: try again after this
_CONCURRENT_LOOKUPS: Final = 32  # index reads in flight while learning new serials' issuers


@dataclass(frozen=True, slots=True)
class _Issuer:
    record: AuthorityRecord
    cert: x509.Certificate


class CrlPublisher:
    """Builds and holds the CRLs; :meth:`refresh` rebuilds them when revocations or issuers
    changed, or when the earliest nextUpdate is within ``validity / 2``."""

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        revocations: RevocationLookup,
        validity: timedelta = DEFAULT_CRL_VALIDITY,
    ) -> None:
        self._config = config
        self._store = store
        self._kek = kek
        self._clock = clock
        self._revocations = revocations
        self.validity = validity
        self._current = CrlSet()
        self._issuer_of: dict[int, str | None] = {}  # serial -> issuing authority id
        self._entries: dict[tuple[str, datetime, str], x509.RevokedCertificate] = {}
        self._keys: dict[str, SigningKey] = {}
        self._lock = asyncio.Lock()
        self._empty_retry: datetime | None = None

    @property
    def current(self) -> CrlSet:
        return self._current

    def next_refresh(self) -> datetime:
        """When the CRLs must be rebuilt at the latest (half their validity before nextUpdate)."""
        earliest = self._current.next_update()
        if earliest is None:  # never built, or no issuer could be signed for: retry in a while
            return self._empty_retry or utc(self._clock.now())
        return earliest - self.validity / 2

    async def cover(self, version: int) -> None:
        """Make sure the CRLs reflect revocation snapshot ``version`` (the feed calls this before
        answering, so a client that saw revision N in the feed then gets CRLs at least as new)."""
        if self._current.revocations_version == version:
            return
        try:
            await self.refresh()
        except S2SError as exc:  # the feed must not fail for a CRL: the revocation loop retries
            log.warning("crl.refresh_failed", extra={F.ERROR: str(exc)})

    async def refresh(self, *, force: bool = False) -> bool:
        """Rebuild when due; True if new CRLs were published."""
        async with self._lock:
            now = utc(self._clock.now())
            revoked = self._revocations.current()
            issuers = await self._issuers(now)
            ids = frozenset(i.record.id for i in issuers)
            unchanged = (
                revoked.version == self._current.revocations_version
                and ids == self._current.issuers
                and now < self.next_refresh()
            )
            if unchanged and not force:
                return False
            serials = [(int(r.value, 16), r) for r in revoked.records()
                       if r.kind is RevocationKind.SERIAL]  # fmt: skip
            await self._learn_issuers(serials, issuers)
            by_issuer: dict[str | None, list[RevocationRecord]] = {}
            for serial, record in serials:
                by_issuer.setdefault(self._issuer_of.get(serial), []).append(record)
            crls = [c for i in issuers if (c := await self._try_build(i, by_issuer, now))]
            if len(self._entries) > len(serials) or len(self._issuer_of) > len(serials):
                self._forget_except([r for _, r in serials])
            self._current = CrlSet(tuple(crls), revoked.version, ids)
            self._empty_retry = None if crls else now + _EMPTY_RETRY
            log.info("crl.published", extra={F.COUNT: len(crls), F.REVISION: revoked.version})
            return True

    async def _issuers(self, now: datetime) -> list[_Issuer]:
        out = []
        for record in await self._store.list_authorities():
            if record.kind is AuthorityKind.JWT or record.not_after <= now:
                continue
            if record.kind is AuthorityKind.X509_ROOT and record.state is AuthorityState.REVOKED:
                continue
            out.append(_Issuer(record, x509.load_der_x509_certificate(record.public_der)))
        return out

    async def _learn_issuers(
        self, serials: Iterable[tuple[int, RevocationRecord]], issuers: Sequence[_Issuer]
    ) -> None:
        """Fill ``_issuer_of`` for serials not seen before: the issuer a record names (its key
        id, when exactly one issuer has that key), else the serial's index record, else the CA
        certificates. Reads the index for those serials only, never the whole index: a big
        revocation costs O(its serials), not O(live certificates)."""
        unknown = [(s, r) for s, r in serials if s not in self._issuer_of]
        if not unknown:
            return
        cas = {i.cert.serial_number: i.record.issuer_id or _root_of(issuers) for i in issuers}
        keys: dict[str, list[str]] = {}
        for i in issuers:
            keys.setdefault(issuer_key_id(i.cert), []).append(i.record.id)
        lookup = []
        for serial, record in unknown:
            named = keys.get(record.issuer, [])
            if len(named) == 1:
                self._issuer_of[serial] = named[0]
            else:
                lookup.append(serial)
        for start in range(0, len(lookup), _CONCURRENT_LOOKUPS):
            chunk = lookup[start : start + _CONCURRENT_LOOKUPS]
            found = await asyncio.gather(*(self._indexed_issuer(s) for s in chunk))
            for serial, issuer_id in zip(chunk, found, strict=True):
                self._issuer_of[serial] = issuer_id or cas.get(serial)  # None: expired, pruned

    async def _indexed_issuer(self, serial: int) -> str | None:
        try:
            return (await self._store.get_issued(serial)).issuer_id
        except NotFound:
            return None

    async def _try_build(
        self, issuer: _Issuer, by_issuer: dict[str | None, list[RevocationRecord]], now: datetime
    ) -> IssuerCrl | None:
        try:
            return await self._build(issuer, by_issuer.get(issuer.record.id, []), now)
        except InvalidConfig as exc:  # a key this KEK cannot open: skip it, keep the others
            log.error(
                "crl.issuer_skipped", extra={F.AUTHORITY_ID: issuer.record.id, F.ERROR: str(exc)}
            )
            return None

    async def _build(
        self, issuer: _Issuer, mine: Sequence[RevocationRecord], now: datetime
    ) -> IssuerCrl:
        record = issuer.record
        entries = [self._entry(r) for r in mine]
        number = await self._next_number(record.id)
        key = self._key(record)
        this_update = now - self._config.backdate
        next_update = now + self.validity
        build = functools.partial(
            build_crl, issuer=issuer.cert, issuer_key=key, entries=entries, number=number,
            this_update=this_update, next_update=next_update,
        )  # fmt: skip
        crl = await asyncio.to_thread(build) if len(entries) > _THREAD_ABOVE else build()
        return IssuerCrl(
            authority_id=record.id,
            kind=record.kind,
            key_id=key_id_of(issuer.cert),
            number=number,
            this_update=this_update,
            next_update=next_update,
            entries=len(entries),
            der=crl.public_bytes(Encoding.DER),
        )

    def _entry(self, record: RevocationRecord) -> x509.RevokedCertificate:
        cache_key = (record.value, record.revoked_at, record.reason)
        entry = self._entries.get(cache_key)
        if entry is None:
            entry = self._entries[cache_key] = revoked_entry(record)
        return entry

    def _forget_except(self, serials: Sequence[RevocationRecord]) -> None:
        """Drop cached entries and issuers of serials no longer revoked (pruned records)."""
        keep = {(r.value, r.revoked_at, r.reason) for r in serials}
        self._entries = {k: v for k, v in self._entries.items() if k in keep}
        values = {int(r.value, 16) for r in serials}
        self._issuer_of = {k: v for k, v in self._issuer_of.items() if k in values}

    def _key(self, record: AuthorityRecord) -> SigningKey:
        key = self._keys.get(record.id)
        if key is None:
            key = self._keys[record.id] = self._kek.open_private_key(
                record.encrypted_key, authority_id=record.id
            )
        return key

    async def _next_number(self, authority_id: str) -> int:
        """The next cRLNumber of ``authority_id`` (compare-and-swap: it never goes back)."""
        key = CRL_NUMBER_KEY.format(authority_id=authority_id)
        for _ in range(16):
            raw = await self._store.get_state(key)
            number = (int(raw) if raw is not None and raw.isdigit() else 0) + 1
            try:
                await self._store.cas_state(key, raw, str(number))
            except Conflict:
                continue
            return number
        raise Unavailable(f"could not advance the CRL number of {authority_id} (contention)")


def _root_of(issuers: Sequence[_Issuer]) -> str:
    roots = [i.record.id for i in issuers if i.record.kind is AuthorityKind.X509_ROOT]
    return roots[-1] if roots else ""
