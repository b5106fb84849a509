"""One error hierarchy for s2s, split by what the caller does next.

Adapters (HTTP, gRPC, CLI) translate these into status codes; nothing below them picks a code.
"""

from __future__ import annotations

__all__ = [
    "AttestationFailed",
    "Conflict",
    "InvalidBundle",
    "InvalidConfig",
    "InvalidRequest",
    "InvalidSelector",
    "InvalidSpiffeId",
    "InvalidSvid",
    "InvalidToken",
    "NotAuthorized",
    "NotFound",
    "Revoked",
    "S2SError",
    "StoreError",
    "Unavailable",
]


class S2SError(Exception):
    """Base of every error s2s raises on purpose. ``str(err)`` is a message for a person."""

    code: str = "error"


class InvalidSpiffeId(S2SError, ValueError):
    """Text that is not a SPIFFE ID (or trust domain) as SPIFFE-ID.md defines it."""

    code = "invalid_spiffe_id"

    def __init__(self, reason: str, *, value: str | None = None) -> None:
        self.reason = reason
        self.value = value
        shown = "" if value is None else f" {_clip(value)!r}"
        super().__init__(f"invalid SPIFFE ID{shown}: {reason}")


class InvalidSelector(S2SError, ValueError):
    """A selector that is not ``type:value``."""

    code = "invalid_selector"


class InvalidSvid(S2SError):
    """A certificate chain that breaks the X509-SVID profile; ``rule`` names the rule."""

    code = "invalid_svid"

    def __init__(self, message: str, *, rule: str) -> None:
        self.rule = rule
        super().__init__(f"{message} [{rule}]")


class InvalidBundle(S2SError, ValueError):
    """A trust bundle that cannot be decoded."""

    code = "invalid_bundle"


class InvalidToken(S2SError):
    """A JWT-SVID that must be rejected; ``reason`` is a short machine-readable tag."""

    code = "invalid_token"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class Revoked(S2SError):
    """A credential that was revoked."""

    code = "revoked"

    def __init__(
        self,
        message: str,
        *,
        serial: int | None = None,
        jti: str | None = None,
        spiffe_id: str | None = None,
    ) -> None:
        self.serial = serial
        self.jti = jti
        self.spiffe_id = spiffe_id
        super().__init__(message)


class NotAuthorized(S2SError):
    """The caller is known but not allowed to do this."""

    code = "not_authorized"


class AttestationFailed(S2SError):
    """The caller's identity could not be established."""

    code = "attestation_failed"


class InvalidRequest(S2SError, ValueError):
    """A request, CSR or argument that is malformed or out of bounds."""

    code = "invalid_request"


class InvalidConfig(S2SError, ValueError):
    """A configuration that cannot be used."""

    code = "invalid_config"


class NotFound(S2SError, LookupError):
    """The named object does not exist."""

    code = "not_found"


class Conflict(S2SError):
    """The change lost a race or breaks a uniqueness rule (compare-and-swap failed)."""

    code = "conflict"


class Unavailable(S2SError):
    """A dependency (CA, store, agent) cannot be reached now; retry with backoff."""

    code = "unavailable"


class StoreError(Unavailable):
    """The store failed; nothing was written."""

    code = "store_error"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
