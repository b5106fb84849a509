"""The OAuth 2.0 token service's rules, without I/O: client records, secrets, what a client may be
granted, and the claims of an access token (RFC 6749 section 4.4, RFC 9068, RFC 8705).

>>> sorted(parse_scope("b a  a"))
['a', 'b']
>>> secret_matches("s3cret", (hash_secret("other"), hash_secret("s3cret")))
True
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from s2s.core.b64 import b64url_encode
from s2s.core.errors import InvalidRequest
from s2s.core.spiffe_id import SpiffeId

__all__ = [
    "ASSERTION_TYPE",
    "CLIENT_CREDENTIALS",
    "MAX_SECRETS",
    "ClientRecord",
    "Grant",
    "OAuthError",
    "access_token_claims",
    "decide_grant",
    "hash_secret",
    "new_secret",
    "parse_scope",
    "secret_matches",
]

CLIENT_CREDENTIALS: Final = "client_credentials"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 2.2
MAX_SECRETS: Final = 2  # the current secret and the one it replaces, during a rotation
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 3.3 scope-token
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/@-]{1,200}")
_SECRET_HASH = re.compile(r"sha256:[0-9a-f]{64}")


class OAuthError(InvalidRequest):
    """A request the token service refuses, with its RFC 6749 section 5.2 (or RFC 7009/7662,
    RFC 8707) ``error`` code; the HTTP adapter picks the status from it. ``reason`` names a
    refusal that is counted apart (``replay``: a client assertion used before)."""

    def __init__(self, error: str, description: str, *, reason: str = "") -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason


def parse_scope(text: str) -> frozenset[str]:
    """A space-separated scope string as a set (RFC 6749 section 3.3)."""
    tokens = [t for t in text.split(" ") if t]
    for token in tokens:
        if _SCOPE_TOKEN.fullmatch(token) is None:
            raise OAuthError("invalid_scope", f"scope {token[:40]!r} is not a valid scope token")
    return frozenset(tokens)


def new_secret(entropy: bytes) -> str:
    """A client secret from 32 random bytes (256 bits), base64url."""
    if len(entropy) < 32:
        raise InvalidRequest("a client secret needs 32 random bytes")
    return b64url_encode(entropy)


def hash_secret(secret: str) -> str:
    """What the store keeps of a secret: SHA-256 (a 256-bit random secret needs no slow hash)."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, hashes: Iterable[str]) -> bool:
    """True if ``secret`` is one of ``hashes``; every hash is compared in constant time."""
    candidate = hash_secret(secret).encode("ascii")
    found = False
    for stored in hashes:
        found |= hmac.compare_digest(candidate, stored.encode("ascii"))
    return found


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """One OAuth client: an SVID client (``spiffe_id``; its ``client_id`` is the SPIFFE ID) or a
    secret client (``secret_hashes``, at most two during a rotation)."""

    client_id: str
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    spiffe_id: SpiffeId | None = None
    secret_hashes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if _CLIENT_ID.fullmatch(self.client_id) is None:
            raise InvalidRequest("client_id must be 1-200 letters, digits or '._:/@-' characters")
        if self.spiffe_id is not None and str(self.spiffe_id) != self.client_id:
            raise InvalidRequest("an SVID client's client_id is its SPIFFE ID")
        if (self.spiffe_id is None) == (not self.secret_hashes):
            raise InvalidRequest("a client has either a SPIFFE ID or a secret, not both")
        if len(self.secret_hashes) > MAX_SECRETS:
            raise InvalidRequest(f"a client holds at most {MAX_SECRETS} secrets")
        if not all(_SECRET_HASH.fullmatch(h) for h in self.secret_hashes):
            raise InvalidRequest("a stored secret hash is malformed")
        for scope in self.scopes:
            parse_scope(scope)
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise InvalidRequest("a client needs at least one allowed audience")

    @property
    def subject(self) -> str:
        """The ``sub`` of its tokens: the SPIFFE ID, or the client_id of a secret client."""
        return self.client_id

    def to_json(self, *, with_secrets: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "spiffe_id": None if self.spiffe_id is None else str(self.spiffe_id),
            "auth": "svid" if self.spiffe_id is not None else "secret",
            "scopes": sorted(self.scopes),
            "audiences": list(self.audiences),
            "secrets": len(self.secret_hashes),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
        if with_secrets:
            out["secret_hashes"] = list(self.secret_hashes)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ClientRecord:
        try:
            spiffe = doc.get("spiffe_id")
            return cls(
                client_id=doc["client_id"],
                scopes=frozenset(doc["scopes"]),
                audiences=tuple(doc["audiences"]),
                created_at=datetime.fromisoformat(doc["created_at"]),
                updated_at=datetime.fromisoformat(doc["updated_at"]),
                spiffe_id=None if spiffe is None else SpiffeId.parse(spiffe),
                secret_hashes=tuple(doc.get("secret_hashes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"a stored client record is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token request obtains."""

    scopes: frozenset[str]
    audience: str


def decide_grant(client: ClientRecord, *, scope: str | None, audience: Sequence[str]) -> Grant:
    """The scopes and audience a client obtains: the scopes asked for (all of them granted to
    it), or all its scopes when it asks for none (RFC 6749 section 3.3); the audience asked for
    (one of its audiences), or its only audience."""
    scopes = client.scopes if scope is None else parse_scope(scope)
    if scope is not None and not scopes:
        raise OAuthError("invalid_scope", "the scope parameter is empty")
    refused = sorted(scopes - client.scopes)
    if refused:
        raise OAuthError(
            "invalid_scope", f"scope not granted to {client.client_id}: {' '.join(refused)}"
        )
    if len(audience) > 1:
        raise OAuthError("invalid_target", "ask for one audience per token")
    if audience:
        if audience[0] not in client.audiences:
            raise OAuthError(
                "invalid_target", f"audience {audience[0][:80]!r} is not allowed for this client"
            )
        return Grant(scopes, audience[0])
    if len(client.audiences) != 1:
        raise OAuthError(
            "invalid_request", "this client has several audiences: name one (audience=...)"
        )
    return Grant(scopes, client.audiences[0])


def access_token_claims(
    *,
    issuer: str,
    client: ClientRecord,
    grant: Grant,
    now: datetime,
    ttl: timedelta,
    jti: str,
    thumbprint: str | None = None,
) -> dict[str, Any]:
    """RFC 9068 section 2.2 claims; ``cnf`` (RFC 8705 section 3.1) for a certificate-bound token."""
    if ttl <= timedelta(0):
        raise InvalidRequest("the access-token lifetime must be positive")
    issued = math.floor(now.timestamp())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": client.subject,
        "aud": grant.audience,
        "client_id": client.client_id,
        "scope": " ".join(sorted(grant.scopes)),
        "jti": jti,
        "iat": issued,
        "exp": issued + math.floor(ttl.total_seconds()),
    }
    if thumbprint is not None:
        claims["cnf"] = {"x5t#S256": thumbprint}
    return claims
