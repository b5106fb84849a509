"""Registration entries: which SPIFFE ID an agent may obtain for a workload with given selectors.

An entry is a value. The store assigns and bumps ``revision``; the CA applies its own policy
(trust domain membership, the reserved ``/s2s/`` path, TTL caps) before storing one.
The JSON shape (``to_json``/``from_json``) is the one the admin and agent APIs speak::

    {"id": "...", "spiffe_id": "spiffe://td/x", "parent_id": "spiffe://td/s2s/agent/...",
     "selectors": ["unix:uid:1000"], "x509_svid_ttl": 300, "jwt_svid_ttl": 300,
     "dns_names": [], "hint": "", "federates_with": ["other.org"], "revision": 1,
     "created_at": "2030-01-01T00:00:00+00:00"}

TTLs are whole seconds; ``created_at`` is ISO 8601 with an offset, or null. ``federates_with``
names the foreign trust domains whose bundles workloads of this entry receive (SPIFFE Workload API:
``federated_bundles``); it is optional, sorted, and left out when empty.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s2s.core.b64 import b64url_encode
from s2s.core.errors import InvalidRequest, InvalidSelector, InvalidSpiffeId
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "DEFAULT_SVID_TTL",
    "MAX_DNS_NAMES",
    "MAX_FEDERATES_WITH",
    "MAX_HINT_CHARS",
    "MAX_SELECTORS",
    "MAX_TTL",
    "RegistrationEntry",
    "new_entry_id",
]

DEFAULT_SVID_TTL = dt.timedelta(minutes=5)
MAX_TTL = dt.timedelta(days=3650)  # sanity bound only; the CA enforces the operator's cap
MAX_SELECTORS = 64
MAX_DNS_NAMES = 32
MAX_HINT_CHARS = 256
MAX_FEDERATES_WITH = 64

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_FIELDS = frozenset(
    {
        "id",
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "hint",
        "federates_with",
        "revision",
        "created_at",
    }
)
_REQUIRED = ("id", "spiffe_id", "parent_id", "selectors")


def new_entry_id(entropy: bytes) -> str:
    """A url-safe entry id from random bytes (pass ``os.urandom(16)``). It never starts with
    ``-`` or ``_``: the top bit of the first byte is cleared, so that a command line does not take
    the id for an option (``s2s-ca entry update -afs...``).

    >>> new_entry_id(bytes(16))
    'AAAAAAAAAAAAAAAAAAAAAA'
    >>> new_entry_id(bytes([0xF8]) + bytes(15))[0]  # '-' without the cleared bit
    'e'
    """
    if len(entropy) < 16:
        raise InvalidRequest("an entry id needs at least 16 random bytes")
    return b64url_encode(bytes([entropy[0] & 0x7F]) + entropy[1:48])


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """One registration entry.

    >>> from s2s.core.selectors import parse_selectors
    >>> e = RegistrationEntry(
    ...     id="e1",
    ...     spiffe_id=SpiffeId.parse("spiffe://example.org/billing"),
    ...     parent_id=SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a1"),
    ...     selectors=parse_selectors(["unix:uid:1001"]),
    ... )
    >>> RegistrationEntry.from_json(e.to_json()) == e
    True
    >>> e.to_json()["x509_svid_ttl"]
    300
    """

    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: frozenset[Selector]
    x509_svid_ttl: dt.timedelta = DEFAULT_SVID_TTL
    jwt_svid_ttl: dt.timedelta = DEFAULT_SVID_TTL
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    federates_with: frozenset[TrustDomain] = frozenset()
    revision: int = 0
    created_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)
        for name in ("spiffe_id", "parent_id"):
            if not isinstance(getattr(self, name), SpiffeId):
                raise InvalidRequest(f"entry {name} must be a SpiffeId")
        _check_selectors(self.selectors)
        _check_ttl("x509_svid_ttl", self.x509_svid_ttl)
        _check_ttl("jwt_svid_ttl", self.jwt_svid_ttl)
        _check_dns_names(self.dns_names)
        _check_hint(self.hint)
        _check_federates_with(self.federates_with)
        if type(self.revision) is not int or self.revision < 0:
            raise InvalidRequest("entry revision must be a non-negative integer")
        if self.created_at is not None and (
            not isinstance(self.created_at, dt.datetime) or self.created_at.tzinfo is None
        ):
            raise InvalidRequest("entry created_at must be an aware datetime")

    @property
    def key(self) -> tuple[SpiffeId, SpiffeId, frozenset[Selector]]:
        """What makes an entry unique: (spiffe_id, parent_id, selectors)."""
        return (self.spiffe_id, self.parent_id, self.selectors)

    def to_json(self) -> dict[str, Any]:
        """The JSON object for this entry (selectors sorted, TTLs in seconds)."""
        doc = {
            "id": self.id,
            "spiffe_id": str(self.spiffe_id),
            "parent_id": str(self.parent_id),
            "selectors": sorted(str(s) for s in self.selectors),
            "x509_svid_ttl": int(self.x509_svid_ttl.total_seconds()),
            "jwt_svid_ttl": int(self.jwt_svid_ttl.total_seconds()),
            "dns_names": list(self.dns_names),
            "hint": self.hint,
            "revision": self.revision,
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
        }
        # Left out when empty, so agents of an older release keep reading these entries.
        if self.federates_with:
            doc["federates_with"] = sorted(str(td) for td in self.federates_with)
        return doc

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RegistrationEntry:
        """Parse the JSON object of an entry; raises :class:`InvalidRequest` naming the field."""
        if not isinstance(d, Mapping):
            raise InvalidRequest("a registration entry must be a JSON object")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown registration entry field(s): {', '.join(unknown)}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise InvalidRequest(f"registration entry is missing: {', '.join(missing)}")
        return cls(
            id=_text(d, "id"),
            spiffe_id=_spiffe_id(d, "spiffe_id"),
            parent_id=_spiffe_id(d, "parent_id"),
            selectors=_selectors(d.get("selectors")),
            x509_svid_ttl=_ttl(d, "x509_svid_ttl"),
            jwt_svid_ttl=_ttl(d, "jwt_svid_ttl"),
            dns_names=_dns_names(d.get("dns_names", [])),
            hint=_text(d, "hint", default=""),
            federates_with=_trust_domains(d.get("federates_with", [])),
            revision=_int(d, "revision", default=0),
            created_at=_timestamp(d.get("created_at")),
        )


def _check_id(value: object) -> None:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise InvalidRequest("entry id must be 1-64 characters of letters, digits, '_' or '-'")


def _check_selectors(selectors: object) -> None:
    if not isinstance(selectors, frozenset) or not all(isinstance(s, Selector) for s in selectors):
        raise InvalidRequest("entry selectors must be a frozenset of Selector")
    if not selectors:
        raise InvalidRequest("an entry needs at least one selector")
    if len(selectors) > MAX_SELECTORS:
        raise InvalidRequest(f"an entry has at most {MAX_SELECTORS} selectors")


def _check_ttl(name: str, ttl: object) -> None:
    if not isinstance(ttl, dt.timedelta) or ttl <= dt.timedelta(0):
        raise InvalidRequest(f"{name} must be a positive duration")
    if ttl > MAX_TTL or ttl.microseconds or ttl.total_seconds() % 1:
        raise InvalidRequest(f"{name} must be whole seconds and at most {MAX_TTL.days} days")


def _check_dns_names(names: object) -> None:
    if not isinstance(names, tuple):
        raise InvalidRequest("entry dns_names must be a tuple of names")
    if len(names) > MAX_DNS_NAMES:
        raise InvalidRequest(f"an entry has at most {MAX_DNS_NAMES} DNS names")
    for name in names:
        if not isinstance(name, str) or not _is_dns_name(name):
            raise InvalidRequest(f"invalid DNS name {name!r}: use lowercase RFC 1123 host names")
    if len(set(names)) != len(names):
        raise InvalidRequest("entry dns_names has duplicates")


def _is_dns_name(name: str) -> bool:
    if len(name) > 253:
        return False
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:  # one leading wildcard label (RFC 6125 6.4.3)
        labels = labels[1:]
    return all(_DNS_LABEL.fullmatch(label) is not None for label in labels)


def _check_hint(hint: object) -> None:
    if not isinstance(hint, str) or len(hint) > MAX_HINT_CHARS:
        raise InvalidRequest(f"entry hint must be text of at most {MAX_HINT_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in hint):
        raise InvalidRequest("entry hint must not contain control characters")


def _check_federates_with(tds: object) -> None:
    if not isinstance(tds, frozenset) or not all(isinstance(td, TrustDomain) for td in tds):
        raise InvalidRequest("entry federates_with must be a frozenset of TrustDomain")
    if len(tds) > MAX_FEDERATES_WITH:
        raise InvalidRequest(f"an entry federates with at most {MAX_FEDERATES_WITH} trust domains")


def _trust_domains(value: object) -> frozenset[TrustDomain]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise InvalidRequest("federates_with must be a list of trust domain names")
    if len(value) > MAX_FEDERATES_WITH:
        raise InvalidRequest(f"an entry federates with at most {MAX_FEDERATES_WITH} trust domains")
    try:
        return frozenset(TrustDomain.parse(n) for n in value)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"federates_with: {exc}") from exc


def _text(d: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string")
    return value


def _int(d: Mapping[str, Any], key: str, *, default: int) -> int:
    value = d.get(key, default)
    if type(value) is not int:
        raise InvalidRequest(f"{key} must be an integer")
    return value


def _spiffe_id(d: Mapping[str, Any], key: str) -> SpiffeId:
    try:
        return SpiffeId.parse(d[key])
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"{key}: {exc}") from exc


def _selectors(value: object) -> frozenset[Selector]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("selectors must be a non-empty list like ['unix:uid:1000']")
    if len(value) > MAX_SELECTORS:
        raise InvalidRequest(f"an entry has at most {MAX_SELECTORS} selectors")
    try:
        return frozenset(Selector.parse(s) for s in value)
    except InvalidSelector as exc:
        raise InvalidRequest(f"selectors: {exc}") from exc


def _ttl(d: Mapping[str, Any], key: str) -> dt.timedelta:
    if key not in d:
        return DEFAULT_SVID_TTL
    value = d[key]
    if type(value) is not int or value <= 0 or value > MAX_TTL.total_seconds():
        raise InvalidRequest(
            f"{key} must be a positive whole number of seconds (at most {MAX_TTL.days} days)"
        )
    return dt.timedelta(seconds=value)


def _dns_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise InvalidRequest("dns_names must be a list of strings")
    return tuple(value)


def _timestamp(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("created_at must be an ISO 8601 string or null")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"created_at is not an ISO 8601 timestamp: {value[:40]!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest("created_at must carry a UTC offset")
    return parsed.astimezone(dt.UTC)
