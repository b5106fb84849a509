"""JSON in and out of the CA's HTTP adapters: the error-code-to-status table, JSON responses,
bounded JSON request bodies, typed fields, PEM fields and query numbers.

HTTP statuses are chosen here and in ``http_middleware`` only: nothing below
the adapters picks one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, TypeVar

from aiohttp import web

from s2s.ca.signers import MAX_CSR_BYTES
from s2s.core.errors import InvalidRequest, S2SError

__all__ = [
    "BATCH_BODY_LIMIT",
    "BODY_TIMEOUT",
    "CSR_LABEL",
    "DEFAULT_BODY_LIMIT",
    "DEFAULT_BODY_TIMEOUT",
    "MAX_SECONDS",
    "RETRY_AFTER",
    "STATUS_BY_CODE",
    "RequestError",
    "error_response",
    "field",
    "json_response",
    "optional_ttl",
    "pem_to_der",
    "query_number",
    "read_json",
    "seconds_field",
    "status_for",
]

_N = TypeVar("_N", int, float)
CSR_LABEL: Final = "CERTIFICATE REQUEST"

DEFAULT_BODY_LIMIT: Final = 64 * 1024
DEFAULT_BODY_TIMEOUT: Final = 10.0  # seconds from the headers to the whole body
BODY_TIMEOUT: Final = web.AppKey("body_timeout", float)
BATCH_BODY_LIMIT: Final = 1024 * 1024
RETRY_AFTER: Final = 1  # seconds a 503 tells the caller to wait (a replica may be cut off)
# Longest duration a request may name (ten years); the registry applies the real caps, this
# only keeps absurd numbers from overflowing a timedelta.
MAX_SECONDS: Final = 10 * 366 * 24 * 3600

# One place that turns an error code into an HTTP status.
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "invalid_spiffe_id": 400,
    "invalid_selector": 400,
    "invalid_svid": 400,
    "invalid_bundle": 400,
    "invalid_token": 401,
    "attestation_failed": 401,
    "not_authorized": 403,
    "revoked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "request_timeout": 408,
    "too_large": 413,
    "unsupported_media_type": 415,
    "invalid_config": 500,
    "internal": 500,
    "unavailable": 503,
    "store_error": 503,
}


def status_for(code: str) -> int:
    """The HTTP status for an error ``code`` (500 for codes this table does not know)."""
    return STATUS_BY_CODE.get(code, 500)


def json_response(body: Any, *, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(code: str, message: str, *, status: int | None = None) -> web.Response:
    """The JSON error body every endpoint uses; a 503 says when to retry (``Retry-After``)."""
    status = status or status_for(code)
    response = json_response({"error": code, "message": message}, status=status)
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


class RequestError(S2SError):
    """An HTTP-level refusal (body too large, wrong content type) with its own code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


async def read_json(request: web.Request, *, limit: int = DEFAULT_BODY_LIMIT) -> dict[str, Any]:
    """Read a JSON object body of at most ``limit`` bytes, or raise a clear error.

    415 for a content type other than ``application/json``, 413 above the limit, 400 for text
    that is not a JSON object.
    """
    if request.content_type != "application/json":
        raise RequestError(
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type or 'none'!r}",
        )
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("too_large", f"request body is larger than {limit} bytes")
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            raw = await _read_body(request, limit)
    except TimeoutError:
        raise RequestError(
            "request_timeout", f"the request body did not arrive within {timeout:g} s"
        ) from None
    if len(raw) > limit:
        raise RequestError("too_large", f"request body is larger than {limit} bytes")
    try:
        # what json.loads does with bytes, with one decoder built once instead of per request
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except InvalidRequest:
        raise
    except RecursionError as exc:
        raise InvalidRequest("request body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise InvalidRequest(f"request body is not valid JSON: {_short(exc)}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, up to ``limit + 1`` bytes (``read(n)`` returns what has arrived so far, which
    may be one TLS record of a longer body)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259 6); Python's parser accepts them by default."""
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON number")


def _short(exc: ValueError, limit: int = 200) -> str:
    """The parser's reason, cut short (an over-long integer's message names its size only)."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object without repeated names (which parsers disagree on, RFC 8259 4)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise InvalidRequest("request body repeats a field name")
    return out


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    """``body[name]`` if present and of ``kind``; otherwise an ``InvalidRequest`` naming it."""
    if name not in body:
        raise InvalidRequest(f"missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"field {name!r} has the wrong type")
    return value


def pem_to_der(text: object, *, label: str, name: str) -> bytes:
    """The DER inside one PEM block of ``label`` (``CERTIFICATE REQUEST``), or InvalidRequest."""
    if not isinstance(text, str) or len(text) > MAX_CSR_BYTES * 2:
        raise InvalidRequest(
            f"field {name!r} must be a PEM {label} of at most {MAX_CSR_BYTES} bytes"
        )
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start or text.find(begin, start + 1) >= 0:
        raise InvalidRequest(f"field {name!r} must hold exactly one PEM {label} block")
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"field {name!r} has invalid base64 in its PEM block") from exc


def seconds_field(body: Mapping[str, Any], name: str) -> timedelta:
    """``body[name]`` as a positive whole number of seconds (at most ``MAX_SECONDS``)."""
    seconds = field(body, name, int)
    if not 0 < seconds <= MAX_SECONDS:
        raise InvalidRequest(
            f"{name!r} must be a positive number of seconds, at most {MAX_SECONDS}"
        )
    return timedelta(seconds=seconds)


def optional_ttl(body: Mapping[str, Any]) -> timedelta | None:
    """``body["ttl"]`` as a positive number of seconds, None when absent or null."""
    if body.get("ttl") is None:
        return None
    return seconds_field(body, "ttl")


def query_number(request: web.Request, name: str, kind: type[_N], *, default: _N) -> _N:
    """Query parameter ``name`` as a non-negative number, ``default`` when absent."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise InvalidRequest(f"query parameter {name!r} must be a number") from None
    if not value >= 0:  # negative or NaN
        raise InvalidRequest(f"query parameter {name!r} must not be negative")
    return value
