"""``--log-format text``: the same fields as the JSON lines, as ``key=value`` after the event
(quoted when they need it), for every logger the CA and the agent configure."""

from __future__ import annotations

import io
import json
import logging
import shlex
from collections.abc import Iterator

import pytest

from s2s.ca.audit import AUDIT_FIELDS, AUDIT_LOGGER, AuditLog
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F, TextFormatter, configure_logging

AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/abc")


@pytest.fixture
def restore_s2s_logger() -> Iterator[None]:
    root = logging.getLogger("s2s")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


def _both(emit: object) -> tuple[dict[str, object], str]:
    """(the JSON line, the text line) of the same log calls."""
    lines = []
    for json_format in (True, False):
        stream = io.StringIO()
        configure_logging(json_format=json_format, stream=stream, extra_fields=AUDIT_FIELDS)
        emit()  # type: ignore[operator]
        lines.append(stream.getvalue().strip())
    return json.loads(lines[0]), lines[1]


def _fields_of(text: str) -> tuple[list[str], dict[str, str]]:
    """(ts, LEVEL, logger, event) and key -> value of a text line, read like a shell would."""
    words = shlex.split(text, posix=True)
    head = words[:4]
    return head, dict(w.split("=", 1) for w in words[4:])


@pytest.mark.usefixtures("restore_s2s_logger")
def test_an_audit_line_carries_every_json_field_in_text() -> None:
    line, text = _both(
        lambda: AuditLog().admin_change(
            "entry.create", target="e-1", entry_id="e-1", spiffe_id=AGENT, agent_id=AGENT
        )
    )
    head, fields = _fields_of(text)
    assert head[1:] == ["INFO", AUDIT_LOGGER, "audit.admin.change"]
    expected = {k: str(v) for k, v in line.items() if k not in ("ts", "level", "logger", "event")}
    assert expected  # action, target, entry_id, spiffe_id, agent_id, actor, audit_event
    assert fields == expected
    assert "entry_id=e-1" in text
    assert f"spiffe_id={AGENT}" in text


@pytest.mark.usefixtures("restore_s2s_logger")
def test_values_that_need_it_are_quoted_and_lists_are_joined() -> None:
    log = logging.getLogger("s2s.test_log_text")

    def emit() -> None:
        log.warning(
            "store.failed",
            extra={
                F.ERROR: 'etcd said "no" = down\nretrying',
                F.REASON: "",
                F.AUDIENCE: ["billing", "shop"],
                F.COUNT: 3,
            },
        )

    line, text = _both(emit)
    head, fields = _fields_of(text)
    assert head[1:] == ["WARNING", "s2s.test_log_text", "store.failed"]
    assert "\n" not in text  # one line per record, always
    assert 'error="etcd said \\"no\\" = down\\nretrying"' in text
    assert 'reason=""' in text
    assert fields["audience"] == "billing,shop"
    assert fields["count"] == "3"
    assert line["error"] == 'etcd said "no" = down\nretrying'  # the JSON line is unchanged


@pytest.mark.usefixtures("restore_s2s_logger")
def test_an_exception_is_a_field_in_text_too() -> None:
    log = logging.getLogger("s2s.test_log_text")

    def emit() -> None:
        try:
            raise ValueError("the store said no")
        except ValueError:
            log.exception("loop.crashed", extra={F.LOOP: "sync"})

    line, text = _both(emit)
    _, fields = _fields_of(text)
    assert fields["exception"] == line["exception"] == "ValueError: the store said no"
    assert fields["loop"] == "sync"


def test_plain_values_are_not_quoted() -> None:
    record = logging.LogRecord("s2s.ca", logging.INFO, "", 0, "ca.started", None, None)
    record.__dict__.update({F.ADDRESS: "127.0.0.1:8443", F.SPIFFE_ID: str(AGENT)})
    text = TextFormatter(clock=lambda: 0.0).format(record)
    assert text == (
        f"1970-01-01T00:00:00.000Z INFO s2s.ca ca.started spiffe_id={AGENT} address=127.0.0.1:8443"
    )
