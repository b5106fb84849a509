"""Federation relationships in the store: one document (state key ``federation/relationships``)
changed by compare-and-swap, so both backends hold them and replicas agree. Each record carries
the refresher's status (last attempt, last success, last error, next refresh), so any replica's
``s2s-ca federation show`` tells how old the bundle is and why the last fetch failed.

Creating an ``https_spiffe`` relationship to a self-serving endpoint needs a bundle to verify the
first connection with (``--bundle``, stored as a ``manual`` federated bundle, or one already
held); later fetches verify against the last bundle held (SPIFFE_Federation.md 5.2.2.4). Deleting a
relationship stops the polling and keeps the bundle (``s2s-ca bundle delete`` drops it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Final

from s2s.ca.audit import AuditLog
from s2s.ca.federated_bundles import SOURCE_MANUAL, FederatedBundles
from s2s.ca.state_document import StateDocument
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidRequest, NotFound
from s2s.core.federation import (
    EndpointProfile,
    FederationRelationship,
    RefreshStatus,
    check_endpoint_url,
)
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.base import Store

__all__ = ["MAX_RELATIONSHIPS", "RELATIONSHIPS_STATE", "FederationRelationships"]

RELATIONSHIPS_STATE: Final = "federation/relationships"
MAX_RELATIONSHIPS: Final = 1000
_Doc = Mapping[TrustDomain, FederationRelationship]
_UNSET: Final = object()


class FederationRelationships:
    """Create, read, update and delete federation relationships; record refresh results."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        trust_domain: TrustDomain,
        bundles: FederatedBundles,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._td = trust_domain
        self._bundles = bundles
        self._audit = audit
        self._listeners: list[Callable[[], None]] = []
        self._doc = StateDocument[_Doc](
            store=store,
            key=RELATIONSHIPS_STATE,
            name="federation relationships",
            empty={},
            decode=_decode,
            encode=_encode,
            on_write=self._notify,
        )

    @property
    def trust_domain(self) -> TrustDomain:
        return self._td

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change this object writes (the refresher wakes up for
        a new or changed relationship instead of at its next tick)."""
        self._listeners.append(listener)

    # -- reads -------------------------------------------------------------------------------

    async def list(self) -> tuple[FederationRelationship, ...]:
        _, doc = await self._doc.read()
        return tuple(sorted(doc.values(), key=lambda r: str(r.trust_domain)))

    async def find(self, trust_domain: TrustDomain) -> FederationRelationship | None:
        _, doc = await self._doc.read()
        return doc.get(trust_domain)

    async def get(self, trust_domain: TrustDomain) -> FederationRelationship:
        found = await self.find(trust_domain)
        if found is None:
            raise NotFound(f"no federation relationship with trust domain {trust_domain}")
        return found

    # -- writes ------------------------------------------------------------------------------

    async def create(
        self,
        trust_domain: TrustDomain,
        *,
        url: str,
        profile: EndpointProfile,
        endpoint_spiffe_id: SpiffeId | None = None,
        bundle: Bundle | None = None,
    ) -> FederationRelationship:
        """A new relationship; ``bundle`` (of ``trust_domain``) bootstraps https_spiffe."""
        if trust_domain == self._td:
            raise InvalidRequest(f"{trust_domain} is this CA's own trust domain")
        record = FederationRelationship.create(
            trust_domain, check_endpoint_url(url), profile, endpoint_spiffe_id,
            now=self._clock.now(),
        )  # fmt: skip
        if await self.find(trust_domain) is not None:
            raise Conflict(f"a federation relationship with {trust_domain} already exists")
        await self._bootstrap(record, bundle)

        def add(doc: _Doc) -> tuple[_Doc, None]:
            if trust_domain in doc:
                raise Conflict(f"a federation relationship with {trust_domain} already exists")
            if len(doc) >= MAX_RELATIONSHIPS:
                raise Conflict(f"at most {MAX_RELATIONSHIPS} federation relationships")
            return {**doc, trust_domain: record}, None

        await self._doc.update(add)
        self._audited("federation.create", record)
        return record

    async def update(
        self,
        trust_domain: TrustDomain,
        *,
        url: str | None = None,
        profile: EndpointProfile | None = None,
        endpoint_spiffe_id: SpiffeId | object | None = _UNSET,
        bundle: Bundle | None = None,
    ) -> FederationRelationship:
        """Change the endpoint of a relationship (and its bundle); the next refresh is at once."""
        current = await self.get(trust_domain)
        sid = current.endpoint_spiffe_id if endpoint_spiffe_id is _UNSET else endpoint_spiffe_id
        new_profile = profile or current.profile
        if new_profile is EndpointProfile.HTTPS_WEB and endpoint_spiffe_id is _UNSET:
            sid = None  # switching to https_web drops the SPIFFE ID
        assert sid is None or isinstance(sid, SpiffeId)
        now = utc(self._clock.now())
        changed = replace(
            current,
            bundle_endpoint_url=check_endpoint_url(url or current.bundle_endpoint_url),
            profile=new_profile,
            endpoint_spiffe_id=sid,
            updated_at=now,
        )
        await self._bootstrap(changed, bundle)

        def apply(doc: _Doc) -> tuple[_Doc, None]:
            if trust_domain not in doc:
                raise NotFound(f"no federation relationship with trust domain {trust_domain}")
            status = replace(doc[trust_domain].status, next_refresh_at=now)
            return {**doc, trust_domain: replace(changed, status=status)}, None

        await self._doc.update(apply)
        self._audited("federation.update", changed)
        return await self.get(trust_domain)

    async def delete(self, trust_domain: TrustDomain) -> FederationRelationship:
        """Stop polling ``trust_domain``'s endpoint; its bundle stays until ``bundle delete``."""

        def drop(doc: _Doc) -> tuple[_Doc, FederationRelationship]:
            if trust_domain not in doc:
                raise NotFound(f"no federation relationship with trust domain {trust_domain}")
            return {td: r for td, r in doc.items() if td != trust_domain}, doc[trust_domain]

        removed = await self._doc.update(drop)
        self._audited("federation.delete", removed)
        return removed

    async def record_status(
        self, relationship: FederationRelationship, status: RefreshStatus
    ) -> None:
        """Store a refresh result, unless the relationship was changed or deleted meanwhile."""
        td = relationship.trust_domain

        def apply(doc: _Doc) -> tuple[_Doc, None]:
            current = doc.get(td)
            if current is None or current.updated_at != relationship.updated_at:
                return doc, None
            return {**doc, td: replace(current, status=status)}, None

        await self._doc.update(apply)

    async def request_refresh(self, trust_domain: TrustDomain) -> None:
        """Make the relationship due now (the refresher of any replica picks it up)."""
        now = utc(self._clock.now())

        def apply(doc: _Doc) -> tuple[_Doc, None]:
            current = doc.get(trust_domain)
            if current is None:
                raise NotFound(f"no federation relationship with trust domain {trust_domain}")
            status = replace(current.status, next_refresh_at=now)
            return {**doc, trust_domain: replace(current, status=status)}, None

        await self._doc.update(apply)

    # -- helpers -----------------------------------------------------------------------------

    async def _bootstrap(self, record: FederationRelationship, bundle: Bundle | None) -> None:
        """Store the operator's bundle; refuse a self-serving https_spiffe endpoint without one."""
        td = record.trust_domain
        if bundle is not None:
            if bundle.trust_domain != td:
                raise InvalidRequest(f"the bundle is for {bundle.trust_domain}, not {td}")
            if not bundle.x509_authorities and record.profile is EndpointProfile.HTTPS_SPIFFE:
                raise InvalidRequest("the bundle has no X.509 authority to verify the endpoint")
            await self._bundles.put(bundle, source=SOURCE_MANUAL)
            return
        if record.self_serving and await self._bundles.get(td) is None:
            raise InvalidRequest(
                f"an https_spiffe endpoint of {td} is verified with {td}'s bundle: give the "
                "current bundle (--bundle FILE) to verify the first connection"
            )

    def _audited(self, action: str, record: FederationRelationship) -> None:
        if self._audit is not None:
            self._audit.admin_change(
                action, target=str(record.trust_domain), spiffe_id=record.endpoint_spiffe_id
            )

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


def _decode(raw: str) -> _Doc:
    records = (FederationRelationship.from_json(item) for item in json.loads(raw)["relationships"])
    return {record.trust_domain: record for record in records}


def _encode(doc: _Doc) -> str:
    body = [doc[td].to_json() for td in sorted(doc, key=str)]
    return json.dumps({"relationships": body}, sort_keys=True)
