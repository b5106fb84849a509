"""What both store backends share: records as compact JSON documents, and the argument checks
every backend makes before it writes.

A record is stored as ``to_json()`` dumped compact with sorted keys (the etcd layout and the SQLite
``doc`` column hold the same text); a stored document that no longer parses is a
:class:`StoreError` (the store is corrupt), never the caller's ``InvalidRequest``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, TypeVar

from s2s.core.errors import Conflict, InvalidRequest, StoreError

__all__ = ["FromJson", "check_revision", "check_text", "decode_doc", "encode_doc"]

_T = TypeVar("_T")
_R_co = TypeVar("_R_co", covariant=True)


class FromJson(Protocol[_R_co]):
    """A record class's ``from_json``."""

    def __call__(self, d: Any, /) -> _R_co: ...


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
