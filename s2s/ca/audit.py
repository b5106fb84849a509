"""The audit log: one structured line per issuance and per admin change.

Lines go to the ``s2s.audit`` logger with their fields in ``extra=``; the field names are defined
once here (:class:`AuditField`) so the JSON formatter chosen in ``app.py`` can pick them up
(``AUDIT_FIELDS``). Serials are lowercase hex without ``0x``, as in revocation records. Keys,
tokens and PEM never reach this module: callers pass identifiers only.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

from s2s.core.spiffe_id import SpiffeId
from s2s.log import F

__all__ = ["AUDIT_FIELDS", "AUDIT_LOGGER", "AuditEvent", "AuditField", "AuditLog", "serial_hex"]

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


AUDIT_FIELDS: tuple[str, ...] = tuple(f.value for f in AuditField)


class AuditEvent(StrEnum):
    """The ``audit_event`` values (also the log message)."""

    X509_ISSUED = "audit.x509_svid.issued"
    JWT_ISSUED = "audit.jwt_svid.issued"
    AGENT_ATTESTED = "audit.agent.attested"
    AGENT_RENEWED = "audit.agent.renewed"
    ADMIN_CHANGE = "audit.admin.change"


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

    def admin_change(
        self,
        action: str,
        *,
        target: str,
        entry_id: str | None = None,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        actor: str = "admin",
    ) -> None:
        """An admin change (``action`` like ``entry.create``, ``agent.ban``, ``token.generate``)."""
        self._emit(
            AuditEvent.ADMIN_CHANGE,
            {
                AuditField.ACTION: action,
                AuditField.TARGET: target,
                AuditField.ENTRY: entry_id,
                AuditField.SPIFFE_ID: _text(spiffe_id),
                AuditField.AGENT: _text(agent_id),
                AuditField.ACTOR: actor,
            },
        )

    def _emit(self, event: AuditEvent, fields: dict[AuditField, Any]) -> None:
        extra = {str(k): v for k, v in fields.items() if v is not None}
        extra[AuditField.EVENT.value] = event.value
        self._log.info(event.value, extra=extra)


def _text(value: SpiffeId | None) -> str | None:
    return None if value is None else str(value)
