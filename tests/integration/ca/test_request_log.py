"""Every HTTPS request is logged as ``http.request``: a served one at debug level (so with the
default info level it costs no line and no record), a refused one at info, a failed one at
warning."""

from __future__ import annotations

import logging

import pytest
from ca_harness import Agent, RunningCa

LOGGER = "s2s.ca.http_middleware"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage() == "http.request"]


async def test_a_served_request_is_logged_at_debug(
    ca: RunningCa, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    (line,) = request_lines(caplog)
    assert line.levelno == logging.DEBUG
    assert (line.__dict__["path"], line.__dict__["status"]) == ("/v1/agent/entries", 200)


async def test_at_info_a_served_request_leaves_no_line_and_a_refused_one_does(
    ca: RunningCa, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    assert request_lines(caplog) == []
    status, _ = await agent.call("POST", "/v1/agent/jwt", json={"entry_id": "nope"})
    assert status == 400
    (line,) = request_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.__dict__["error"] == "invalid_request"
