"""``s2s-ca entry list|show`` and ``agent list|show`` filters and detail against a real CA: the
filters are query parameters the CA parses (a malformed selector, SPIFFE ID or time is exit 2 with
the reason), they combine with AND, and ``agent show`` says where and when the agent last called."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from ca_harness import TRUST_DOMAIN, Agent, RunningCa

from s2s.cli.ca import main as s2s_ca
from s2s.core.errors import InvalidRequest

pytestmark = pytest.mark.asyncio


async def cli(ca: RunningCa, *args: str) -> int:
    return await asyncio.to_thread(s2s_ca, ["--socket", str(ca.server.options.admin_socket), *args])


async def listed(ca: RunningCa, capsys: Any, *args: str) -> list[dict[str, Any]]:
    assert await cli(ca, *args, "--json") == 0, capsys.readouterr().err
    found: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return found


async def three_entries(ca: RunningCa) -> tuple[Agent, Agent, dict[str, str]]:
    one, two = await ca.attest(), await ca.attest()
    ids = {
        "a": (await ca.entry(one, "/a", selectors=["unix:uid:1000", "unix:gid:50"]))["id"],
        "b": (await ca.entry(one, "/b", selectors=["unix:uid:1000"]))["id"],
        "c": (await ca.entry(two, "/c", selectors=["unix:gid:50", "unix:uid:1000"]))["id"],
    }
    return one, two, ids


async def test_entry_list_filters_combine(ca: RunningCa, capsys: Any) -> None:
    one, _two, ids = await three_entries(ca)
    both = ["--selector", "unix:uid:1000", "--selector", "unix:gid:50"]
    assert {e["id"] for e in await listed(ca, capsys, "entry", "list", *both)} == {
        ids["a"],
        ids["c"],
    }
    found = await listed(ca, capsys, "entry", "list", *both, "--parent-id", one.spiffe_id)
    assert [e["id"] for e in found] == [ids["a"]]
    found = await listed(ca, capsys, "entry", "list", "--spiffe-id", f"spiffe://{TRUST_DOMAIN}/b")
    assert [e["id"] for e in found] == [ids["b"]]
    assert await listed(ca, capsys, "entry", "list", "--selector", "unix:uid:9") == []
    assert len(await listed(ca, capsys, "entry", "list")) == 3  # twin: no filter, everything
    assert await cli(ca, "entry", "list", "--selector", "unix:uid:1000") == 0
    table = capsys.readouterr().out
    assert ids["a"] in table
    assert ids["b"] in table


async def test_malformed_filters_are_refused_with_the_reason(ca: RunningCa, capsys: Any) -> None:
    assert await cli(ca, "entry", "list", "--selector", "nonsense") == 2
    assert "nonsense" in capsys.readouterr().err
    assert await cli(ca, "entry", "list", "--parent-id", "https://example.org/x", "--json") == 2
    error = json.loads(capsys.readouterr().err)
    assert error["error"] in {"invalid_request", "invalid_spiffe_id"}
    assert "spiffe" in error["message"].lower(), error
    assert error["code"] == 2
    with pytest.raises(InvalidRequest, match="unknown filter"):
        await ca.admin_call("GET", "/v1/entries", colour="red")
    assert await cli(ca, "agent", "list", "--expires-before", "soon") == 2
    assert "ISO 8601" in capsys.readouterr().err
    assert await cli(ca, "agent", "list", "--expires-before", "2030-01-01T00:00:00") == 2
    assert "time zone" in capsys.readouterr().err


async def test_entry_show_by_id_or_by_selectors(ca: RunningCa, capsys: Any) -> None:
    one, _two, ids = await three_entries(ca)
    found = await listed(
        ca, capsys, "entry", "show", "--selector", "unix:gid:50", "--parent-id", one.spiffe_id
    )
    assert [e["id"] for e in found] == [ids["a"]]
    assert await cli(ca, "entry", "show", "--selector", "unix:gid:50") == 0
    out = capsys.readouterr().out
    assert ids["a"] in out
    assert ids["c"] in out
    assert await cli(ca, "entry", "show", ids["b"]) == 0
    assert ids["b"] in capsys.readouterr().out
    # twins: nothing matches, both an ID and filters, neither
    assert await cli(ca, "entry", "show", "--selector", "unix:uid:9") == 4
    assert "no entry matches selector=unix:uid:9" in capsys.readouterr().err
    assert await cli(ca, "entry", "show", ids["b"], "--selector", "unix:uid:1000") == 2
    assert await cli(ca, "entry", "show") == 2


async def test_agent_list_filters(ca: RunningCa, capsys: Any) -> None:
    one, two = await ca.attest(), await ca.attest()
    assert await cli(ca, "agent", "ban", two.spiffe_id) == 0
    capsys.readouterr()

    async def ids(*args: str) -> set[str]:
        return {a["spiffe_id"] for a in await listed(ca, capsys, "agent", "list", *args)}

    assert await ids("--banned") == {two.spiffe_id}
    assert await ids("--not-banned") == {one.spiffe_id}
    assert await ids("--attestation-type", "join_token") == {one.spiffe_id, two.spiffe_id}
    assert await ids("--attestation-type", "k8s_psat") == set()
    assert await ids("--expires-before", "2000-01-01T00:00:00Z") == set()
    assert await ids("--expires-before", "2999-01-01T00:00:00+00:00", "--banned") == {two.spiffe_id}


async def test_agent_show_detail(ca: RunningCa, capsys: Any) -> None:
    one, _two, _ids = await three_entries(ca)
    assert await cli(ca, "agent", "show", one.spiffe_id, "--json") == 0
    before = json.loads(capsys.readouterr().out)
    assert before["entries"] == 2
    assert before["last_seen"] is None
    assert before["address"] is None
    assert before["first_seen"] == before["created_at"]
    status, _ = await one.call("GET", "/v1/agent/entries")
    assert status == 200
    assert await cli(ca, "agent", "show", one.spiffe_id, "--json") == 0
    after = json.loads(capsys.readouterr().out)
    assert after["last_seen"] is not None
    assert after["address"] == "127.0.0.1"
    assert after["last_seen"] >= after["first_seen"]
    assert await cli(ca, "agent", "show", one.spiffe_id) == 0
    text = capsys.readouterr().out
    for label in ("address", "first seen", "last seen", "svid serial", "svid expires", "entries"):
        assert label in text
    assert after["serial"] in text
    assert after["not_after"] in text
    # twins: an unknown agent, a malformed ID
    unknown = f"spiffe://{TRUST_DOMAIN}/s2s/agent/join_token/nobody"
    assert await cli(ca, "agent", "show", unknown) == 4
    assert await cli(ca, "agent", "show", "not-an-id") == 2
