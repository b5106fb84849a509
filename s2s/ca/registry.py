"""The registry: registration entries, single-use join tokens and attested agents.

Rules (issue 3, item 3): an entry's SPIFFE ID is in the trust domain, has a path, and is outside
the reserved ``/s2s/`` path; its parent is in the trust domain; TTLs are positive and at most the
configured cap. Join tokens are random, only their SHA-256 is stored, and consuming one is a
compare-and-swap that marks it used by the SHA-256 of the attesting key (the record stays until
the token expires, so that key alone may retry an attestation whose answer was lost). An agent
attested with a join token gets
``spiffe://<td>/s2s/agent/join_token/<id>`` where ``<id>`` is a random public id stored with the
token's hash, so the operator learns the agent ID (the parent ID of its entries) when the token is
generated. Every agent call is authorized against
the agent's record (:meth:`Registry.authorize_agent`). ``AgentRecord`` is the store's record
(``s2s.store.records``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Unpack

from s2s.ca.agent_seen import AgentSeen, SeenRecord
from s2s.ca.audit import AuditField, entry_details
from s2s.ca.registry_cache import EntryDelta, EntrySnapshot, RegistryCache
from s2s.ca.service import CaService, ServiceArgs
from s2s.core.b64 import b64url_encode
from s2s.core.clock import utc
from s2s.core.errors import (
    AttestationFailed,
    Conflict,
    InvalidRequest,
    NotAuthorized,
    NotFound,
    Revoked,
)
from s2s.core.registration import RegistrationEntry, new_entry_id
from s2s.core.reserved import RESERVED_PATH, is_reserved, join_token_agent_id
from s2s.core.selectors import Selector, validate_selector
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.records import AgentRecord, JoinTokenRecord, Topic

__all__ = [
    "AgentDetail",
    "JoinToken",
    "JoinTokenUse",
    "Registry",
    "agent_to_json",
]

JOIN_TOKEN_ATTESTATION = "join_token"  # noqa: S105 - a type name, not a secret
MAX_JOIN_TOKEN_TTL = timedelta(days=7)
_MAX_TOKEN_CHARS = 256
_USED_BY_ANOTHER_KEY = "was already used by another key"


@dataclass(frozen=True, slots=True)
class JoinTokenUse:
    """A join token accepted for a key: the agent ID it grants, and whether this is a retry by
    the key that used it first (an earlier attestation's answer was lost)."""

    agent_id: SpiffeId
    retry: bool


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A new join token. ``token`` is the secret: shown once, never stored or logged."""

    token: str
    agent_id: SpiffeId
    expires_at: datetime


class Registry(CaService):
    """Entries, join tokens and agents, validated and persisted in the store."""

    def __init__(self, **kwargs: Unpack[ServiceArgs]) -> None:
        super().__init__(**kwargs)
        self._cache = RegistryCache(self._store)
        self._seen = AgentSeen(store=self._store, clock=self._clock)

    @property
    def following(self) -> bool:
        """True while :meth:`follow` keeps loaded snapshots (reads make no store call)."""
        return self._cache.loaded

    async def follow(self, *, timeout: float = 30.0) -> None:
        """Keep in-memory snapshots of agents and entries current (run it in the app's
        TaskGroup; until then, and without it, every read goes to the store)."""
        await self._cache.follow(timeout=timeout)

    # -- entries ---------------------------------------------------------------------------

    async def create_entry(
        self,
        *,
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        selectors: Iterable[Selector],
        x509_svid_ttl: timedelta | None = None,
        jwt_svid_ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        hint: str = "",
        federates_with: Iterable[TrustDomain] = (),
    ) -> RegistrationEntry:
        """Validate and store a new entry (TTLs default to the config). :class:`InvalidRequest`."""
        entry = RegistrationEntry(
            id=new_entry_id(self._entropy(16)),
            spiffe_id=spiffe_id,
            parent_id=parent_id,
            selectors=_selector_set(selectors),
            x509_svid_ttl=self._config.x509_svid_ttl if x509_svid_ttl is None else x509_svid_ttl,
            jwt_svid_ttl=self._config.jwt_svid_ttl if jwt_svid_ttl is None else jwt_svid_ttl,
            dns_names=_names(dns_names),
            hint=hint,
            federates_with=_trust_domains(federates_with),
            created_at=utc(self._clock.now()),
        )
        self.check_entry(entry)
        stored = await self._store.create_entry(entry)
        self._cache.entry_written(stored)
        self._audit_entry("entry.create", stored)
        return stored

    async def update_entry(
        self,
        entry_id: str,
        *,
        expected_revision: int | None = None,
        spiffe_id: SpiffeId | None = None,
        parent_id: SpiffeId | None = None,
        selectors: Iterable[Selector] | None = None,
        x509_svid_ttl: timedelta | None = None,
        jwt_svid_ttl: timedelta | None = None,
        dns_names: Sequence[str] | None = None,
        hint: str | None = None,
        federates_with: Iterable[TrustDomain] | None = None,
    ) -> RegistrationEntry:
        """Change the given fields (None = keep). :class:`NotFound`, :class:`Conflict` on a
        stale ``expected_revision``, :class:`InvalidRequest` on bad values."""
        current = await self._store.get_entry(entry_id)
        if expected_revision is not None and expected_revision != current.revision:
            raise Conflict(
                f"entry {entry_id} is at revision {current.revision}, not {expected_revision}"
            )
        changes: dict[str, Any] = {
            "spiffe_id": spiffe_id,
            "parent_id": parent_id,
            "selectors": None if selectors is None else _selector_set(selectors),
            "x509_svid_ttl": x509_svid_ttl,
            "jwt_svid_ttl": jwt_svid_ttl,
            "dns_names": None if dns_names is None else _names(dns_names),
            "hint": hint,
            "federates_with": None if federates_with is None else _trust_domains(federates_with),
        }
        updated = dataclasses.replace(
            current, **{k: v for k, v in changes.items() if v is not None}
        )
        self.check_entry(updated)
        stored = await self._store.update_entry(updated, expected_revision=current.revision)
        self._cache.entry_written(stored)
        changed = sorted(k for k, v in changes.items() if v is not None)
        self._audit_entry("entry.update", stored, changed=changed)
        return stored

    async def delete_entry(self, entry_id: str) -> None:
        """Delete an entry; :class:`NotFound` if there is none."""
        deleted = await self._store.delete_entry(entry_id)
        self._cache.entry_deleted(entry_id)
        self._audit_entry("entry.delete", deleted)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        """One entry; :class:`NotFound` if unknown (from the snapshot when following)."""
        return await self._cache.get_entry(entry_id)

    async def list_entries(
        self,
        *,
        parent_id: SpiffeId | None = None,
        spiffe_id: SpiffeId | None = None,
        selectors: Iterable[Selector] = (),
        federates_with: Iterable[TrustDomain] = (),
    ) -> EntrySnapshot:
        """Entries with the entries revision; the filters combine (AND): this parent, this
        SPIFFE ID, every one of ``selectors`` among the entry's selectors, and every one of
        ``federates_with`` among the trust domains it federates with."""
        revision = await self._store.revision(Topic.ENTRIES)
        found = await self._store.list_entries(parent_id=parent_id, spiffe_id=spiffe_id)
        wanted = frozenset(selectors)
        if wanted:
            found = tuple(e for e in found if wanted <= e.selectors)
        tds = frozenset(federates_with)
        if tds:
            found = tuple(e for e in found if tds <= e.federates_with)
        return EntrySnapshot(found, revision)

    async def count_entries(self) -> int:
        """How many entries there are: the snapshot's size when following (no listing), else
        the store's listing."""
        count = self._cache.entry_count()
        return len(await self._store.list_entries()) if count is None else count

    async def has_entry_for(self, spiffe_id: SpiffeId) -> bool:
        """Whether any entry names ``spiffe_id`` (from the snapshot when following; the store
        otherwise, or when the snapshot has none)."""
        return await self._cache.has_entry_for(spiffe_id)

    async def entries_for_agent(
        self, agent_id: SpiffeId, *, exact_revision: bool = True
    ) -> EntrySnapshot:
        """Entries whose parent is ``agent_id``, with the entries revision. Callers that use
        only the entries (not the revision) pass ``exact_revision=False``: never a store read."""
        return await self._cache.entries_for_parent(agent_id, exact_revision=exact_revision)

    def entry_delta(self, agent_id: SpiffeId, since: int, revision: int) -> EntryDelta | None:
        """The agent's entries changed or removed after ``since`` up to ``revision`` (the
        revision of the entries just read for it), or None: send the full list."""
        return self._cache.entry_delta(agent_id, since, revision)

    async def wait_for_entries(self, after_revision: int, timeout: float) -> int:
        """Wait until the entries revision exceeds ``after_revision`` or ``timeout`` seconds pass;
        return the current revision (long-poll support)."""
        return await self._cache.wait_for_entries(after_revision, timeout)

    def check_entry(self, entry: RegistrationEntry) -> None:
        """The CA's policy for entries; :class:`InvalidRequest` says which rule failed."""
        td = self._config.trust_domain
        self.check_workload_id(entry.spiffe_id)
        if not entry.parent_id.is_member_of(td):
            raise InvalidRequest(f"parent ID {entry.parent_id} is not in trust domain {td}")
        if entry.parent_id == entry.spiffe_id:
            raise InvalidRequest("an entry cannot be its own parent")
        if td in entry.federates_with:
            raise InvalidRequest(
                f"an entry cannot federate with its own trust domain {td} (its bundle is always"
                " delivered)"
            )
        cap = self._config.max_svid_ttl
        for name in ("x509_svid_ttl", "jwt_svid_ttl"):
            ttl: timedelta = getattr(entry, name)
            if ttl > cap:
                raise InvalidRequest(
                    f"{name} of {_seconds(ttl)} is above the cap of {_seconds(cap)}"
                    " (the operator can raise the cap in the CA configuration)"
                )

    def check_workload_id(self, spiffe_id: SpiffeId) -> None:
        """A workload ID: in the trust domain, with a path, outside the reserved ``/s2s/``."""
        td = self._config.trust_domain
        if not isinstance(spiffe_id, SpiffeId):
            raise InvalidRequest("the SPIFFE ID must be parsed first")
        if not spiffe_id.is_member_of(td):
            raise InvalidRequest(f"SPIFFE ID {spiffe_id} is not in trust domain {td}")
        if spiffe_id.is_root():
            raise InvalidRequest(f"SPIFFE ID {spiffe_id} needs a path (a workload is not the TD)")
        if is_reserved(spiffe_id):
            raise InvalidRequest(
                f"SPIFFE ID {spiffe_id} is under the reserved path {RESERVED_PATH}/"
                " (used for agents and CA servers)"
            )

    def _audit_entry(
        self, action: str, entry: RegistrationEntry, *, changed: Sequence[str] = ()
    ) -> None:
        details = entry_details(entry)
        if changed:
            details[AuditField.CHANGED] = list(changed)
        self._audit.admin_change(
            action, target=entry.id, entry_id=entry.id, spiffe_id=entry.spiffe_id, details=details
        )

    # -- join tokens -----------------------------------------------------------------------

    async def generate_join_token(self, *, ttl: timedelta | None = None) -> JoinToken:
        """A new single-use join token (default TTL from the config, 10 min)."""
        ttl = self._config.join_token_ttl if ttl is None else ttl
        if not timedelta(0) < ttl <= MAX_JOIN_TOKEN_TTL:
            raise InvalidRequest(
                f"a join token TTL must be positive and at most {_seconds(MAX_JOIN_TOKEN_TTL)}"
            )
        token = b64url_encode(self._entropy(32))
        token_id = b64url_encode(self._entropy(16))
        now = utc(self._clock.now())
        record = JoinTokenRecord(
            id=token_id, token_hash=_token_hash(token), expires_at=now + ttl, created_at=now
        )
        await self._store.create_join_token(record)
        agent_id = join_token_agent_id(self._config.trust_domain, token_id)
        self._audit.admin_change(  # the token id and its agent; never the token
            "token.generate",
            target=token_id,
            agent_id=agent_id,
            details={AuditField.EXPIRES_AT: record.expires_at.isoformat()},
        )
        return JoinToken(token=token, agent_id=agent_id, expires_at=record.expires_at)

    async def consume_join_token(self, token: str, *, key_hash: bytes) -> JoinTokenUse:
        """Use ``token`` for the key whose SubjectPublicKeyInfo has SHA-256 ``key_hash`` (the
        CSR's signature proved the caller holds that key) and return the agent ID it grants.

        The first use marks the token used by that key (compare-and-swap). A later use by the
        same key within the token's lifetime is a retry (an attestation whose answer was lost);
        :class:`AttestationFailed` if the token is unknown, expired, or used by another key.
        """
        if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS:
            raise AttestationFailed("the join token is missing or malformed")
        try:
            record = await self._store.consume_join_token(
                _token_hash(token), now=utc(self._clock.now()), key_hash=key_hash
            )
        except NotFound as exc:
            raise AttestationFailed(str(exc)) from exc
        agent_id = join_token_agent_id(self._config.trust_domain, record.id)
        if record.used_by is None:
            return JoinTokenUse(agent_id, retry=False)
        if hmac.compare_digest(record.used_by, key_hash):
            return JoinTokenUse(agent_id, retry=True)
        self._audit.agent_refused(agent_id=agent_id, reason=_USED_BY_ANOTHER_KEY)
        raise AttestationFailed(f"the join token {_USED_BY_ANOTHER_KEY}")

    async def check_reattest_allowed(self, agent_id: SpiffeId) -> None:
        """Before a join token retry issues anything: :class:`Revoked` if the agent ID is
        revoked (by ID or as an agent), :class:`NotAuthorized` if the agent is banned."""
        if self._revocations.current().revoked_at(agent_id) is not None:
            raise Revoked(
                f"agent {agent_id} is revoked; it cannot attest again with its join token",
                spiffe_id=str(agent_id),
            )
        try:
            record = await self._store.get_agent(agent_id)
        except NotFound:
            return  # the first attempt never registered it
        if record.banned:
            raise NotAuthorized(f"agent {agent_id} is banned")

    # -- agents ----------------------------------------------------------------------------

    async def register_agent(
        self,
        agent_id: SpiffeId,
        *,
        serial: int,
        not_after: datetime,
        attestation_type: str = JOIN_TOKEN_ATTESTATION,
        again: bool = False,
    ) -> AgentRecord:
        """Create an agent's record; :class:`NotAuthorized` if one exists and is banned.

        ``again`` (a join token retry by the key that used the token) makes an existing record
        take the new SVID (compare-and-swap) instead of raising :class:`Conflict`.
        """
        now = utc(self._clock.now())
        record = AgentRecord(
            spiffe_id=agent_id,
            attestation_type=attestation_type,
            serial=serial,
            not_after=not_after,
            created_at=now,
            updated_at=now,
        )
        for _ in range(3):
            try:
                stored = await self._store.create_agent(record)
            except Conflict as exc:
                try:
                    existing = await self._store.get_agent(agent_id)
                except NotFound:
                    continue  # evicted meanwhile: create it again
                if existing.banned:
                    raise NotAuthorized(f"agent {agent_id} is banned") from None
                if not again:
                    raise exc from None
                updated = dataclasses.replace(
                    existing, serial=serial, next_serial=None, not_after=not_after, updated_at=now
                )
                try:
                    stored = await self._store.update_agent(
                        updated, expected_revision=existing.revision
                    )
                except (Conflict, NotFound):
                    continue  # it changed meanwhile: look again
            self._cache.agent_written(stored)
            return stored
        raise Conflict(f"agent {agent_id} kept changing while being registered; attest again")

    async def stage_agent_serial(
        self, agent: AgentRecord, *, next_serial: int, not_after: datetime
    ) -> AgentRecord:
        """Record a renewed agent SVID's serial as ``next_serial`` (compare-and-swap on the
        record the caller was authorized with; :class:`Conflict` if it changed)."""
        updated = dataclasses.replace(
            agent, next_serial=next_serial, not_after=not_after, updated_at=utc(self._clock.now())
        )
        stored = await self._store.update_agent(updated, expected_revision=agent.revision)
        self._cache.agent_written(stored)
        return stored

    async def authorize_agent(
        self, spiffe_id: SpiffeId, serial: int, *, issuer_serials: Sequence[int] = ()
    ) -> AgentRecord:
        """The agent's record if it may call the CA with the SVID of this serial, presented
        under CA certificates of ``issuer_serials`` (the verified chain above the leaf).

        ``serial == next_serial`` promotes it to ``serial``. :class:`NotAuthorized` for an unknown
        (evicted) agent, a banned one, or any other serial; :class:`Revoked` when that SVID, the
        agent, or a certificate of ``issuer_serials`` is revoked.
        """
        self.check_issuers_not_revoked(spiffe_id, issuer_serials)
        fresh = False  # the snapshot first; the store when it may be behind
        for _ in range(3):
            try:
                record = await self._cache.get_agent(spiffe_id, fresh=fresh)
            except NotFound:
                raise NotAuthorized(
                    f"agent {spiffe_id} is not attested (unknown or evicted); attest again"
                ) from None
            if record.banned:
                raise NotAuthorized(f"agent {spiffe_id} is banned")
            if serial not in (record.serial, record.next_serial):
                if not fresh:
                    fresh = True  # another replica may have renewed it: ask the store
                    continue
                raise NotAuthorized(
                    f"the SVID serial {serial:x} is not the current SVID of agent {spiffe_id}"
                )
            await self.check_agent_not_revoked(record, serial)
            if serial == record.serial:
                return record
            promoted = dataclasses.replace(
                record, serial=serial, next_serial=None, updated_at=utc(self._clock.now())
            )
            try:
                stored = await self._store.update_agent(promoted, expected_revision=record.revision)
            except Conflict:
                fresh = True  # a concurrent call promoted or changed it: re-read
                continue
            self._cache.agent_written(stored)
            return stored
        raise NotAuthorized(f"agent {spiffe_id} changed while being authorized; retry")

    def check_issuers_not_revoked(self, spiffe_id: SpiffeId, serials: Sequence[int]) -> None:
        """:class:`Revoked` if a CA certificate of the chain an agent presented is revoked by
        serial (revoking an intermediate cuts off everything it signed)."""
        revoked = self._revocations.current()
        for issuer in serials:
            if revoked.is_serial_revoked_by_any_issuer(issuer):
                raise Revoked(
                    f"the CA certificate {issuer:x} that issued the SVID of agent {spiffe_id} "
                    "is revoked; attest again",
                    serial=issuer,
                )

    async def check_agent_not_revoked(self, agent: AgentRecord, serial: int | None = None) -> None:
        """:class:`Revoked` if the agent SVID ``serial`` (default: the current one) is revoked,
        by serial or by the agent's SPIFFE ID (a revocation by agent covers both)."""
        serial = agent.serial if serial is None else serial
        revoked = self._revocations.current()
        if revoked.is_serial_revoked_by_any_issuer(serial):
            raise Revoked(f"the SVID of agent {agent.spiffe_id} is revoked", serial=serial)
        # Cheap test first: nothing revoked after the agent attested means its SVIDs are fine.
        if not revoked.is_spiffe_id_revoked(agent.spiffe_id, agent.created_at):
            return
        try:
            issued_at = (await self._store.get_issued(serial)).issued_at
        except NotFound:
            issued_at = agent.created_at
        if revoked.is_spiffe_id_revoked(agent.spiffe_id, issued_at):
            raise Revoked(f"agent {agent.spiffe_id} is revoked", spiffe_id=str(agent.spiffe_id))

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        """One agent; :class:`NotFound` if unknown."""
        return await self._store.get_agent(spiffe_id)

    async def list_agents(
        self,
        *,
        attestation_type: str | None = None,
        banned: bool | None = None,
        expires_before: datetime | None = None,
    ) -> tuple[AgentRecord, ...]:
        """Attested agents, ordered by SPIFFE ID; the filters combine (AND): attested this way,
        banned or not, SVID expiring before a time."""
        return tuple(
            a
            for a in await self._store.list_agents()
            if (attestation_type is None or a.attestation_type == attestation_type)
            and (banned is None or a.banned == banned)
            and (expires_before is None or a.not_after < expires_before)
        )

    async def agent_detail(self, spiffe_id: SpiffeId) -> AgentDetail:
        """One agent with how many entries it serves and its last call; :class:`NotFound`."""
        record = await self._store.get_agent(spiffe_id)
        entries = await self._store.list_entries(parent_id=spiffe_id)
        return AgentDetail(record, len(entries), await self._seen.last_seen(spiffe_id))

    async def agent_called(self, agent: AgentRecord, address: str | None) -> None:
        """An authorized agent called from ``address`` (recorded at most once a minute)."""
        await self._seen.saw(agent.spiffe_id, address)

    async def evict_agent(self, spiffe_id: SpiffeId) -> None:
        """Forget an agent: its SVID stops working at once; it may re-attest with a new token
        (or, until its join token expires, with that token and the key that first used it: ban
        it to keep it out)."""
        await self._store.delete_agent(spiffe_id)
        self._cache.agent_deleted(spiffe_id)
        await self._seen.forget(spiffe_id)
        self._audit.admin_change("agent.evict", target=str(spiffe_id), agent_id=spiffe_id)

    async def record_bundle_sequence(self, agent: AgentRecord, sequence: int) -> AgentRecord:
        """Record the trust bundle sequence an agent reported holding (root rotation waits for
        it); written only when it changed, compare-and-swap retried on a fresher record."""
        for _ in range(3):
            if agent.bundle_sequence == sequence:
                return agent
            updated = dataclasses.replace(agent, bundle_sequence=sequence)
            try:
                stored = await self._store.update_agent(updated, expected_revision=agent.revision)
            except Conflict:
                agent = await self._store.get_agent(agent.spiffe_id)  # NotFound: evicted
                continue
            self._cache.agent_written(stored)
            return stored
        raise Conflict(f"agent {agent.spiffe_id} kept changing; its report was not recorded")

    async def ban_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        """Ban an agent: every call is refused and it cannot re-attest under this ID."""
        for _ in range(3):
            record = await self._store.get_agent(spiffe_id)
            if record.banned:
                return record
            banned = dataclasses.replace(record, banned=True, updated_at=utc(self._clock.now()))
            try:
                stored = await self._store.update_agent(banned, expected_revision=record.revision)
            except Conflict:
                continue
            self._cache.agent_written(stored)
            self._audit.admin_change("agent.ban", target=str(spiffe_id), agent_id=spiffe_id)
            return stored
        raise Conflict(f"agent {spiffe_id} kept changing; retry the ban")


@dataclass(frozen=True, slots=True)
class AgentDetail:
    """``s2s-ca agent show``: the record, the entries it is the parent of, its last call."""

    record: AgentRecord
    entries: int
    seen: SeenRecord | None

    def to_json(self) -> dict[str, Any]:
        out = agent_to_json(self.record)
        out["entries"] = self.entries
        out["first_seen"] = self.record.created_at.isoformat()
        out["last_seen"] = None if self.seen is None else self.seen.last_seen.isoformat()
        out["address"] = None if self.seen is None else self.seen.address
        return out


def agent_to_json(agent: AgentRecord) -> dict[str, Any]:
    """An agent record as JSON for the admin API (serials in lowercase hex)."""
    return {
        "spiffe_id": str(agent.spiffe_id),
        "attestation_type": agent.attestation_type,
        "serial": format(agent.serial, "x"),
        "next_serial": None if agent.next_serial is None else format(agent.next_serial, "x"),
        "not_after": agent.not_after.isoformat(),
        "created_at": agent.created_at.isoformat(),
        "updated_at": agent.updated_at.isoformat(),
        "banned": agent.banned,
        "bundle_sequence": agent.bundle_sequence,
    }


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _seconds(ttl: timedelta) -> str:
    return f"{int(ttl.total_seconds())}s"


def _selector_set(selectors: Iterable[Selector]) -> frozenset[Selector]:
    if isinstance(selectors, str):
        raise InvalidRequest("selectors must be a collection of selectors, not one string")
    out = frozenset(selectors)
    if not all(isinstance(s, Selector) for s in out):
        raise InvalidRequest("selectors must be parsed Selector values")
    for selector in sorted(out):  # a selector no attestor produces would never match
        validate_selector(selector)
    return out


def _trust_domains(tds: Iterable[TrustDomain]) -> frozenset[TrustDomain]:
    if isinstance(tds, str):
        raise InvalidRequest("federates_with must be a collection of trust domains, not one string")
    return frozenset(tds)


def _names(dns_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(dns_names, str):
        raise InvalidRequest("dns_names must be a sequence of names, not one string")
    return tuple(dns_names)
