"""Revocation at the CA: ``s2s-ca revoke`` by serial, SPIFFE ID, JWT ``jti`` or agent.

An ID or agent revocation is expanded here into one serial record per
unexpired certificate, read from the issued-serial index, because a certificate's notBefore is
backdated and cannot tell a verifier whether it was issued before the revocation. The SPIFFE ID
record (``revoked_at`` = now) still covers JWT-SVIDs, whose ``iat`` is not backdated. Every
record lives until the newest credential it covers has expired, plus skew (the larger of the
backdate and the verifiers' maximum JWT leeway). Each record is committed to the store before the
call returns; a store failure raises :class:`StoreError` and nothing is reported done (records
already written stay: revoking again is idempotent).

:class:`LiveRevocations` (``live_revocations``) is the CA's own :class:`RevocationLookup`; the
target kinds and results are in ``revocation_targets``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta

from cryptography import x509

from s2s.ca.audit import AuditField, AuditLog
from s2s.ca.config import CaConfig
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.registry import Registry
from s2s.ca.revocation_targets import RevocationResult, RevokeTarget, parse_serial
from s2s.core.clock import Clock, utc
from s2s.core.errors import InvalidRequest, InvalidSpiffeId, NotFound, S2SError
from s2s.core.jwtsvid import MAX_LEEWAY
from s2s.core.reserved import JOIN_TOKEN_AGENT_PATH_PREFIX
from s2s.core.revocation import (
    RevocationRecord,
    RevocationSet,
    issuer_key_id,
    serial_value,
)
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState, IssuedSerial

__all__ = [
    "RevocationService",
]

log = logging.getLogger(__name__)

_CONCURRENT_WRITES = 32  # serial records of one ID/agent revocation written at a time


class RevocationService:
    """Writes revocation records (durably, before returning) and keeps the live set current."""

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        registry: Registry,
        live: LiveRevocations,
        clock: Clock,
        audit: AuditLog | None = None,
        on_change: Callable[[], Awaitable[object]] | None = None,
        on_authority_revoked: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._live = live
        self._clock = clock
        self._audit = audit if audit is not None else AuditLog()
        self._on_change = on_change
        self._on_authority_revoked = on_authority_revoked  # e.g. rotate now (app.py)
        self.skew = max(config.backdate, MAX_LEEWAY)
        self._issuer_key_cache: dict[str, str] = {}  # authority id -> issuer_key_id (immutable)

    @property
    def live(self) -> LiveRevocations:
        return self._live

    async def revoke(
        self, target: RevokeTarget | str, value: str, *, reason: str = ""
    ) -> RevocationResult:
        """Parse ``value`` for ``target`` and revoke it (the admin API's entry point)."""
        try:
            kind = RevokeTarget(target)
        except ValueError:
            raise InvalidRequest(
                f"cannot revoke by {target!r}; use serial, spiffe_id, jti or agent"
            ) from None
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"give the {kind} to revoke")
        if kind is RevokeTarget.SERIAL:
            return await self.revoke_serial(parse_serial(value), reason=reason)
        if kind is RevokeTarget.JTI:
            return await self.revoke_jti(value, reason=reason)
        spiffe_id = _parse_id(value)
        if kind is RevokeTarget.AGENT:
            return await self.revoke_agent(spiffe_id, reason=reason)
        return await self.revoke_spiffe_id(spiffe_id, reason=reason)

    # -- by serial -----------------------------------------------------------------------------

    async def revoke_serial(self, serial: int, *, reason: str = "") -> RevocationResult:
        """Revoke one certificate the CA issued (a leaf or an intermediate; not a root).

        :class:`NotFound` when the serial is neither in the issued-serial index nor one of the
        trust domain's CA certificates (it was never issued here), or it has expired (its
        ``notAfter`` plus the skew has passed: a record would be born expired).
        Revoking an intermediate also marks its authority revoked, so the CA stops signing with it.
        """
        now = utc(self._clock.now())
        issued = await self._find_issued(serial)
        if issued is not None and issued.not_after + self.skew <= now:
            issued = None  # expired: its record may outlive it (etcd drops it with its lease)
        authority = None if issued is not None else await self._find_authority(serial)
        if issued is not None:
            not_after, spiffe_id, issuer_authority = (
                issued.not_after,
                issued.spiffe_id,
                issued.issuer_id,
            )
        elif authority is not None:
            not_after, spiffe_id, issuer_authority = authority.not_after, None, authority.issuer_id
        else:
            raise NotFound(
                f"serial {serial_value(serial)} was not issued by this CA, or it has expired"
                " (check `s2s-ca revocations list` and the audit log)"
            )
        if authority is not None and authority.kind is AuthorityKind.X509_ROOT:
            raise InvalidRequest(
                f"serial {serial_value(serial)} is a root certificate: roots leave the trust"
                " bundle by rotation (s2s-ca rotate-root), not by revocation"
            )
        record, already = await self._write_once(
            RevocationRecord.for_serial(
                serial, revoked_at=now, expires_at=not_after + self.skew, reason=reason,
                issuer=(await self._issuer_keys()).get(issuer_authority, ""),
            )
        )  # fmt: skip
        if authority is not None:
            await self._retire_authority(authority)
        self._audit_line(
            RevokeTarget.SERIAL, record.value, spiffe_id=spiffe_id, count=1, reason=reason
        )
        await self._changed()
        return RevocationResult(
            RevokeTarget.SERIAL, record.value, (record,), int(not already), already
        )

    async def _find_issued(self, serial: int) -> IssuedSerial | None:
        try:
            return await self._store.get_issued(serial)
        except NotFound:
            return None

    async def _issuer_keys(self) -> dict[str, str]:
        """Authority id -> the key id serial records name their issuer by (``issuer_key_id``)."""
        known = self._issuer_key_cache
        for record in await self._store.list_authorities():
            if record.kind is not AuthorityKind.JWT and record.id not in known:
                cert = x509.load_der_x509_certificate(record.public_der)
                known[record.id] = issuer_key_id(cert)
        return known

    async def _find_authority(self, serial: int) -> AuthorityRecord | None:
        for record in await self._store.list_authorities():
            if record.kind is AuthorityKind.JWT:
                continue
            if x509.load_der_x509_certificate(record.public_der).serial_number == serial:
                return record
        return None

    async def _retire_authority(self, authority: AuthorityRecord) -> None:
        """A revoked intermediate must not sign again: mark it revoked, then let the app
        activate a fresh one (``on_authority_revoked``; other replicas follow the store)."""
        current = await self._store.get_authority(authority.id)
        if current.state is not AuthorityState.REVOKED:
            await self._store.cas_authority_state(current.id, current.state, AuthorityState.REVOKED)
            log.warning("revocation.authority_revoked", extra={F.AUTHORITY_ID: authority.id})
        if self._on_authority_revoked is not None:
            await self._on_authority_revoked()

    # -- by JWT id -----------------------------------------------------------------------------

    async def revoke_jti(self, jti: str, *, reason: str = "") -> RevocationResult:
        """Revoke one JWT-SVID by ``jti``. JWT-SVIDs are not indexed, so the record lives for
        the longest lifetime a JWT-SVID can have (the TTL cap) plus skew."""
        now = utc(self._clock.now())
        record, already = await self._write_once(
            RevocationRecord.for_jti(
                jti, revoked_at=now, expires_at=now + self._longest_jwt() + self.skew, reason=reason
            )
        )
        self._audit_line(RevokeTarget.JTI, jti, count=1, reason=reason)
        await self._changed()
        return RevocationResult(RevokeTarget.JTI, jti, (record,), int(not already), already)

    # -- by SPIFFE ID or agent -----------------------------------------------------------------

    async def revoke_spiffe_id(self, spiffe_id: SpiffeId, *, reason: str = "") -> RevocationResult:
        """Revoke everything issued to ``spiffe_id`` until now: a SPIFFE ID record (for JWT-SVIDs)
        and a serial record per unexpired certificate. Credentials issued later are valid.

        :class:`InvalidRequest` outside the trust domain; :class:`NotFound` when the CA knows
        nothing of the ID (no unexpired certificate, no registration entry, no agent).
        """
        self._check_member(spiffe_id)
        now = utc(self._clock.now())
        issued = self._unexpired(await self._store.list_issued(spiffe_id=spiffe_id), now)
        if not issued and not await self._known_id(spiffe_id):
            raise NotFound(
                f"the CA knows nothing of {spiffe_id}: no unexpired certificate, registration"
                " entry or agent has this ID"
            )
        return await self._revoke_identity(RevokeTarget.SPIFFE_ID, spiffe_id, issued, now, reason)

    async def revoke_agent(self, agent_id: SpiffeId, *, reason: str = "") -> RevocationResult:
        """Revoke an agent: its own SVIDs and every SVID it obtained, and ban it.

        :class:`InvalidRequest` for an ID that is not an agent's; :class:`NotFound` for an agent
        the CA does not know (no record, no unexpired SVID).
        """
        self._check_member(agent_id)
        if not agent_id.path.startswith(JOIN_TOKEN_AGENT_PATH_PREFIX):
            raise InvalidRequest(
                f"{agent_id} is not an agent ID (agents: {JOIN_TOKEN_AGENT_PATH_PREFIX})"
            )
        now = utc(self._clock.now())
        own = self._unexpired(await self._store.list_issued(spiffe_id=agent_id), now)
        try:
            agent = await self._store.get_agent(agent_id)
        except NotFound:
            agent = None
        if agent is None and not own:
            raise NotFound(f"no agent {agent_id} is known to this CA (never attested, or gone)")
        return await self._revoke_identity(
            RevokeTarget.AGENT, agent_id, own, now, reason, ban=agent is not None
        )

    async def _revoke_identity(
        self,
        target: RevokeTarget,
        spiffe_id: SpiffeId,
        issued: list[IssuedSerial],
        now: datetime,
        reason: str,
        *,
        ban: bool = False,
    ) -> RevocationResult:
        """The ID record first (the CA refuses the ID's old credentials at once), then for an
        agent the ban, then the serials, listed again after the record is stored: issuance
        indexes before it re-reads the revocations (``Issuer._withdraw_revoked``), so a
        certificate signed concurrently is listed here or withdrawn there, never missed."""
        main = self._id_record(spiffe_id, issued, now, reason)
        previous = await self._existing(main)
        changed = int(await self._store.add_revocation(main))
        await self._live.refresh()
        if ban:
            await self._registry.ban_agent(spiffe_id)
        relisted = [*issued, *await self._store.list_issued(spiffe_id=spiffe_id)]
        if target is RevokeTarget.AGENT:
            relisted += await self._store.list_issued(agent_id=spiffe_id)
        issued = self._unexpired(relisted, now)
        records, count = await self._serial_records(issued, now, reason)
        agent_id = spiffe_id if target is RevokeTarget.AGENT else None
        self._audit_line(target, str(spiffe_id), spiffe_id=spiffe_id, agent_id=agent_id,
                         count=1 + len(records), reason=reason)  # fmt: skip
        await self._changed()
        return RevocationResult(target, str(spiffe_id), (main, *records), changed + count,
                                previous, banned=ban)  # fmt: skip

    async def _known_id(self, spiffe_id: SpiffeId) -> bool:
        if await self._registry.has_entry_for(spiffe_id):  # not a listing of every entry (etcd)
            return True
        try:
            await self._store.get_agent(spiffe_id)
        except NotFound:
            return False
        return True

    def _id_record(
        self, spiffe_id: SpiffeId, issued: Iterable[IssuedSerial], now: datetime, reason: str
    ) -> RevocationRecord:
        newest = max((i.not_after for i in issued), default=now)
        expires_at = max(newest, now + self._longest_jwt()) + self.skew
        return RevocationRecord.for_spiffe_id(
            spiffe_id, revoked_at=now, expires_at=expires_at, reason=reason
        )

    # -- listing -------------------------------------------------------------------------------

    async def list_records(self) -> RevocationSet:
        """The current revocation set, re-read from the store if it moved."""
        return await self._live.refresh()

    # -- helpers -------------------------------------------------------------------------------

    def _longest_jwt(self) -> timedelta:
        return max(self._config.max_svid_ttl, self._config.jwt_svid_ttl)

    def _check_member(self, spiffe_id: SpiffeId) -> None:
        td = self._config.trust_domain
        if not spiffe_id.is_member_of(td):
            raise InvalidRequest(
                f"{spiffe_id} is not in trust domain {td}; this CA issued it nothing"
            )

    @staticmethod
    def _unexpired(issued: Iterable[IssuedSerial], now: datetime) -> list[IssuedSerial]:
        unique = {i.serial: i for i in issued if i.not_after > now and i.issued_at <= now}
        return [unique[s] for s in sorted(unique)]

    async def _existing(self, record: RevocationRecord) -> bool:
        try:
            await self._store.get_revocation(record.kind, record.value)
        except NotFound:
            return False
        return True

    async def _write_once(self, record: RevocationRecord) -> tuple[RevocationRecord, bool]:
        """Store ``record`` unless one exists for its (kind, value): a stored record keeps its
        first ``revoked_at``. Returns (the stored record, whether it existed before)."""
        try:
            return await self._store.get_revocation(record.kind, record.value), True
        except NotFound:
            await self._store.add_revocation(record)
            return record, False

    async def _serial_records(
        self, issued: Iterable[IssuedSerial], now: datetime, reason: str
    ) -> tuple[list[RevocationRecord], int]:
        keys = await self._issuer_keys()
        records = [
            RevocationRecord.for_serial(
                i.serial, revoked_at=now, expires_at=i.not_after + self.skew, reason=reason,
                issuer=keys.get(i.issuer_id, ""),
            )
            for i in issued
        ]  # fmt: skip
        current = self._live.current()  # O(1) a serial, not a listing of the whole set
        pending = [
            r for r in records if not current.is_serial_revoked_by_any_issuer(int(r.value, 16))
        ]
        written = 0
        for start in range(0, len(pending), _CONCURRENT_WRITES):  # etcd: round trips overlap
            chunk = pending[start : start + _CONCURRENT_WRITES]
            written += sum(await asyncio.gather(*(self._store.add_revocation(r) for r in chunk)))
        return records, written

    def _audit_line(
        self,
        target: RevokeTarget,
        value: str,
        *,
        count: int,
        reason: str,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
    ) -> None:
        self._audit.admin_change(
            f"revoke.{target}",
            target=value,
            spiffe_id=spiffe_id,
            agent_id=agent_id,
            details={AuditField.REASON: reason, AuditField.COUNT: count},
        )
        log.info("revocation.added", extra={F.KIND: str(target), F.COUNT: count})

    async def _changed(self) -> None:
        await self._live.refresh()
        if self._on_change is None:
            return
        try:
            await self._on_change()  # CRLs: the records are durable already; the CRL loop retries
        except S2SError as exc:
            log.warning("revocation.crl_refresh_failed", extra={F.ERROR: str(exc)})


def _parse_id(value: str) -> SpiffeId:
    try:
        return SpiffeId.parse(value)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(str(exc)) from None
