"""Authority lifecycle: prepare, activate, taint and revoke intermediates and JWT keys.

SPIRE's ``localauthority`` rules (``spire-server localauthority x509|jwt ...``): only a prepared
authority can be activated (the active one it replaces becomes old); the active authority cannot
be tainted, only an old one can; only a tainted one can be revoked. Tainting tells agents to
re-issue, at once, every SVID whose chain holds that intermediate (and to drop cached JWT-SVIDs
signed by that key): see :meth:`AuthorityLifecycle.tainted`, published in the agents' entries
long-poll. Revoking an intermediate revokes its serial through the revocation service (CRLs,
feeds) and takes it out of use; revoking a JWT key removes it from the bundle, so every token it
signed stops verifying.

Every authority belongs to one replica (``owner``); the replica serving the admin call applies
a change at once, others pick it up on their next authority check (they watch the store).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from s2s.ca.audit import AuditLog
from s2s.ca.authority import Authority
from s2s.ca.revocations import RevocationService
from s2s.ca.signers import AuthorityInfo
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidRequest, NotFound, Unavailable
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState, Topic

__all__ = ["AuthorityLifecycle", "LifecycleKind", "TaintedAuthorities"]

log = logging.getLogger(__name__)


class LifecycleKind(StrEnum):
    """What ``s2s-ca authority ... --kind`` names."""

    X509 = "x509"
    JWT = "jwt"

    @property
    def store_kind(self) -> AuthorityKind:
        return AuthorityKind.X509_INTERMEDIATE if self is LifecycleKind.X509 else AuthorityKind.JWT


@dataclass(frozen=True, slots=True)
class TaintedAuthorities:
    """Authorities agents must stop relying on, as of the store's ``revision`` of authorities.

    ``x509``: key ids (hex SKI, the authority ids) of tainted or revoked intermediates; ``jwt``:
    kids of tainted or revoked JWT keys.
    """

    revision: int
    x509: frozenset[str] = frozenset()
    jwt: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, list[str]]:
        return {"x509": sorted(self.x509), "jwt": sorted(self.jwt)}


_DISTRUSTED = frozenset({AuthorityState.TAINTED, AuthorityState.REVOKED})


class AuthorityLifecycle:
    """The admin operations on intermediates and JWT keys (``s2s-ca authority``)."""

    def __init__(
        self,
        *,
        authority: Authority,
        store: Store,
        clock: Clock,
        replica_name: str,
        revocations: RevocationService | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._authority = authority
        self._store = store
        self._clock = clock
        self._replica = replica_name
        self._revocations = revocations
        self._audit = audit if audit is not None else AuditLog()
        self._tainted: TaintedAuthorities | None = None

    async def list(self, kind: LifecycleKind | None = None) -> tuple[AuthorityInfo, ...]:
        """Every authority (all replicas); only intermediates or JWT keys with ``kind``."""
        found = await self._authority.list_authorities()
        if kind is None:
            return found
        return tuple(a for a in found if a.kind is kind.store_kind)

    async def prepare(self, kind: LifecycleKind) -> AuthorityInfo:
        """A new prepared authority for this replica (a JWT key joins the bundle at once)."""
        record = await self._authority.prepare(kind.store_kind)
        self._audit.admin_change(f"authority.{kind.value}.prepare", target=record.id)
        return AuthorityInfo.from_record(record)

    async def activate(self, kind: LifecycleKind, authority_id: str | None) -> AuthorityInfo:
        """Make a prepared authority the active one; the active one of its owner becomes old."""
        record = await self._pick(kind, authority_id, AuthorityState.PREPARED, "activate")
        now = utc(self._clock.now())
        if record.not_after <= now:
            raise InvalidRequest(f"authority {record.id} expired; prepare a new one")
        root = self._authority.root
        if kind is LifecycleKind.X509 and record.issuer_id != _root_id(root):
            raise InvalidRequest(
                f"intermediate {record.id} was signed by a root that is no longer active;"
                " prepare a new one"
            )
        previous = [
            r
            for r in await self._owned(record)
            if r.state is AuthorityState.ACTIVE and r.id != record.id
        ]
        activated = await self._move(record, AuthorityState.PREPARED, AuthorityState.ACTIVE)
        for old in previous:
            await self._move(old, AuthorityState.ACTIVE, AuthorityState.OLD, tolerate=True)
        self._audit.admin_change(f"authority.{kind.value}.activate", target=record.id)
        await self._apply(record)
        return AuthorityInfo.from_record(activated)

    async def taint(self, kind: LifecycleKind, authority_id: str | None) -> AuthorityInfo:
        """Mark an old authority tainted: agents re-issue what it signed at once."""
        record = await self._pick(kind, authority_id, AuthorityState.OLD, "taint")
        tainted = await self._move(record, AuthorityState.OLD, AuthorityState.TAINTED)
        self._audit.admin_change(f"authority.{kind.value}.taint", target=record.id)
        log.warning("authority.tainted", extra={F.AUTHORITY_ID: record.id, F.KIND: kind.value})
        await self._authority.refresh_bundle()
        return AuthorityInfo.from_record(tainted)

    async def revoke(self, kind: LifecycleKind, authority_id: str | None) -> AuthorityInfo:
        """Revoke a tainted authority: an intermediate's serial is revoked (CRLs, feeds) and
        it leaves use; a JWT key leaves the bundle."""
        record = await self._pick(kind, authority_id, AuthorityState.TAINTED, "revoke")
        if kind is LifecycleKind.X509:
            if self._revocations is None:
                raise Unavailable("this CA has no revocation service")
            serial = x509.load_der_x509_certificate(record.public_der).serial_number
            await self._revocations.revoke_serial(serial, reason="authority revoked")
        await self._move(record, AuthorityState.TAINTED, AuthorityState.REVOKED, tolerate=True)
        self._audit.admin_change(f"authority.{kind.value}.revoke", target=record.id)
        log.warning("authority.revoked", extra={F.AUTHORITY_ID: record.id, F.KIND: kind.value})
        await self._authority.refresh_bundle()
        return AuthorityInfo.from_record(await self._store.get_authority(record.id))

    async def tainted(self) -> TaintedAuthorities:
        """Tainted and revoked (unexpired) intermediates and JWT keys; cached per revision."""
        revision = await self._store.revision(Topic.AUTHORITIES)
        cached = self._tainted
        if cached is not None and cached.revision == revision:
            return cached
        now = utc(self._clock.now())
        records = [
            r
            for r in await self._store.list_authorities()
            if r.state in _DISTRUSTED and r.not_after > now
        ]
        view = TaintedAuthorities(
            revision=revision,
            x509=frozenset(r.id for r in records if r.kind is AuthorityKind.X509_INTERMEDIATE),
            jwt=frozenset(r.id for r in records if r.kind is AuthorityKind.JWT),
        )
        self._tainted = view
        return view

    # -- helpers --------------------------------------------------------------------------------

    async def _pick(
        self, kind: LifecycleKind, authority_id: str | None, state: AuthorityState, verb: str
    ) -> AuthorityRecord:
        """The authority to act on: the one named (checked), else this replica's only one in
        ``state``. :class:`Conflict` when it is in another state (SPIRE's rules)."""
        if authority_id is not None:
            try:
                record = await self._store.get_authority(authority_id)
            except NotFound:
                raise NotFound(f"no authority {authority_id!r}") from None
            if record.kind is not kind.store_kind:
                raise InvalidRequest(
                    f"authority {authority_id} is a {record.kind.value}, not a {kind.value} one"
                )
            _check_state(record, state, verb)
            return record
        mine = [
            r
            for r in await self._store.list_authorities(kind=kind.store_kind, owner=self._replica)
            if r.state is state
        ]
        if not mine:
            raise NotFound(
                f"replica {self._replica} has no {state.value} {kind.value} authority to {verb};"
                " name one with --id"
            )
        if len(mine) > 1:
            ids = ", ".join(r.id for r in mine)
            raise InvalidRequest(
                f"several {state.value} {kind.value} authorities ({ids}); use --id"
            )
        return mine[0]

    async def _owned(self, record: AuthorityRecord) -> tuple[AuthorityRecord, ...]:
        return await self._store.list_authorities(kind=record.kind, owner=record.owner)

    async def _move(
        self,
        record: AuthorityRecord,
        expected: AuthorityState,
        new: AuthorityState,
        *,
        tolerate: bool = False,
    ) -> AuthorityRecord:
        try:
            return await self._store.cas_authority_state(record.id, expected, new)
        except Conflict:
            current = await self._store.get_authority(record.id)
            if tolerate or current.state is new:
                return current
            raise Conflict(
                f"authority {record.id} changed meanwhile (now {current.state.value}); retry"
            ) from None

    async def _apply(self, record: AuthorityRecord) -> None:
        """Switch signers now when this replica owns the authority (others follow the store)."""
        if record.owner == self._replica:
            await self._authority.rotate_if_due()
        await self._authority.refresh_bundle()


def _check_state(record: AuthorityRecord, wanted: AuthorityState, verb: str) -> None:
    if record.state is wanted:
        return
    if verb == "taint" and record.state is AuthorityState.ACTIVE:
        raise Conflict(f"authority {record.id} is active and cannot be tainted; activate another")
    raise Conflict(
        f"authority {record.id} is {record.state.value}: only {wanted.value} authorities can be"
        f" {'tainted' if verb == 'taint' else verb + 'd'}"
    )


def _root_id(root: x509.Certificate) -> str:
    return root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
