"""A request body is read as ``json.loads`` reads bytes (RFC 8259 8.1: UTF-8, with the encodings
``json`` detects), through one decoder kept for the process: a body with a UTF-8 byte order mark
or in UTF-16 is read as before; bytes that are no text and repeated names are refused."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from ca_harness import Agent, RunningCa

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode(),
        lambda text: b"\xef\xbb\xbf" + text.encode(),
        lambda text: text.encode("utf-16"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16"],
)
async def test_a_body_is_read_as_json_loads_reads_it(
    ca: RunningCa, agent: Agent, encode: Callable[[str], bytes]
) -> None:
    entry = await ca.entry(agent)
    text = json.dumps({"entry_id": entry["id"], "audience": ["a"]})
    status, body = await agent.call("POST", "/v1/agent/jwt", data=encode(text), headers=JSON)
    assert status == 200, body
    assert body["spiffe_id"].endswith("/billing")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"entry_id": "\xff\xfe\xfa", "audience": ["a"]}', "not valid JSON"),
        (b'{"entry_id": "x", "entry_id": "y", "audience": ["a"]}', "repeats a field name"),
        (b'{"entry_id": "x", "audience": [NaN]}', "not a JSON number"),
    ],
    ids=["not-text", "repeated-name", "nan"],
)
async def test_a_bad_body_is_refused(agent: Agent, data: bytes, reason: str) -> None:
    status, body = await agent.call("POST", "/v1/agent/jwt", data=data, headers=JSON)
    assert (status, body["error"]) == (400, "invalid_request"), body
    assert reason in body["message"]
