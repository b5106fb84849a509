"""What both store backends share: records as compact JSON documents, and the argument checks
every backend makes before it writes.

A record is stored as ``to_json()`` dumped compact with sorted keys (the etcd layout and the SQLite
``doc`` column hold the same text); a stored document that no longer parses is a
:class:`StoreError` (the store is corrupt), never the caller's ``InvalidRequest``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Protocol, TypeVar

from s2s.core.errors import Conflict, InvalidRequest, StoreError

__all__ = [
    "FromJson",
    "Revised",
    "check_revision",
    "check_text",
    "decode_doc",
    "encode_doc",
    "revised",
]

_T = TypeVar("_T")
_R_co = TypeVar("_R_co", covariant=True)
_V = TypeVar("_V", bound="Revised")


class FromJson(Protocol[_R_co]):
    """A record class's ``from_json``."""

    def __call__(self, d: Any, /) -> _R_co: ...


class Revised(Protocol):
    """A record the store revises on update (a registration entry, an agent)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def revision(self) -> int: ...

    @property
    def created_at(self) -> Any: ...


def encode_doc(record: Any) -> str:
    """``record.to_json()`` as compact JSON with sorted keys."""
    return json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True)


def decode_doc(doc: str | bytes, parse: FromJson[_T]) -> _T:
    """Parse a stored document with ``parse``; anything unreadable is ``StoreError``."""
    try:
        return parse(json.loads(doc))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"a stored record is unreadable (corrupt store?): {exc}") from exc


def check_text(what: str, key: object, value: object) -> None:
    """A setting or state write needs a non-empty text key and a text value (or None)."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"a {what} key must be non-empty text")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"a {what} value must be text")


def check_revision(what: str, current: int, expected: int) -> None:
    """``Conflict`` unless the stored revision is the one the caller read."""
    if current != expected:
        raise Conflict(f"{what} is at revision {current}, not {expected}: re-read and retry")


def revised(what: str, current: _V, new: _V, expected_revision: int) -> _V:
    """What an update stores: ``new`` at ``current``'s next revision, keeping its ``created_at``.

    ``Conflict`` unless ``current`` is still at ``expected_revision``."""
    check_revision(what, current.revision, expected_revision)
    return dataclasses.replace(new, revision=current.revision + 1, created_at=current.created_at)
