"""JSON field readers and writers for the store's records; each reader names the field it
could not read (:class:`InvalidRequest`). Datetimes are ISO 8601 with offset and must be aware,
bytes are base64, serials lowercase hex. Used by :mod:`s2s.store.records`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any

from s2s.core.errors import InvalidRequest, InvalidSpiffeId
from s2s.core.spiffe_id import SpiffeId

__all__ = [
    "b64_text",
    "check_aware",
    "iso_text",
    "read_b64",
    "read_field",
    "read_hex_int",
    "read_object",
    "read_opt_hex_int",
    "read_opt_sid",
    "read_sid",
    "read_time",
]


def check_aware(name: str, value: object) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` is an aware datetime."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise InvalidRequest(f"{name} must be an aware datetime (UTC)")


# -- JSON field readers: each names the field it could not read --


def read_object(d: object, what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise InvalidRequest(f"{what} must be a JSON object")
    return d


def read_field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise InvalidRequest(f"field {key!r} is missing or has the wrong type")
    return value


def read_time(d: Mapping[str, Any], key: str) -> dt.datetime:
    text = read_field(d, key, str)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"field {key!r} is not an ISO 8601 timestamp") from None
    check_aware(f"field {key!r}", value)
    return value.astimezone(dt.UTC)


def read_sid(d: Mapping[str, Any], key: str) -> SpiffeId:
    try:
        return SpiffeId.parse(read_field(d, key, str))
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"field {key!r}: {exc}") from exc


def read_opt_sid(d: Mapping[str, Any], key: str) -> SpiffeId | None:
    return None if d.get(key) is None else read_sid(d, key)


def read_b64(d: Mapping[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(read_field(d, key, str), validate=True)
    except binascii.Error:
        raise InvalidRequest(f"field {key!r} is not base64") from None


def read_hex_int(d: Mapping[str, Any], key: str) -> int:
    text = read_field(d, key, str)
    try:
        return int(text, 16)
    except ValueError:
        raise InvalidRequest(f"field {key!r} is not a hex serial") from None


def read_opt_hex_int(d: Mapping[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else read_hex_int(d, key)


def iso_text(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def b64_text(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
