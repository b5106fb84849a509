"""Federated bundles: the trust bundles of other trust domains this CA hands to its agents.

They live in one store document (state key ``federation/bundles``) changed by compare-and-swap,
so both backends hold them and replicas agree. A change of any bundle's content (or a removal)
bumps :attr:`Topic.FEDERATED_BUNDLES` in the same transaction: agents' entries long-polls wait on
it and deliver the new bundle to workloads. A refresh that brings the same content only moves
``refreshed_at`` and wakes no one.

Bundles are kept per trust domain, never merged (SPIFFE_Federation.md 4.2); our own trust domain is
never a federated one. Writers: ``s2s-ca bundle set`` (source ``manual``) and the federation
refresher (source ``endpoint``, after it has checked the fetched document).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from s2s.ca.audit import AuditField, AuditLog
from s2s.ca.state_document import StateDocument
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import Clock, utc
from s2s.core.errors import InvalidRequest, NotFound
from s2s.core.spiffe_id import TrustDomain
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = [
    "BUNDLES_STATE",
    "MAX_FEDERATED_BYTES",
    "SOURCE_ENDPOINT",
    "SOURCE_MANUAL",
    "FederatedBundleRecord",
    "FederatedBundles",
]

BUNDLES_STATE: Final = "federation/bundles"
SOURCE_MANUAL: Final = "manual"
SOURCE_ENDPOINT: Final = "endpoint"
_SOURCES: Final = frozenset({SOURCE_MANUAL, SOURCE_ENDPOINT})
# The whole document is one store value; etcd refuses requests above 1.5 MiB by default.
MAX_FEDERATED_BYTES: Final = 1 << 20
_Doc = Mapping[TrustDomain, "FederatedBundleRecord"]


@dataclass(frozen=True, slots=True)
class FederatedBundleRecord:
    """The bundle of one foreign trust domain as this CA holds it."""

    bundle: Bundle
    source: str  # "manual" | "endpoint"
    updated_at: dt.datetime  # when the bundle content last changed
    refreshed_at: dt.datetime | None = None  # last successful fetch (endpoint), None for manual

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise InvalidRequest(
                f"a bundle source is one of {sorted(_SOURCES)}, not {self.source!r}"
            )
        object.__setattr__(self, "updated_at", utc(self.updated_at))
        if self.refreshed_at is not None:
            object.__setattr__(self, "refreshed_at", utc(self.refreshed_at))

    @property
    def trust_domain(self) -> TrustDomain:
        return self.bundle.trust_domain

    def to_json(self) -> dict[str, Any]:
        """What the store keeps and the admin API shows (the bundle as SPIFFE bundle JSON)."""
        return {
            "trust_domain": str(self.trust_domain),
            "bundle": self.bundle.encode().decode(),
            "source": self.source,
            "updated_at": self.updated_at.isoformat(),
            "refreshed_at": None if self.refreshed_at is None else self.refreshed_at.isoformat(),
        }

    @classmethod
    def from_json(cls, item: Any) -> FederatedBundleRecord:
        """Parse :meth:`to_json` output; :class:`InvalidRequest` says what is wrong."""
        try:
            td = TrustDomain.parse(item["trust_domain"])
            bundle = Bundle.decode(td, item["bundle"])
            refreshed = item.get("refreshed_at")
            return cls(
                bundle=bundle,
                source=item["source"],
                updated_at=dt.datetime.fromisoformat(item["updated_at"]),
                refreshed_at=None if refreshed is None else dt.datetime.fromisoformat(refreshed),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"a federated bundle record is malformed: {exc}") from exc


class FederatedBundles:
    """Read and change the federated bundles (one CAS document in the store)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        trust_domain: TrustDomain,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._td = trust_domain
        self._audit = audit
        self._doc = StateDocument[_Doc](
            store=store,
            key=BUNDLES_STATE,
            name="federated bundles",
            empty={},
            decode=_decode,
            encode=_encode,
            topic=Topic.FEDERATED_BUNDLES,
            max_bytes=MAX_FEDERATED_BYTES,
        )
        self._at_revision: tuple[int, _Doc] = (-1, {})

    # -- reads -------------------------------------------------------------------------------

    async def list(self) -> tuple[FederatedBundleRecord, ...]:
        """Every federated bundle, ordered by trust domain name."""
        _, doc = await self._doc.read()
        return tuple(sorted(doc.values(), key=lambda r: str(r.trust_domain)))

    async def get(self, trust_domain: TrustDomain) -> FederatedBundleRecord | None:
        """The record of ``trust_domain``, or None when we hold no bundle for it."""
        _, doc = await self._doc.read()
        return doc.get(trust_domain)

    async def bundle_set(
        self, only: Iterable[TrustDomain] | None = None, *, revision: int | None = None
    ) -> BundleSet:
        """The federated bundles (only those of ``only`` when given), keyed by trust domain.

        With ``revision`` (what :meth:`revision` returned just before) the document is read from
        the store only when that revision moved since the last such read: every content change
        bumps it, so the bundles read then are still the current ones (the entries long-poll
        asks on every answer)."""
        if revision is not None and self._at_revision[0] == revision:
            doc = self._at_revision[1]
        else:
            _, doc = await self._doc.read()
            if revision is not None:
                self._at_revision = (revision, doc)
        wanted = None if only is None else frozenset(only)
        return BundleSet({td: r.bundle for td, r in doc.items() if wanted is None or td in wanted})

    async def revision(self) -> int:
        """The store revision of the federated bundles; read it before :meth:`bundle_set`."""
        return await self._store.revision(Topic.FEDERATED_BUNDLES)

    async def wait_for_change(self, after: int, timeout: float) -> int:
        """The revision, as soon as it differs from ``after`` or after ``timeout`` seconds."""
        return await self._store.wait_for_change(Topic.FEDERATED_BUNDLES, after, timeout)

    # -- writes ------------------------------------------------------------------------------

    def check_foreign(self, trust_domain: TrustDomain) -> None:
        """:class:`InvalidRequest` when ``trust_domain`` is this CA's own."""
        if trust_domain == self._td:
            raise InvalidRequest(
                f"{trust_domain} is this CA's own trust domain: its bundle is not a federated one"
            )

    async def put(
        self, bundle: Bundle, *, source: str, refreshed: bool = False
    ) -> FederatedBundleRecord:
        """Store ``bundle`` for its trust domain (replacing what was there). ``refreshed`` marks
        a successful fetch (sets ``refreshed_at``). Our own trust domain is refused."""
        if not isinstance(bundle, Bundle):
            raise InvalidRequest("a federated bundle must be a Bundle")
        td = bundle.trust_domain
        self.check_foreign(td)
        if source not in _SOURCES:
            raise InvalidRequest(f"a bundle source is one of {sorted(_SOURCES)}, not {source!r}")
        now = utc(self._clock.now())

        def change(doc: _Doc) -> tuple[_Doc, tuple[FederatedBundleRecord, bool]]:
            old = doc.get(td)
            changed = old is None or old.bundle != bundle
            record = FederatedBundleRecord(
                bundle=bundle,
                source=source,
                updated_at=now if changed or old is None else old.updated_at,
                refreshed_at=now if refreshed else (None if old is None else old.refreshed_at),
            )
            return {**doc, td: record}, (record, changed)

        # only a content change wakes the agents' long-polls; a refresh moves refreshed_at alone
        record, changed = await self._doc.update(change, bump=lambda done: done[1])
        if changed:
            self._audited("federated_bundle.set", record)
        return record

    async def delete(self, trust_domain: TrustDomain) -> FederatedBundleRecord:
        """Remove the bundle of ``trust_domain`` (:class:`NotFound` if there is none)."""

        def drop(doc: _Doc) -> tuple[_Doc, FederatedBundleRecord]:
            if trust_domain not in doc:
                raise NotFound(f"no federated bundle for trust domain {trust_domain}")
            return {td: r for td, r in doc.items() if td != trust_domain}, doc[trust_domain]

        removed = await self._doc.update(drop)
        self._audited("federated_bundle.delete", removed, actor="admin")
        return removed

    # -- audit -------------------------------------------------------------------------------

    def _audited(
        self, action: str, record: FederatedBundleRecord, *, actor: str | None = None
    ) -> None:
        """One audit line per change: who (the refresher or an admin), the trust domain, the
        new sequence and where the bundle came from."""
        if actor is None:
            actor = "federation" if record.source == SOURCE_ENDPOINT else "admin"
        if self._audit is not None:
            self._audit.admin_change(
                action,
                target=str(record.trust_domain),
                actor=actor,
                details={
                    AuditField.BUNDLE_SEQUENCE: record.bundle.sequence,
                    AuditField.KIND: record.source,
                },
            )


def _decode(raw: str) -> _Doc:
    records = (FederatedBundleRecord.from_json(item) for item in json.loads(raw)["bundles"])
    return {record.trust_domain: record for record in records}


def _encode(doc: _Doc) -> str:
    body = [doc[td].to_json() for td in sorted(doc, key=str)]
    return json.dumps({"bundles": body}, sort_keys=True)
