"""One error hierarchy for s2s, split by what the caller does next.

Adapters (HTTP, gRPC, CLI) translate these into status codes; nothing below them picks a code.
Each class has a wire ``code`` (the ``error`` field of the CA's JSON answers); ``error_from_code``
turns a code a server reported back into the matching class, for every client of the CA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "AttestationFailed",
    "CaMismatch",
    "Conflict",
    "InsufficientScope",
    "InvalidBundle",
    "InvalidConfig",
    "InvalidRequest",
    "InvalidSelector",
    "InvalidSpiffeId",
    "InvalidSvid",
    "InvalidToken",
    "NotACa",
    "NotAuthorized",
    "NotFound",
    "Revoked",
    "S2SError",
    "StoreError",
    "TrustBundleMismatch",
    "TrustDomainMismatch",
    "Unavailable",
    "error_from_code",
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


class InsufficientScope(NotAuthorized):
    """A valid access token without every scope the resource needs (RFC 6750 section 3.1)."""

    code = "insufficient_scope"

    def __init__(self, message: str, *, required: frozenset[str]) -> None:
        self.required = required
        super().__init__(message)


class AttestationFailed(S2SError):
    """The caller's identity could not be established."""

    code = "attestation_failed"


class InvalidRequest(S2SError, ValueError):
    """A request, CSR or argument that is malformed or out of bounds."""

    code = "invalid_request"


class InvalidConfig(S2SError, ValueError):
    """A configuration that cannot be used."""

    code = "invalid_config"


class CaMismatch(InvalidConfig):
    """The server at a CA URL answered, but it is not the CA this agent is configured for: the
    trust bundle, the trust domain or the URL is wrong. Retrying cannot fix it (an outage can)."""

    code = "ca_mismatch"


class TrustBundleMismatch(CaMismatch):
    """An s2s CA of our trust domain whose certificate does not chain to the bundle we hold."""

    code = "trust_bundle_mismatch"


class TrustDomainMismatch(CaMismatch):
    """An s2s CA of another trust domain than the one configured."""

    code = "trust_domain_mismatch"


class NotACa(CaMismatch):
    """A server that is not an s2s CA (another TLS server, a plain HTTP port, another path)."""

    code = "not_a_ca"


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


_BY_CODE: Final[Mapping[str, type[S2SError]]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        InvalidSelector,
        InvalidBundle,
        NotAuthorized,
        AttestationFailed,
        InvalidConfig,
        NotFound,
        Conflict,
        Unavailable,
        StoreError,
    )
}


def error_from_code(code: str, message: str) -> S2SError:
    """Rebuild the error a server reported (codes with extra constructor data become their base).

    >>> type(error_from_code("not_found", "no such entry")).__name__
    'NotFound'
    >>> error_from_code("teapot", "short and stout").code
    'teapot'
    """
    if code == "invalid_spiffe_id":
        return InvalidRequest(message)
    if code == "invalid_token":
        return InvalidToken(message, reason="server")
    if code == "revoked":
        return Revoked(message)
    if code == "invalid_svid":
        return InvalidSvid(message, rule="server")
    if code == "insufficient_scope":  # the wire carries no scope list
        return InsufficientScope(message, required=frozenset())
    cls = _BY_CODE.get(code)
    if cls is None:
        err = S2SError(message)
        err.code = code
        return err
    return cls(message)


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
