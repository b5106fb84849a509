"""``s2s-agent run`` raises its soft open-files limit to the hard one at start and logs it once
(``agent.fd_limit``, before/after); with no room (hard == soft) it starts unchanged, without a
warning. Out of descriptors, its Workload API says so in a clear line and keeps serving once
descriptors are free again, without spinning."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from process_limits import events, open_files_limit, with_limit
from test_agent_end_to_end import MY_UID
from test_agent_workload_limits import fetch_status

RUN = [sys.executable, "-m", "s2s.cli.agent", "run"]


@asynccontextmanager
async def agent_process(
    harness: Any, soft: int, hard: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, list[str]]]:
    """``s2s-agent run`` against the harness's CA under an open-files limit of (soft, hard),
    serving on its socket; yields the process, the socket and (after exit) its log. The log
    goes to a file: a pipe nobody reads would fill and stop the agent on its next line."""
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID])
    config = harness.config(token=token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2S_", "SPIFFE_"))}
    env |= {"S2S_AGENT_JOIN_TOKEN": token, "S2S_AGENT_LOG_FORMAT": "json"}
    log = harness.tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *with_limit(soft, hard), *RUN,
            "--trust-domain", "example.org", "--ca-url", harness.ca.url,
            "--trust-bundle", str(config.trust_bundle), "--data-dir", str(config.data_dir),
            "--socket", str(config.socket), env=env,
            stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    text: list[str] = []
    try:
        await harness.wait_until(
            lambda: config.socket.exists() or proc.returncode is not None,
            timeout=30,
            what="the agent socket",
        )
        assert proc.returncode is None, f"the agent exited: {log.read_text()[-2000:]}"
        yield proc, config.socket, text
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        text.append(log.read_text())


async def test_run_raises_the_soft_limit_to_the_hard_one(harness: Any) -> None:
    async with agent_process(harness, 256, 4096) as (proc, _, stderr):
        assert open_files_limit(proc.pid) == (4096, 4096)
    (line,) = events(stderr[0], "agent.fd_limit")
    assert (line["level"], line["before"], line["after"], line["limit"]) == (
        "info",
        256,
        4096,
        4096,
    )


async def test_run_with_no_room_starts_with_its_limit_unchanged(harness: Any) -> None:
    async with agent_process(harness, 256, 256) as (proc, _, stderr):
        assert open_files_limit(proc.pid) == (256, 256)
    (line,) = events(stderr[0], "agent.fd_limit")
    assert (line["level"], line["before"], line["after"]) == ("info", 256, 256)
    assert "error" not in line


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_all(path: Path, n: int) -> list[socket.socket]:
    """Up to ``n`` connections to ``path`` (non-blocking: a full backlog refuses, never waits)."""
    conns = []
    for _ in range(n):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            continue
        conns.append(sock)
    return conns


async def test_out_of_descriptors_the_workload_api_says_so_and_keeps_serving(
    harness: Any,
) -> None:
    """128 descriptors (soft == hard, so not raised); 64 connections (what one uid may hold)
    cost ~4 descriptors each (the connection, its link to the gRPC server on both ends, the
    caller's /proc entry), so the next ones find accept() out of descriptors."""
    async with agent_process(harness, 128, 128) as (proc, path, stderr):
        conns = connect_all(path, 64)
        try:
            await harness.wait_until(
                lambda: open_fds(proc.pid) >= 126, timeout=15, what="the agent out of fds"
            )
            conns += connect_all(path, 20)  # these find accept() out of descriptors
            before, started = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(2)
            busy = (cpu_seconds(proc.pid) - before) / (time.monotonic() - started)
            assert busy < 0.5, f"the agent spins out of descriptors: {busy:.0%} of a CPU"
        finally:
            for sock in conns:
                sock.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (status := await fetch_status(str(path))) != "spiffe://example.org/billing":
            assert loop.time() < deadline, status
            await asyncio.sleep(0.1)
        assert proc.returncode is None
    text = stderr[0]
    (line,) = events(text, "agent.accept_failed")  # one line per 10 s, not one per retry
    assert line["level"] == "warning"
    assert "Too many open files" in line["error"]
    assert (line["socket"], line["limit"]) == (str(path), 128)
    assert "socket.accept() out of system resource" not in text  # asyncio's traceback
