"""What ``s2s-ca revoke`` names and what it answers: the target kinds, the result of one call, and
serial parsing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from s2s.core.errors import InvalidRequest
from s2s.core.revocation import RevocationRecord

__all__ = ["RevocationResult", "RevokeTarget", "parse_serial"]


class RevokeTarget(StrEnum):
    """What ``s2s-ca revoke`` names (the option it was given)."""

    SERIAL = "serial"
    SPIFFE_ID = "spiffe_id"
    JTI = "jti"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class RevocationResult:
    """The outcome of one revoke call.

    ``records``: every record written or confirmed (the main one first); ``changed``: how many
    were new or moved on; ``already_revoked``: the target had been revoked before this call.
    """

    target: RevokeTarget
    value: str
    records: tuple[RevocationRecord, ...]
    changed: int
    already_revoked: bool
    banned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "value": self.value,
            "records": [r.to_json() for r in self.records],
            "changed": self.changed,
            "already_revoked": self.already_revoked,
            "banned": self.banned,
        }


def parse_serial(text: object) -> int:
    """A serial from hex text (``0x`` prefix, colons and case tolerated); InvalidRequest if bad.

    >>> parse_serial("0A:ff")
    2815
    """
    if not isinstance(text, str):
        raise InvalidRequest("a serial must be hex text")
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidRequest(f"serial {text[:50]!r} is not hex (at most 20 octets)")
    serial = int(cleaned, 16)
    if serial == 0:
        raise InvalidRequest("serial 0 is not a valid certificate serial")
    return serial
