"""An immutable set of revocations, built whole and swapped whole.

Three kinds of record (our extension; SPIFFE defines no revocation): an X.509 serial, a JWT ``jti``,
and a SPIFFE ID with an instant (every credential issued to that ID strictly before ``revoked_at``
is revoked; one issued at or after it is not, so the workload can be re-issued). A record may be
dropped once every credential it covers has expired (``expires_at``), which keeps the set tiny with
short-lived SVIDs.

A serial is only unique per issuer (RFC 5280 4.1.2.2), so a serial record names its issuer:
``issuer`` is the :func:`issuer_key_id` of the CA certificate that signed the revoked one (the
SHA-256 of that CA's public key). A lookup passes the key id of the issuer in the chain it checks,
so one issuer's revocations never cut off another issuer's certificate, whatever its serial, and a
foreign CA cannot revoke ours without our CA's private key. A record without an issuer (written
before issuers were recorded) matches the serial under any issuer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from typing import Any, ClassVar, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from s2s.core.errors import InvalidRequest, InvalidSpiffeId
from s2s.core.spiffe_id import SpiffeId

__all__ = [
    "MAX_JTI_LENGTH",
    "RevocationKind",
    "RevocationLookup",
    "RevocationRecord",
    "RevocationSet",
    "StaticRevocations",
    "issuer_key_id",
    "serial_value",
]

MAX_JTI_LENGTH = 256
MAX_REASON_LENGTH = 1024
_SERIAL_HEX = re.compile(r"[1-9a-f][0-9a-f]{0,39}")  # RFC 5280 4.1.2.2: at most 20 octets
_ISSUER_HEX = re.compile(r"[0-9a-f]{64}")


class RevocationKind(StrEnum):
    SERIAL = "serial"
    JTI = "jti"
    SPIFFE_ID = "spiffe_id"


def serial_value(serial: int) -> str:
    """A certificate serial in record form: lowercase hex without ``0x``.

    >>> serial_value(255)
    'ff'
    """
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial < 1 << 160:
        raise InvalidRequest("a serial must be a positive integer of at most 20 octets")
    return format(serial, "x")


def issuer_key_id(ca: x509.Certificate) -> str:
    """The key id that revocation records use for the CA certificate ``ca``: the SHA-256 of its
    SubjectPublicKeyInfo, in lowercase hex. Unlike a subject name or an SKI extension (which any
    CA may copy), it cannot be claimed without holding the key."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return sha256(spki).hexdigest()


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """One revocation.

    >>> at = datetime(2030, 1, 1, tzinfo=UTC)
    >>> r = RevocationRecord.for_serial(255, revoked_at=at, expires_at=at)
    >>> r.value, RevocationRecord.from_json(r.to_json()) == r
    ('ff', True)
    """

    kind: RevocationKind
    value: str  # serial as lowercase hex without 0x / jti / SPIFFE ID text
    revoked_at: datetime  # for SPIFFE_ID: everything issued to that ID before this instant
    expires_at: datetime  # when the record may be dropped
    reason: str = ""
    issuer: str = ""  # SERIAL only: issuer_key_id() of the CA that signed it ("" = any issuer)

    def __post_init__(self) -> None:
        try:
            kind = RevocationKind(self.kind)
        except ValueError:
            raise InvalidRequest(f"unknown revocation kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        _check_value(kind, self.value)
        object.__setattr__(self, "revoked_at", _aware("revoked_at", self.revoked_at))
        object.__setattr__(self, "expires_at", _aware("expires_at", self.expires_at))
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_LENGTH:
            raise InvalidRequest(f"reason must be text of at most {MAX_REASON_LENGTH} characters")
        if self.issuer and (
            kind is not RevocationKind.SERIAL
            or not isinstance(self.issuer, str)
            or _ISSUER_HEX.fullmatch(self.issuer) is None
        ):
            raise InvalidRequest(
                "issuer is only for serial records: the SHA-256 of the issuing CA's public key"
                " in lowercase hex"
            )

    @classmethod
    def for_serial(
        cls,
        serial: int,
        *,
        revoked_at: datetime,
        expires_at: datetime,
        reason: str = "",
        issuer: str = "",
    ) -> RevocationRecord:
        """Revoke one certificate by serial (``expires_at``: its NotAfter plus skew; ``issuer``:
        the :func:`issuer_key_id` of the CA that signed it)."""
        return cls(
            RevocationKind.SERIAL, serial_value(serial), revoked_at, expires_at, reason, issuer
        )

    @classmethod
    def for_jti(
        cls, jti: str, *, revoked_at: datetime, expires_at: datetime, reason: str = ""
    ) -> RevocationRecord:
        """Revoke one JWT-SVID by ``jti`` (``expires_at``: its ``exp`` plus leeway)."""
        return cls(RevocationKind.JTI, jti, revoked_at, expires_at, reason)

    @classmethod
    def for_spiffe_id(
        cls,
        spiffe_id: SpiffeId | str,
        *,
        revoked_at: datetime,
        expires_at: datetime,
        reason: str = "",
    ) -> RevocationRecord:
        """Revoke everything issued to ``spiffe_id`` before ``revoked_at``."""
        return cls(RevocationKind.SPIFFE_ID, str(spiffe_id), revoked_at, expires_at, reason)

    def merged(self, other: RevocationRecord) -> RevocationRecord:
        """The union of two records for the same (kind, value, issuer): later instants, first
        reason."""
        if self.key != other.key:
            raise InvalidRequest("only records for the same credential can be merged")
        return RevocationRecord(
            self.kind,
            self.value,
            max(self.revoked_at, other.revoked_at),
            max(self.expires_at, other.expires_at),
            self.reason or other.reason,
            self.issuer,
        )

    @property
    def key(self) -> tuple[RevocationKind, str, str]:
        """What identifies the revoked credential: (kind, value, issuer)."""
        return (self.kind, self.value, self.issuer)

    def to_json(self) -> dict[str, Any]:
        out = {
            "kind": str(self.kind),
            "value": self.value,
            "revoked_at": self.revoked_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "reason": self.reason,
        }
        if self.issuer:
            out["issuer"] = self.issuer
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RevocationRecord:
        """Parse :meth:`to_json` output; unknown fields are ignored; InvalidRequest if bad."""
        if not isinstance(d, Mapping):
            raise InvalidRequest("a revocation record must be a JSON object")
        for name in ("kind", "value", "revoked_at", "expires_at"):
            if not isinstance(d.get(name), str):
                raise InvalidRequest(f"revocation record field {name!r} must be a string")
        return cls(
            d["kind"],  # checked and converted by __post_init__
            d["value"],
            _parse_time("revoked_at", d["revoked_at"]),
            _parse_time("expires_at", d["expires_at"]),
            d.get("reason", ""),
            d.get("issuer", ""),
        )


class RevocationSet:
    """An immutable revocation set with O(1) lookups.

    Serials are looked up with the key id of their issuer (:func:`issuer_key_id`): a record
    for issuer ``a`` does not revoke the same serial under issuer ``b``.

    >>> at = datetime(2030, 1, 1, tzinfo=UTC)
    >>> a, b = "a" * 64, "b" * 64
    >>> s = RevocationSet.of([RevocationRecord.for_serial(10, revoked_at=at, expires_at=at,
    ...                                                   issuer=a)])
    >>> s.is_serial_revoked(10, a), s.is_serial_revoked(10, b), s.is_serial_revoked(11, a), len(s)
    (True, False, False, 1)
    """

    EMPTY: ClassVar[RevocationSet]
    __slots__ = ("_all_serials", "_any_issuer", "_ids", "_jtis", "_records", "_serials", "version")

    version: int
    _records: dict[tuple[RevocationKind, str, str], RevocationRecord]
    _serials: frozenset[tuple[str, int]]
    _any_issuer: frozenset[int]
    _all_serials: frozenset[int] | None
    _jtis: frozenset[str]
    _ids: dict[str, datetime]

    def __init__(self) -> None:
        raise TypeError("use RevocationSet.of(records, version=...)")

    @classmethod
    def of(cls, records: Iterable[RevocationRecord], *, version: int = 0) -> RevocationSet:
        """A set of ``records``; duplicates of one (kind, value, issuer) are merged."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidRequest("version must be a non-negative integer")
        merged: dict[tuple[RevocationKind, str, str], RevocationRecord] = {}
        for record in records:
            if not isinstance(record, RevocationRecord):
                raise InvalidRequest("a revocation set holds RevocationRecord values")
            key = record.key
            known = merged.get(key)
            merged[key] = record if known is None else known.merged(record)
        return cls._build(merged, version)

    @classmethod
    def _build(
        cls, records: dict[tuple[RevocationKind, str, str], RevocationRecord], version: int
    ) -> RevocationSet:
        self = object.__new__(cls)
        by_kind: dict[RevocationKind, list[RevocationRecord]] = {k: [] for k in RevocationKind}
        for record in records.values():
            by_kind[record.kind].append(record)
        self._records = records
        serials = by_kind[RevocationKind.SERIAL]
        self._serials = frozenset((r.issuer, int(r.value, 16)) for r in serials if r.issuer)
        self._any_issuer = frozenset(int(r.value, 16) for r in serials if not r.issuer)
        self._all_serials = None
        self._jtis = frozenset(r.value for r in by_kind[RevocationKind.JTI])
        self._ids = {r.value: r.revoked_at for r in by_kind[RevocationKind.SPIFFE_ID]}
        self.version = version
        return self

    def is_serial_revoked(self, serial: int, issuer: str) -> bool:
        """True when the certificate ``serial`` signed by the CA whose :func:`issuer_key_id` is
        ``issuer`` is revoked."""
        return (issuer, serial) in self._serials or serial in self._any_issuer

    def is_serial_revoked_by_any_issuer(self, serial: int) -> bool:
        """True when ``serial`` is revoked under any issuer: for a CA or an agent checking the
        certificates of its own trust domain, whose CA draws serials at random across issuers."""
        every = self._all_serials
        if every is None:
            every = self._all_serials = self._any_issuer | {s for _, s in self._serials}
        return serial in every

    def has_serials(self) -> bool:
        """Whether any serial is revoked (a chain check can skip its lookups otherwise)."""
        return bool(self._serials or self._any_issuer)

    def is_jti_revoked(self, jti: str) -> bool:
        return jti in self._jtis

    def is_spiffe_id_revoked(self, spiffe_id: SpiffeId | str, issued_at: datetime) -> bool:
        """True when a credential for ``spiffe_id`` issued at ``issued_at`` is revoked."""
        if issued_at.utcoffset() is None:
            raise ValueError("issued_at must be an aware datetime")
        revoked_at = self._ids.get(str(spiffe_id))
        return revoked_at is not None and issued_at < revoked_at

    def revoked_at(self, spiffe_id: SpiffeId | str) -> datetime | None:
        """The instant before which everything issued to ``spiffe_id`` is revoked, if any."""
        return self._ids.get(str(spiffe_id))

    def pruned(self, now: datetime) -> RevocationSet:
        """The set without records whose ``expires_at`` is at or before ``now``."""
        _aware("now", now)
        kept = {k: r for k, r in self._records.items() if r.expires_at > now}
        return self if len(kept) == len(self._records) else self._build(kept, self.version)

    def with_records(
        self, records: Iterable[RevocationRecord], *, version: int | None = None
    ) -> RevocationSet:
        """A new set with ``records`` added (merged with existing ones)."""
        next_version = self.version if version is None else version
        return RevocationSet.of([*self._records.values(), *records], version=next_version)

    def records(self) -> tuple[RevocationRecord, ...]:
        """All records, ordered by (kind, value)."""
        return tuple(self._records[k] for k in sorted(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RevocationSet):
            return NotImplemented
        return self.version == other.version and self._records == other._records

    def __hash__(self) -> int:
        return hash((self.version, frozenset(self._records.values())))

    def __repr__(self) -> str:
        return f"RevocationSet(version={self.version}, records={len(self._records)})"


RevocationSet.EMPTY = RevocationSet.of(())


class RevocationLookup(Protocol):
    """What a verifier needs: the current revocation set (a snapshot; no lock needed)."""

    def current(self) -> RevocationSet: ...


class StaticRevocations:
    """A :class:`RevocationLookup` holding one snapshot that a writer replaces whole."""

    __slots__ = ("_current",)

    def __init__(self, initial: RevocationSet | None = None) -> None:
        self._current = RevocationSet.EMPTY if initial is None else initial

    def current(self) -> RevocationSet:
        return self._current

    def replace(self, new_set: RevocationSet) -> None:
        """Swap in ``new_set`` (a single reference assignment: readers see old or new)."""
        if not isinstance(new_set, RevocationSet):
            raise TypeError("replace() takes a RevocationSet")
        self._current = new_set


def _check_value(kind: RevocationKind, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest("a revocation value must be text")
    if kind is RevocationKind.SERIAL:
        if _SERIAL_HEX.fullmatch(value) is None:
            raise InvalidRequest(f"serial {value[:50]!r} is not lowercase hex without 0x or zeros")
    elif kind is RevocationKind.JTI:
        if not value or len(value) > MAX_JTI_LENGTH:
            raise InvalidRequest(f"a jti must have 1 to {MAX_JTI_LENGTH} characters")
    else:
        try:
            SpiffeId.parse(value)
        except InvalidSpiffeId as exc:
            raise InvalidRequest(f"revocation by SPIFFE ID: {exc}") from None


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRequest(f"{name} must be an aware datetime")
    return value.astimezone(UTC)


def _parse_time(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{name} is not an ISO 8601 time: {text[:40]!r}") from None
    if value.utcoffset() is None:
        raise InvalidRequest(f"{name} must include a UTC offset")
    return value.astimezone(UTC)
