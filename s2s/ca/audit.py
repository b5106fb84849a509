"""The audit log: one structured line per issuance and per admin change.

Lines go to the ``s2s.audit`` logger with their fields in ``extra=``; the field names are defined
once here (:class:`AuditField`) so the formatter chosen in ``app.py`` can pick them up
(``AUDIT_FIELDS``). Serials are lowercase hex without ``0x``, as in revocation records. Keys,
tokens and PEM never reach this module: callers pass identifiers only.

Admin changes name their caller: the admin socket's middleware reads the peer's uid and pid
(SO_PEERCRED) and sets them for the request with :func:`admin_caller`; every
:meth:`AuditLog.admin_change` made while that request runs carries them. A context variable,
because the services that write audit lines sit several calls below the request and other
callers (the CA's own loops) have no admin peer. Admin calls that are refused (bad input, not
found, conflict, another user) are audited too (:meth:`AuditLog.admin_refused`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F

__all__ = [
    "AUDIT_FIELDS",
    "AUDIT_LOGGER",
    "AdminCaller",
    "AuditEvent",
    "AuditField",
    "AuditLog",
    "admin_caller",
    "current_admin_caller",
    "entry_details",
    "serial_hex",
]

AUDIT_LOGGER = "s2s.audit"


class AuditField(StrEnum):
    """Names of the ``extra=`` fields on audit records: the shared ``s2s.log.F`` names, plus
    ``audit_event`` and ``target`` (audit only)."""

    EVENT = "audit_event"
    TARGET = "target"
    SERIAL = F.SERIAL
    JTI = F.JTI
    SPIFFE_ID = F.SPIFFE_ID
    AGENT = F.AGENT_ID
    ENTRY = F.ENTRY_ID
    KIND = F.KIND
    NOT_AFTER = F.NOT_AFTER
    AUDIENCE = F.AUDIENCE
    ACTION = F.ACTION
    ACTOR = F.ACTOR
    UID = F.UID
    PID = F.PID
    REASON = F.REASON
    ERROR = F.ERROR
    COUNT = F.COUNT
    METHOD = F.METHOD
    PATH = F.PATH
    REVISION = F.REVISION
    DETAIL = "detail"
    PARENT_ID = "parent_id"
    SELECTORS = "selectors"
    X509_SVID_TTL = "x509_svid_ttl"
    JWT_SVID_TTL = "jwt_svid_ttl"
    DNS_NAMES = "dns_names"
    HINT = "hint"
    CHANGED = "changed"
    EXPIRES_AT = "expires_at"
    OLD_ROOT = "old_root"
    NEW_ROOT = "new_root"
    BUNDLE_SEQUENCE = "bundle_sequence"
    FEDERATES_WITH = "federates_with"


AUDIT_FIELDS: tuple[str, ...] = tuple(f.value for f in AuditField)


class AuditEvent(StrEnum):
    """The ``audit_event`` values (also the log message)."""

    X509_ISSUED = "audit.x509_svid.issued"
    JWT_ISSUED = "audit.jwt_svid.issued"
    AGENT_ATTESTED = "audit.agent.attested"
    AGENT_RENEWED = "audit.agent.renewed"
    AGENT_REATTESTED = "audit.agent.reattested"  # a join token retried by the key that used it
    AGENT_REFUSED = "audit.agent.refused"
    ADMIN_CHANGE = "audit.admin.change"
    ADMIN_REFUSED = "audit.admin.refused"


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """Who called the admin API: the peer process of the admin socket (SO_PEERCRED)."""

    uid: int
    pid: int


_CALLER: ContextVar[AdminCaller | None] = ContextVar("s2s_admin_caller", default=None)


@contextlib.contextmanager
def admin_caller(caller: AdminCaller | None) -> Iterator[None]:
    """Audit lines written inside the block name ``caller`` (the admin socket's middleware)."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def current_admin_caller() -> AdminCaller | None:
    """The admin caller of the request being served, if any."""
    return _CALLER.get()


def serial_hex(serial: int) -> str:
    """A serial as lowercase hex without ``0x`` (the revocation record form).

    >>> serial_hex(255)
    'ff'
    """
    return format(serial, "x")


class AuditLog:
    """Writes audit lines. Construct one per process (``app.py``) and pass it down."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else logging.getLogger(AUDIT_LOGGER)

    def x509_issued(
        self,
        *,
        serial: int,
        spiffe_id: SpiffeId,
        not_after: datetime,
        agent_id: SpiffeId | None = None,
        entry_id: str | None = None,
        kind: str = "workload",
    ) -> None:
        """An X509-SVID was issued (``kind``: workload, agent, server, admin)."""
        self._emit(
            AuditEvent.X509_ISSUED,
            {
                AuditField.SERIAL: serial_hex(serial),
                AuditField.SPIFFE_ID: str(spiffe_id),
                AuditField.AGENT: _text(agent_id),
                AuditField.ENTRY: entry_id,
                AuditField.KIND: kind,
                AuditField.NOT_AFTER: not_after.isoformat(),
            },
        )

    def jwt_issued(
        self,
        *,
        spiffe_id: SpiffeId,
        audience: tuple[str, ...],
        not_after: datetime,
        jti: str | None,
        agent_id: SpiffeId | None = None,
        entry_id: str | None = None,
        kind: str = "workload",
    ) -> None:
        """A JWT-SVID was minted; its ``jti`` is logged, never the token itself."""
        self._emit(
            AuditEvent.JWT_ISSUED,
            {
                AuditField.JTI: jti,
                AuditField.SPIFFE_ID: str(spiffe_id),
                AuditField.AGENT: _text(agent_id),
                AuditField.ENTRY: entry_id,
                AuditField.KIND: kind,
                AuditField.AUDIENCE: ",".join(audience),
                AuditField.NOT_AFTER: not_after.isoformat(),
            },
        )

    def agent_event(self, event: AuditEvent, *, agent_id: SpiffeId, serial: int) -> None:
        """An agent attested or renewed its SVID."""
        self._emit(
            event,
            {
                AuditField.AGENT: str(agent_id),
                AuditField.SPIFFE_ID: str(agent_id),
                AuditField.SERIAL: serial_hex(serial),
                AuditField.KIND: "agent",
            },
        )

    def agent_refused(self, *, agent_id: SpiffeId, reason: str) -> None:
        """An agent attestation was refused (``reason`` never holds a token or key)."""
        self._emit(
            AuditEvent.AGENT_REFUSED,
            {
                AuditField.AGENT: str(agent_id),
                AuditField.SPIFFE_ID: str(agent_id),
                AuditField.REASON: reason,
                AuditField.KIND: "agent",
            },
        )

    def admin_change(
        self,
        action: str,
        *,
        target: str,
        entry_id: str | None = None,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        actor: str = "admin",
        details: Mapping[AuditField, Any] | None = None,
    ) -> None:
        """An admin change (``action`` like ``entry.create``, ``agent.ban``, ``token.generate``)
        with what it changed in ``details`` (identifiers and settings, never a secret) and the
        admin caller's uid and pid when it came through the admin socket."""
        fields: dict[AuditField, Any] = {
            AuditField.ACTION: action,
            AuditField.TARGET: target,
            AuditField.ENTRY: entry_id,
            AuditField.SPIFFE_ID: _text(spiffe_id),
            AuditField.AGENT: _text(agent_id),
            AuditField.ACTOR: actor,
        }
        fields.update(details or {})
        self._emit(AuditEvent.ADMIN_CHANGE, _with_caller(fields, current_admin_caller()))

    def admin_refused(
        self,
        *,
        method: str,
        path: str,
        error: str,
        detail: str,
        caller: AdminCaller | None,
        target: str | None = None,
    ) -> None:
        """An admin call that was refused (``error``: its wire code; ``detail``: the message
        the caller saw, which never holds a secret)."""
        fields: dict[AuditField, Any] = {
            AuditField.ACTION: f"{method} {path}",
            AuditField.METHOD: method,
            AuditField.PATH: path,
            AuditField.TARGET: target,
            AuditField.ERROR: error,
            AuditField.DETAIL: detail,
            AuditField.ACTOR: "admin",
        }
        self._emit(AuditEvent.ADMIN_REFUSED, _with_caller(fields, caller))

    def _emit(self, event: AuditEvent, fields: Mapping[AuditField, Any]) -> None:
        extra = {str(k): v for k, v in fields.items() if v is not None}
        extra[AuditField.EVENT.value] = event.value
        self._log.info(event.value, extra=extra)


def entry_details(entry: RegistrationEntry) -> dict[AuditField, Any]:
    """The whole of a registration entry for an audit line (TTLs in seconds, lists sorted)."""
    return {
        AuditField.PARENT_ID: str(entry.parent_id),
        AuditField.SELECTORS: sorted(str(s) for s in entry.selectors),
        AuditField.X509_SVID_TTL: _seconds(entry.x509_svid_ttl),
        AuditField.JWT_SVID_TTL: _seconds(entry.jwt_svid_ttl),
        AuditField.DNS_NAMES: list(entry.dns_names),
        AuditField.HINT: entry.hint or None,
        AuditField.FEDERATES_WITH: sorted(str(td) for td in entry.federates_with) or None,
        AuditField.REVISION: entry.revision,
    }


def _with_caller(
    fields: dict[AuditField, Any], caller: AdminCaller | None
) -> dict[AuditField, Any]:
    if caller is not None:
        fields[AuditField.UID] = caller.uid
        fields[AuditField.PID] = caller.pid
    return fields


def _seconds(value: timedelta) -> int:
    return int(value.total_seconds())


def _text(value: SpiffeId | None) -> str | None:
    return None if value is None else str(value)
