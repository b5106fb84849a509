"""The records the CA keeps in its store (besides registration entries and revocation records).

All are frozen values. Datetimes are aware (UTC); constructors refuse naive ones, so a backend can
store them as exact integers (microseconds since the epoch) and give back equal values.
Serials are Python ints up to 2**160 - 1 (RFC 5280 4.1.2.2 allows 20 octets).

Each record has ``to_json()``/``from_json()`` (what a backend stores, and what the admin API may
show): datetimes as ISO 8601 with offset, bytes as base64 (the join token hash as hex), serials as
lowercase hex. ``from_json`` raises :class:`InvalidRequest` naming the field
(the field readers are in :mod:`s2s.store.record_json`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from s2s.core.errors import InvalidRequest
from s2s.core.spiffe_id import SpiffeId
from s2s.store.record_json import (
    b64_text,
    check_aware,
    iso_text,
    read_b64,
    read_field,
    read_hex_int,
    read_object,
    read_opt_hex_int,
    read_opt_sid,
    read_sid,
    read_time,
)

__all__ = [
    "AgentRecord",
    "AuthorityKind",
    "AuthorityRecord",
    "AuthorityState",
    "IssuedKind",
    "IssuedSerial",
    "JoinTokenRecord",
    "MAX_SERIAL",
    "PruneResult",
    "Setting",
    "Topic",
    "UsedMark",
    "check_key_hash",
]

MAX_SERIAL = 2**160 - 1
_E = TypeVar("_E", bound=StrEnum)


class Topic(StrEnum):
    """What a change notification is about."""

    ENTRIES = "entries"
    AGENTS = "agents"
    REVOCATIONS = "revocations"
    AUTHORITIES = "authorities"
    FEDERATED_BUNDLES = "federated_bundles"  # bumped through cas_state(..., topic=...)
    OAUTH_CLIENTS = "oauth_clients"  # likewise


class Setting(StrEnum):
    """Well-known trust domain settings (values are text)."""

    TRUST_DOMAIN = "trust_domain"
    CREATED_AT = "created_at"  # ISO 8601
    X509_SVID_TTL_CAP = "x509_svid_ttl_cap"  # seconds
    JWT_SVID_TTL_CAP = "jwt_svid_ttl_cap"  # seconds
    DATA_DIR_ID = "data_dir_id"  # random id written by `s2s-ca init`, checked on start


class AuthorityKind(StrEnum):
    X509_ROOT = "x509-root"
    X509_INTERMEDIATE = "x509-intermediate"
    JWT = "jwt"


class AuthorityState(StrEnum):
    """SPIRE's local authority states; the CA decides which transitions are legal."""

    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"
    TAINTED = "tainted"
    REVOKED = "revoked"


class IssuedKind(StrEnum):
    """What an issued serial belongs to."""

    X509_SVID = "x509-svid"
    AGENT_SVID = "agent-svid"
    CA_SVID = "ca-svid"
    X509_INTERMEDIATE = "x509-intermediate"
    X509_ROOT = "x509-root"


def _enum(cls: type[_E], name: str, value: object) -> _E:
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in cls)
    raise InvalidRequest(f"{name} must be one of: {allowed}")


def _check_serial(value: object) -> None:
    if type(value) is not int or not 0 < value <= MAX_SERIAL:
        raise InvalidRequest("a serial must be a positive integer of at most 20 octets")


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidRequest(f"{what} must be 1-128 characters")


@dataclass(frozen=True, slots=True)
class AuthorityRecord:
    """A signing authority: the root, a replica's intermediate, or a replica's JWT key.

    ``public_der`` is the certificate DER for X.509 kinds and the SubjectPublicKeyInfo DER for JWT
    keys. ``encrypted_key`` is the private key sealed under the key-encryption key (never plain).
    ``owner`` is the replica name that signs with it ("" for the root). ``issuer_id`` is the id of
    the authority that signed this one ("" for a root and for JWT keys).
    """

    id: str
    kind: AuthorityKind
    state: AuthorityState
    public_der: bytes
    encrypted_key: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    owner: str = ""
    issuer_id: str = ""

    def __post_init__(self) -> None:
        _check_name("authority id", self.id)
        object.__setattr__(self, "kind", _enum(AuthorityKind, "authority kind", self.kind))
        object.__setattr__(self, "state", _enum(AuthorityState, "authority state", self.state))
        if not isinstance(self.public_der, bytes) or not self.public_der:
            raise InvalidRequest("authority public_der must be non-empty bytes")
        if not isinstance(self.encrypted_key, bytes):
            raise InvalidRequest("authority encrypted_key must be bytes")
        check_aware("authority not_before", self.not_before)
        check_aware("authority not_after", self.not_after)
        if self.not_after <= self.not_before:
            raise InvalidRequest("authority not_after must be after not_before")

    def to_json(self) -> dict[str, Any]:
        """JSON form; the private key stays encrypted (base64 of the sealed bytes)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "public_der": b64_text(self.public_der),
            "encrypted_key": b64_text(self.encrypted_key),
            "not_before": iso_text(self.not_before),
            "not_after": iso_text(self.not_after),
            "owner": self.owner,
            "issuer_id": self.issuer_id,
        }

    @classmethod
    def from_json(cls, d: object) -> AuthorityRecord:
        d = read_object(d, "an authority record")
        return cls(
            id=read_field(d, "id", str),
            kind=read_field(d, "kind", str),
            state=read_field(d, "state", str),
            public_der=read_b64(d, "public_der"),
            encrypted_key=read_b64(d, "encrypted_key"),
            not_before=read_time(d, "not_before"),
            not_after=read_time(d, "not_after"),
            owner=read_field(d, "owner", str),
            issuer_id=read_field(d, "issuer_id", str),
        )


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An attested agent. ``serial`` is its current SVID; ``next_serial`` a renewal not yet seen
    in use (SPIRE's "new serial"); ``bundle_sequence`` the last bundle sequence it reported.
    ``revision`` is set by the store (1 on create, +1 on each update)."""

    spiffe_id: SpiffeId
    attestation_type: str
    serial: int
    not_after: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    next_serial: int | None = None
    banned: bool = False
    bundle_sequence: int = 0
    revision: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.spiffe_id, SpiffeId):
            raise InvalidRequest("agent spiffe_id must be a SpiffeId")
        if not isinstance(self.attestation_type, str) or not self.attestation_type:
            raise InvalidRequest("agent attestation_type must be non-empty text")
        _check_serial(self.serial)
        if self.next_serial is not None:
            _check_serial(self.next_serial)
        for name in ("not_after", "created_at", "updated_at"):
            check_aware(f"agent {name}", getattr(self, name))
        if type(self.banned) is not bool:
            raise InvalidRequest("agent banned must be a bool")
        for name in ("bundle_sequence", "revision"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvalidRequest(f"agent {name} must be a non-negative integer")

    def to_json(self) -> dict[str, Any]:
        return {
            "spiffe_id": str(self.spiffe_id),
            "attestation_type": self.attestation_type,
            "serial": f"{self.serial:x}",
            "next_serial": None if self.next_serial is None else f"{self.next_serial:x}",
            "not_after": iso_text(self.not_after),
            "created_at": iso_text(self.created_at),
            "updated_at": iso_text(self.updated_at),
            "banned": self.banned,
            "bundle_sequence": self.bundle_sequence,
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, d: object) -> AgentRecord:
        d = read_object(d, "an agent record")
        return cls(
            spiffe_id=read_sid(d, "spiffe_id"),
            attestation_type=read_field(d, "attestation_type", str),
            serial=read_hex_int(d, "serial"),
            next_serial=read_opt_hex_int(d, "next_serial"),
            not_after=read_time(d, "not_after"),
            created_at=read_time(d, "created_at"),
            updated_at=read_time(d, "updated_at"),
            banned=read_field(d, "banned", bool),
            bundle_sequence=read_field(d, "bundle_sequence", int),
            revision=read_field(d, "revision", int),
        )


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    """A single-use join token, kept only as a hash (e.g. SHA-256 of the token text).

    ``id`` is public: it names the agent that attests with the token
    (``spiffe://<td>/s2s/agent/join_token/<id>``); the token itself is never stored.
    ``used_by`` is None until the token is used; then it is the SHA-256 of the
    SubjectPublicKeyInfo of the key whose CSR used it, and the record stays until the token's
    own expiry so that the same key may retry an attestation whose answer was lost. Records
    written before ``used_by`` existed read as unused (used tokens were deleted then).
    """

    id: str
    token_hash: bytes
    expires_at: dt.datetime
    created_at: dt.datetime
    used_by: bytes | None = None

    def __post_init__(self) -> None:
        _check_name("join token id", self.id)
        if not isinstance(self.token_hash, bytes) or not 16 <= len(self.token_hash) <= 64:
            raise InvalidRequest("join token hash must be 16-64 bytes")
        check_aware("join token expires_at", self.expires_at)
        check_aware("join token created_at", self.created_at)
        if self.used_by is not None:
            check_key_hash(self.used_by)

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "token_hash": self.token_hash.hex(),
            "expires_at": iso_text(self.expires_at),
            "created_at": iso_text(self.created_at),
        }
        if self.used_by is not None:  # an unused token keeps the shape older CAs wrote
            out["used_by"] = self.used_by.hex()
        return out

    @classmethod
    def from_json(cls, d: object) -> JoinTokenRecord:
        d = read_object(d, "a join token record")
        return cls(
            id=read_field(d, "id", str),
            token_hash=_read_hex(d, "token_hash"),
            expires_at=read_time(d, "expires_at"),
            created_at=read_time(d, "created_at"),
            used_by=_read_hex(d, "used_by") if d.get("used_by") is not None else None,
        )


def check_key_hash(key_hash: object) -> None:
    """:class:`InvalidRequest` unless ``key_hash`` is a SHA-256 (32 bytes) of a public key."""
    if not isinstance(key_hash, bytes) or len(key_hash) != 32:
        raise InvalidRequest("a join token's key hash must be a 32-byte SHA-256")


def _read_hex(d: Mapping[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(read_field(d, key, str))
    except ValueError:
        raise InvalidRequest(f"field {key!r} is not hex") from None


@dataclass(frozen=True, slots=True)
class UsedMark:
    """A single-use mark: ``key`` (e.g. a hash of a spent client assertion's ``jti``) is held
    until ``expires_at``, when ``prune`` removes it; a second claim of it meanwhile conflicts."""

    key: str
    expires_at: dt.datetime

    def __post_init__(self) -> None:
        _check_name("used mark key", self.key)
        check_aware("used mark expires_at", self.expires_at)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "expires_at": iso_text(self.expires_at)}

    @classmethod
    def from_json(cls, d: object) -> UsedMark:
        d = read_object(d, "a used mark")
        return cls(key=read_field(d, "key", str), expires_at=read_time(d, "expires_at"))


@dataclass(frozen=True, slots=True)
class IssuedSerial:
    """One certificate the CA issued, kept until it expires (to expand ID/agent revocations)."""

    serial: int
    kind: IssuedKind
    spiffe_id: SpiffeId
    issuer_id: str
    issued_at: dt.datetime
    not_after: dt.datetime
    agent_id: SpiffeId | None = None  # the agent that requested it, if any

    def __post_init__(self) -> None:
        _check_serial(self.serial)
        object.__setattr__(self, "kind", _enum(IssuedKind, "issued kind", self.kind))
        if not isinstance(self.spiffe_id, SpiffeId):
            raise InvalidRequest("issued spiffe_id must be a SpiffeId")
        if self.agent_id is not None and not isinstance(self.agent_id, SpiffeId):
            raise InvalidRequest("issued agent_id must be a SpiffeId or None")
        if not isinstance(self.issuer_id, str):
            raise InvalidRequest("issued issuer_id must be text")
        check_aware("issued issued_at", self.issued_at)
        check_aware("issued not_after", self.not_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": f"{self.serial:x}",
            "kind": self.kind.value,
            "spiffe_id": str(self.spiffe_id),
            "issuer_id": self.issuer_id,
            "issued_at": iso_text(self.issued_at),
            "not_after": iso_text(self.not_after),
            "agent_id": None if self.agent_id is None else str(self.agent_id),
        }

    @classmethod
    def from_json(cls, d: object) -> IssuedSerial:
        d = read_object(d, "an issued serial record")
        return cls(
            serial=read_hex_int(d, "serial"),
            kind=read_field(d, "kind", str),
            spiffe_id=read_sid(d, "spiffe_id"),
            issuer_id=read_field(d, "issuer_id", str),
            issued_at=read_time(d, "issued_at"),
            not_after=read_time(d, "not_after"),
            agent_id=read_opt_sid(d, "agent_id"),
        )


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many expired records ``prune`` removed, by kind."""

    join_tokens: int = 0
    revocations: int = 0
    issued: int = 0
    agents: int = 0
    authorities: int = 0
    used_marks: int = 0

    @property
    def total(self) -> int:
        return (
            self.join_tokens
            + self.revocations
            + self.issued
            + self.agents
            + self.authorities
            + self.used_marks
        )
