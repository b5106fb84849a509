"""Structured logging shared by the CA and the agent: one JSON object per line, or (``text``) one
``key=value`` line with the same fields.

Field names are defined once here (``F``) and used as keys in ``extra=``; both formatters copy
every known field from the record into the line. Messages are event names (``svid.issued``).
Secrets never go in a field: callers pass IDs, serials and counts, not keys or tokens.

>>> import io, json, logging
>>> stream = io.StringIO()
>>> handler = logging.StreamHandler(stream)
>>> handler.setFormatter(JsonFormatter(clock=lambda: 0.0))
>>> log = logging.getLogger("s2s.doctest"); log.propagate = False; log.addHandler(handler)
>>> log.warning("svid.issued", extra={F.SPIFFE_ID: "spiffe://example.org/a", F.SERIAL: "0a"})
>>> line = json.loads(stream.getvalue())
>>> line["ts"], line["event"], line["spiffe_id"], line["serial"]
('1970-01-01T00:00:00.000Z', 'svid.issued', 'spiffe://example.org/a', '0a')
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, TextIO

__all__ = [
    "F",
    "FIELDS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "describe_exception",
]


class F:
    """Log field names: the only place they are spelled."""

    SPIFFE_ID: Final = "spiffe_id"
    SERIAL: Final = "serial"
    AGENT_ID: Final = "agent_id"
    ENTRY_ID: Final = "entry_id"
    ISSUER: Final = "issuer"
    KIND: Final = "kind"
    AUDIENCE: Final = "audience"
    NOT_AFTER: Final = "not_after"
    JTI: Final = "jti"
    KID: Final = "kid"
    TRUST_DOMAIN: Final = "trust_domain"
    ACTION: Final = "action"
    ACTOR: Final = "actor"
    COUNT: Final = "count"
    REVISION: Final = "revision"
    METHOD: Final = "method"
    PATH: Final = "path"
    STATUS: Final = "status"
    DURATION_MS: Final = "duration_ms"
    PEER: Final = "peer"
    ERROR: Final = "error"
    REASON: Final = "reason"
    ADDRESS: Final = "address"
    SOCKET: Final = "socket"
    DATA_DIR: Final = "data_dir"
    LOOP: Final = "loop"
    PID: Final = "pid"
    UID: Final = "uid"
    STATE: Final = "state"
    AUTHORITY_ID: Final = "authority_id"
    SETTING: Final = "setting"
    VALUE: Final = "value"
    SOURCE: Final = "source"
    REPLICA: Final = "replica"
    LEADER: Final = "leader"
    BEFORE: Final = "before"
    AFTER: Final = "after"
    LIMIT: Final = "limit"


FIELDS: Final[tuple[str, ...]] = tuple(
    value for name, value in vars(F).items() if name.isupper() and isinstance(value, str)
)


def _iso_millis(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | frozenset | set):
        return [_jsonable(v) for v in value]
    return str(value)


class _FieldFormatter(logging.Formatter):
    """What both formats carry: time, level, logger, event, the known fields, the exception."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, extra_fields: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self._clock = clock
        self._fields = FIELDS + tuple(f for f in extra_fields if f not in FIELDS)

    def _line(self, record: logging.LogRecord) -> dict[str, Any]:
        seconds = self._clock() if self._clock is not None else record.created
        line: dict[str, Any] = {
            "ts": _iso_millis(seconds),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in self._fields:
            if name in record.__dict__:
                line[name] = _jsonable(record.__dict__[name])
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = describe_exception(record.exc_info[1])
        return line


class JsonFormatter(_FieldFormatter):
    """Formats a record as one JSON line: ts, level, logger, event, then the known fields."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self._line(record), separators=(", ", ": "))


class TextFormatter(_FieldFormatter):
    """Formats a record for people, with the same fields as :class:`JsonFormatter`:
    ``<ts> <LEVEL> <logger> <event> key=value ...``; a value with a space, a quote, an ``=``, a
    control character or nothing at all is quoted (JSON string escapes), lists are
    comma-separated.

    >>> record = logging.LogRecord("s2s.audit", logging.INFO, "", 0, "audit.admin.change", None,
    ...                            None)
    >>> record.__dict__.update(action="entry.create", entry_id="e1", reason="a b", count=2)
    >>> TextFormatter(clock=lambda: 0.0).format(record)
    '1970-01-01T00:00:00.000Z INFO s2s.audit audit.admin.change entry_id=e1 action=entry.create \
count=2 reason="a b"'
    """

    def format(self, record: logging.LogRecord) -> str:
        line = self._line(record)
        head = f"{line.pop('ts')} {line.pop('level').upper()} {line.pop('logger')}"
        words = [head, _text_value(line.pop("event"))]
        words += [f"{key}={_text_value(value)}" for key, value in line.items()]  # JSON's order
        return " ".join(words)


def _text_value(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join("" if v is None else str(v) for v in value)
    elif value is None:
        value = "null"
    elif isinstance(value, bool):
        value = "true" if value else "false"
    text = str(value)
    needs_quotes = not text or any(c in text for c in ' "=\\') or not text.isprintable()
    return json.dumps(text) if needs_quotes else text


def describe_exception(exc: BaseException) -> str:
    """``Type: message``; for an exception group (what a crashed TaskGroup raises) also each
    exception inside it and where it was raised, which the group's own message never says."""
    text = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, BaseExceptionGroup):
        return text
    leaves = [_located(e) for e in _leaves(exc)]
    return f"{text}: " + "; ".join(leaves)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def _located(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ""
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" (in {code.co_name}, {os.path.basename(code.co_filename)}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def configure_logging(
    *,
    level: str | int = "INFO",
    json_format: bool = True,
    stream: TextIO | None = None,
    extra_fields: Iterable[str] = (),
) -> None:
    """Route the ``s2s`` loggers to ``stream`` (stderr) with the JSON (or text) formatter.

    Called once by a composition root (``ca/app.py``, ``agent/app.py``); libraries never call it.
    ``extra_fields`` names module-specific ``extra=`` keys to keep (e.g. the audit fields).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter if json_format else TextFormatter
    handler.setFormatter(formatter(extra_fields=extra_fields))
    root = logging.getLogger("s2s")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.Formatter.converter = time.gmtime
