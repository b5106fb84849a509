"""An immutable set of revocations, derived from the previous one in O(change) and swapped whole.

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

import heapq
import itertools
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
    """An immutable revocation set with O(1) lookups, derived from another in O(change).

    Serials are looked up with the key id of their issuer (:func:`issuer_key_id`): a record
    for issuer ``a`` does not revoke the same serial under issuer ``b``.

    A derived set (:meth:`with_records`, :meth:`without`, :meth:`with_changes`, :meth:`pruned`)
    shares its indexes with the set it came from: each index maps a key to its history of
    (stamp, value) pairs, and a set reads the newest value at or before its own stamp, so a set
    never changes under a reader while newer sets append to the shared histories. Deriving from
    the newest set of a line costs O(changed records); deriving from an older one (a branch) or
    after as many superseded values as live records have piled up (amortised O(1)) builds the
    indexes afresh.

    >>> at = datetime(2030, 1, 1, tzinfo=UTC)
    >>> a, b = "a" * 64, "b" * 64
    >>> s = RevocationSet.of([RevocationRecord.for_serial(10, revoked_at=at, expires_at=at,
    ...                                                   issuer=a)])
    >>> s.is_serial_revoked(10, a), s.is_serial_revoked(10, b), s.is_serial_revoked(11, a), len(s)
    (True, False, False, 1)
    """

    EMPTY: ClassVar[RevocationSet]
    __slots__ = ("_count", "_line", "_stamp", "version")

    version: int
    _line: _Line
    _stamp: int
    _count: int

    def __init__(self) -> None:
        raise TypeError("use RevocationSet.of(records, version=...)")

    @classmethod
    def of(cls, records: Iterable[RevocationRecord], *, version: int = 0) -> RevocationSet:
        """A set of ``records``; duplicates of one (kind, value, issuer) are merged."""
        _check_version(version)
        merged: dict[_Key, RevocationRecord] = {}
        for record in records:
            if not isinstance(record, RevocationRecord):
                raise InvalidRequest("a revocation set holds RevocationRecord values")
            key = record.key
            known = merged.get(key)
            merged[key] = record if known is None else known.merged(record)
        return cls._fresh(merged, version)

    @classmethod
    def _fresh(cls, records: dict[_Key, RevocationRecord], version: int) -> RevocationSet:
        line = _Line()
        for record in records.values():
            line.put(record.key, record, 0)
        heapq.heapify(line.expiry)
        return cls._at(line, 0, len(records), version)

    @classmethod
    def _at(cls, line: _Line, stamp: int, count: int, version: int) -> RevocationSet:
        self = object.__new__(cls)
        self._line, self._stamp, self._count, self.version = line, stamp, count, version
        return self

    # -- lookups (the hot path) ----------------------------------------------------------------

    def is_serial_revoked(self, serial: int, issuer: str) -> bool:
        """True when the certificate ``serial`` signed by the CA whose :func:`issuer_key_id` is
        ``issuer`` is revoked."""
        line, stamp = self._line, self._stamp
        h = line.serials.get((issuer, serial))
        if h is not None and (h[-1] if h[-2] <= stamp else _older(h, stamp)) is not None:
            return True
        h = line.any_issuer.get(serial)
        return h is not None and (h[-1] if h[-2] <= stamp else _older(h, stamp)) is not None

    def is_serial_revoked_by_any_issuer(self, serial: int) -> bool:
        """True when ``serial`` is revoked under any issuer: for a CA or an agent checking the
        certificates of its own trust domain, whose CA draws serials at random across issuers."""
        h = self._line.every_serial.get(serial)
        stamp = self._stamp
        return h is not None and (h[-1] if h[-2] <= stamp else _older(h, stamp)) is not None

    def has_serials(self) -> bool:
        """Whether any serial is revoked (a chain check can skip its lookups otherwise)."""
        h = self._line.serial_count
        stamp = self._stamp
        return bool(h[-1] if h[-2] <= stamp else _older(h, stamp))

    def is_jti_revoked(self, jti: str) -> bool:
        h = self._line.jtis.get(jti)
        stamp = self._stamp
        return h is not None and (h[-1] if h[-2] <= stamp else _older(h, stamp)) is not None

    def is_spiffe_id_revoked(self, spiffe_id: SpiffeId | str, issued_at: datetime) -> bool:
        """True when a credential for ``spiffe_id`` issued at ``issued_at`` is revoked."""
        if issued_at.utcoffset() is None:
            raise ValueError("issued_at must be an aware datetime")
        revoked_at = self.revoked_at(spiffe_id)
        return revoked_at is not None and issued_at < revoked_at

    def revoked_at(self, spiffe_id: SpiffeId | str) -> datetime | None:
        """The instant before which everything issued to ``spiffe_id`` is revoked, if any."""
        h = self._line.ids.get(str(spiffe_id))
        if h is None:
            return None
        stamp = self._stamp
        value = h[-1] if h[-2] <= stamp else _older(h, stamp)
        return value if isinstance(value, datetime) else None

    def get(self, key: tuple[RevocationKind, str, str]) -> RevocationRecord | None:
        """The record for ``key`` (kind, value, issuer), if any."""
        h = self._line.records.get(key)
        if h is None:
            return None
        stamp = self._stamp
        value = h[-1] if h[-2] <= stamp else _older(h, stamp)
        return value if isinstance(value, RevocationRecord) else None

    def record_keys(self) -> list[tuple[RevocationKind, str, str]]:
        """The keys (kind, value, issuer) of every record, unordered."""
        stamp, out = self._stamp, []
        for key, h in self._line.records.items():
            if (h[-1] if h[-2] <= stamp else _older(h, stamp)) is not None:
                out.append(key)
        return out

    # -- derived sets --------------------------------------------------------------------------

    def pruned(self, now: datetime) -> RevocationSet:
        """The set without records whose ``expires_at`` is at or before ``now``."""
        now = _aware("now", now)
        line = self._line
        expiry = line.expiry
        if line.tip == self._stamp:
            if not expiry or expiry[0][0] > now:
                return self  # nothing has expired
            if line.claim(self._stamp):  # the heap is ours: the set at the next stamp
                gone: dict[_Key, RevocationRecord | None] = {}
                while expiry and expiry[0][0] <= now:
                    _, _, key = heapq.heappop(expiry)
                    record = self.get(key)
                    if record is not None and record.expires_at <= now:
                        gone[key] = None
                return self._apply(gone, self.version, claimed=True)
        expired = [k for k, r in self._record_map().items() if r.expires_at <= now]  # a branch
        return self._derive(dict.fromkeys(expired), self.version) if expired else self

    def with_records(
        self, records: Iterable[RevocationRecord], *, version: int | None = None
    ) -> RevocationSet:
        """A new set with ``records`` added (merged with existing ones)."""
        changes: dict[_Key, RevocationRecord | None] = {}
        for record in records:
            if not isinstance(record, RevocationRecord):
                raise InvalidRequest("a revocation set holds RevocationRecord values")
            key = record.key
            known = changes.get(key) or self.get(key)
            changes[key] = record if known is None else known.merged(record)
        return self._derive(changes, version)

    def without(
        self, keys: Iterable[tuple[RevocationKind, str, str]], *, version: int | None = None
    ) -> RevocationSet:
        """A new set without the records of ``keys`` (absent keys are ignored)."""
        return self._derive(dict.fromkeys(keys), version)

    def with_changes(
        self,
        put: Iterable[RevocationRecord],
        removed: Iterable[tuple[RevocationKind, str, str]] = (),
        *,
        version: int | None = None,
    ) -> RevocationSet:
        """A new set where ``put`` replaces the records of the same keys (no merge) and the
        records of ``removed`` are gone: a delta received from a feed, applied as is."""
        changes: dict[_Key, RevocationRecord | None] = dict.fromkeys(removed)
        for record in put:
            if not isinstance(record, RevocationRecord):
                raise InvalidRequest("a revocation set holds RevocationRecord values")
            changes[record.key] = record
        return self._derive(changes, version)

    def _derive(
        self, changes: dict[_Key, RevocationRecord | None], version: int | None
    ) -> RevocationSet:
        next_version = self.version if version is None else version
        _check_version(next_version)
        return self._apply(changes, next_version, claimed=self._line.claim(self._stamp))

    def _apply(
        self, changes: dict[_Key, RevocationRecord | None], version: int, *, claimed: bool
    ) -> RevocationSet:
        """The set with ``changes``: written into the shared histories at the next stamp when
        this set ``claimed`` it (it was the newest of its line), else built afresh."""
        line = self._line
        count = self._count
        for key, record in changes.items():
            count += (record is not None) - (self.get(key) is not None)
        if not claimed or line.garbage > max(_MIN_GARBAGE, count):
            records = self._record_map()  # a branch, or time to drop superseded values
            for key, record in changes.items():
                if record is None:
                    records.pop(key, None)
                else:
                    records[key] = record
            return self._fresh(records, version)
        stamp = self._stamp + 1
        for key, record in changes.items():
            line.put(key, record, stamp)
        line.changed.append(tuple(changes))  # at index ``stamp``: what changes_since reads
        line.tip = stamp
        return self._at(line, stamp, count, version)

    def changes_since(
        self, older: RevocationSet
    ) -> tuple[list[RevocationRecord], list[tuple[RevocationKind, str, str]]] | None:
        """What turns ``older`` into this set: (records put, keys removed), in O(changes), when
        both are of one line of derivation and ``older`` is not newer; None when this set was
        built afresh since (a full load, a branch, a rebuild that dropped superseded values)."""
        line = self._line
        if older._line is not line or older._stamp > self._stamp:
            return None
        keys: dict[_Key, None] = {}
        for stamp in range(older._stamp + 1, self._stamp + 1):
            keys.update(dict.fromkeys(line.changed[stamp]))
        put: list[RevocationRecord] = []
        removed: list[_Key] = []
        for key in keys:
            record, before = self.get(key), older.get(key)
            if record is None:
                if before is not None:
                    removed.append(key)
            elif record != before:
                put.append(record)
        return put, removed

    # -- whole-set views -----------------------------------------------------------------------

    def _record_map(self) -> dict[_Key, RevocationRecord]:
        stamp, out = self._stamp, {}
        for key, h in self._line.records.items():
            value = h[-1] if h[-2] <= stamp else _older(h, stamp)
            if isinstance(value, RevocationRecord):
                out[key] = value
        return out

    def records(self) -> tuple[RevocationRecord, ...]:
        """All records, ordered by (kind, value)."""
        records = self._record_map()
        return tuple(records[k] for k in sorted(records))

    def __len__(self) -> int:
        return self._count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RevocationSet):
            return NotImplemented
        return (
            self.version == other.version
            and self._count == other._count
            and self._record_map() == other._record_map()
        )

    def __hash__(self) -> int:
        return hash((self.version, frozenset(self._record_map().values())))

    def __repr__(self) -> str:
        return f"RevocationSet(version={self.version}, records={self._count})"


_Key = tuple[RevocationKind, str, str]
_History = list[Any]  # [stamp, value, stamp, value, ...]; value None = absent from that stamp on
_MIN_GARBAGE = 1024  # superseded values tolerated before a derived set is built afresh


def _older(h: _History, stamp: int) -> Any:
    """The value of history ``h`` at ``stamp`` when its newest entry is later (a reader of an
    older set while newer ones exist)."""
    i = len(h) - 4
    while i >= 0:
        if h[i] <= stamp:
            return h[i + 1]
        i -= 2
    return None


class _Line:
    """The indexes shared by the sets of one line of derivation: per key, its history of values
    by stamp. Histories only grow, so a reader never sees an index shrink under it; ``tip`` is
    the stamp of the newest set, the only one derived without a rebuild."""

    __slots__ = (
        "any_issuer",
        "changed",
        "every_serial",
        "expiry",
        "garbage",
        "ids",
        "jtis",
        "records",
        "seq",
        "serial_count",
        "serials",
        "stamps",
        "tip",
    )

    def __init__(self) -> None:
        self.tip = 0
        self.stamps = itertools.count(1)  # next() is atomic: one claimer per stamp
        self.garbage = 0  # superseded history entries
        self.seq = 0
        self.changed: list[tuple[_Key, ...]] = [()]  # per stamp: the keys its derivation set
        self.records: dict[_Key, _History] = {}
        self.serials: dict[tuple[str, int], _History] = {}  # serial records with an issuer
        self.any_issuer: dict[int, _History] = {}  # serial records without one
        self.every_serial: dict[int, _History] = {}  # serial -> count of records, any issuer
        self.serial_count: _History = [0, 0]
        self.jtis: dict[str, _History] = {}
        self.ids: dict[str, _History] = {}  # SPIFFE ID -> revoked_at
        self.expiry: list[tuple[datetime, int, _Key]] = []  # heap: (expires_at, seq, key)

    def claim(self, stamp: int) -> bool:
        """Whether the set at ``stamp`` may write the next stamp: true for exactly one caller,
        and only while ``stamp`` is the newest (two threads deriving from one set: one writes,
        the other builds afresh)."""
        return self.tip == stamp and next(self.stamps) == stamp + 1

    def put(self, key: _Key, record: RevocationRecord | None, stamp: int) -> None:
        """Set ``key`` to ``record`` (None: remove it) from ``stamp`` on (stamp 0: the first
        build, which heapifies afterwards)."""
        old = _last(self.records.get(key))
        if old is record:
            return
        self._set(self.records, key, record, stamp)
        kind, value, issuer = key
        if record is not None:
            self.seq += 1
            entry = (record.expires_at, self.seq, key)
            if stamp:
                heapq.heappush(self.expiry, entry)
            else:
                self.expiry.append(entry)
        if kind is RevocationKind.JTI:
            self._set(self.jtis, value, None if record is None else True, stamp)
        elif kind is RevocationKind.SPIFFE_ID:
            self._set(self.ids, value, None if record is None else record.revoked_at, stamp)
        elif (old is None) != (record is None):  # a serial appears or disappears
            serial = int(value, 16)
            present = None if record is None else True
            if issuer:
                self._set(self.serials, (issuer, serial), present, stamp)
            else:
                self._set(self.any_issuer, serial, present, stamp)
            step = 1 if record is not None else -1
            n = (_last(self.every_serial.get(serial)) or 0) + step
            self._set(self.every_serial, serial, n or None, stamp)
            self._append(self.serial_count, _last(self.serial_count) + step, stamp)

    def _set(self, index: dict[Any, _History], key: Any, value: Any, stamp: int) -> None:
        h = index.get(key)
        if h is None:
            if value is not None:
                index[key] = [stamp, value]
            return
        last = h[-1]
        if last is value or (value is not None and last is not None and last == value):
            return
        self._append(h, value, stamp)

    def _append(self, h: _History, value: Any, stamp: int) -> None:
        if h[-2] == stamp:
            h[-1] = value  # written earlier in this derivation: no set has seen it
        else:
            h.extend((stamp, value))  # one call: a reader sees both items or neither
            self.garbage += 1


def _last(h: _History | None) -> Any:
    return None if h is None else h[-1]


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidRequest("version must be a non-negative integer")


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


RevocationSet.EMPTY = RevocationSet.of(())
