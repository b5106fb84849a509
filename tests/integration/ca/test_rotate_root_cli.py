"""``s2s-ca rotate-root`` against a real CA: the hold time said before it starts (computed from the
settings), progress with what it waits for and an ETA, and ``--new`` during a rotation refused as a
conflict with that rotation's status."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from ca_harness import RunningCa

from s2s.cli.ca import main as s2s_ca

pytestmark = pytest.mark.asyncio


async def cli(*args: str) -> int:
    return await asyncio.to_thread(s2s_ca, list(args))


def sock(ca: RunningCa) -> list[str]:
    return ["--socket", str(ca.server.options.admin_socket)]


async def test_the_hold_time_is_said_before_it_starts(ca: RunningCa, capsys: Any) -> None:
    assert await cli(*sock(ca), "rotate-root", "--step") == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    # defaults: agent SVIDs live 1 h (the longest), plus the 30 s backdate
    assert "for 1h0m30s = the longest lifetime" in first, out
    assert "agent_svid_ttl = 1h0m0s" in first, out
    assert "backdate = 30s" in first, out
    assert rest.startswith("[prepared] new root"), out
    assert "finishes at the earliest at" in rest, out


async def test_a_running_rotation_does_not_announce_again(ca: RunningCa, capsys: Any) -> None:
    assert await cli(*sock(ca), "rotate-root", "--step") == 0
    capsys.readouterr()
    assert await cli(*sock(ca), "rotate-root", "--step") == 0  # activate: no agents to wait for
    out = capsys.readouterr().out
    assert "keeps the old root" not in out
    assert out.startswith("[activated]"), out


async def test_status_json_has_hold_and_eta(ca: RunningCa, capsys: Any) -> None:
    assert await cli(*sock(ca), "rotate-root", "--status", "--json") == 0
    idle = json.loads(capsys.readouterr().out)
    assert idle["phase"] == "idle"
    assert idle["eta"] is None
    assert idle["hold_seconds"] == 3630
    assert await cli(*sock(ca), "rotate-root", "--step", "--json") == 0
    assert await cli(*sock(ca), "rotate-root", "--step", "--json") == 0  # activated
    capsys.readouterr()
    assert await cli(*sock(ca), "rotate-root", "--status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "activated"
    assert status["waiting_for"] == "lifetime"
    assert status["eta"] == status["retire_at"]
    assert "agent_svid_ttl" in status["hold_reason"]


async def test_new_during_a_rotation_is_a_conflict_with_its_status(
    ca: RunningCa, capsys: Any
) -> None:
    assert await cli(*sock(ca), "rotate-root", "--step") == 0
    prepared = await ca.admin_call("GET", "/v1/root-rotation")
    capsys.readouterr()
    assert await cli(*sock(ca), "rotate-root", "--new", "--timeout", "1") == 5
    captured = capsys.readouterr()
    assert "phase prepared" in captured.err, captured.err
    assert prepared["state"]["new_root"] in captured.err
    assert "without --new" in captured.err
    after = await ca.admin_call("GET", "/v1/root-rotation")
    assert after["state"] == prepared["state"]  # nothing moved, nothing started
    # the same as JSON for scripts
    assert await cli(*sock(ca), "rotate-root", "--new", "--step", "--json") == 5
    error = json.loads(capsys.readouterr().err)
    assert error["error"] == "conflict"
    assert error["code"] == 5
    # twin: without --new the same command carries the rotation on
    assert await cli(*sock(ca), "rotate-root", "--step") == 0
    assert "[activated]" in capsys.readouterr().out


async def test_new_after_a_finished_rotation_starts_one(ca: RunningCa, capsys: Any) -> None:
    # twin of the conflict: --new with nothing under way is accepted
    assert await cli(*sock(ca), "rotate-root", "--new", "--step") == 0
    assert "[prepared]" in capsys.readouterr().out


async def test_progress_while_it_waits_for_the_hold(ca: RunningCa, capsys: Any) -> None:
    assert await cli(*sock(ca), "rotate-root", "--step") == 0  # prepared
    assert await cli(*sock(ca), "rotate-root", "--step") == 0  # activated
    capsys.readouterr()
    code = await cli(*sock(ca), "rotate-root", "--poll", "0.05", "--report-every", "0.1",
                     "--timeout", "0.5")  # fmt: skip
    assert code == 7  # still waiting: resumable
    captured = capsys.readouterr()
    assert "re-run s2s-ca rotate-root to resume" in captured.err
    waits = [line for line in captured.out.splitlines() if line.startswith("  waiting for")]
    assert len(waits) >= 2, captured.out  # repeated while nothing changes
    assert "the hold time" in waits[0]
    assert "(in 1h0m" in captured.out or "(in 59m" in captured.out, captured.out
    # twin: without --report-every repeats, one line per change only
    code = await cli(*sock(ca), "rotate-root", "--poll", "0.05", "--timeout", "0.3")
    assert code == 7
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("  waiting for")]) == 1
