"""Slow and idle clients cannot hold the CA: connection limits (per address and in total,
counted from accept), TLS handshake and header deadlines, and a cap on held long-polls.

The attacker connects from 127.0.0.2 (and 127.0.0.3-7 to fill the total), the agent from
127.0.0.1. The headline measurement: an agent's renewal over mTLS completes within a bound while
200 byte-at-a-time, 200 idle-TLS and 200 idle-TCP connections are thrown at the CA. Every
refusal has a twin that is served: a slow but timely client, a long-poll longer than the header
deadline, a keep-alive connection idle past it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from ca_harness import Agent, RunningCa, ca_client, csr_pem, new_key, start_ca, stop_ca

from s2s.ca.config import ServerLimits

ATTACKER = "127.0.0.2"
LIMITS = ServerLimits(
    tls_handshake_timeout=2.0,
    header_timeout=2.0,
    body_timeout=1.0,
    keepalive_timeout=5.0,
    max_connections=100,
    max_connections_per_ip=20,
    max_long_polls=4,
)
SLOWLORIS = Path(__file__).with_name("slowloris.py")
RENEWAL_BOUND = 3.0  # seconds; an unloaded renewal takes ~0.05 s here


@pytest.fixture
async def guarded(data_dir: Path) -> AsyncIterator[RunningCa]:
    server, task, stop = await start_ca(data_dir, limits=LIMITS)
    try:
        async with ca_client(server) as running:
            yield running
    finally:
        await stop_ca(server, task, stop)


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def renew(agent: Agent) -> float:
    """One agent renewal over mTLS (a new connection); its duration in seconds."""
    started = time.monotonic()
    status, body = await agent.call("POST", "/v1/agent/renew", json={"csr": csr_pem(new_key())})
    assert status == 200, body
    return time.monotonic() - started


async def open_from(
    ca: RunningCa, source: str, *, tls: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection from ``source``; None when the CA refuses it."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                ca.server.port,
                ssl=insecure_tls() if tls else None,
                local_addr=(source, 0),
            ),
            5,
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return None


async def start_slowloris(ca: RunningCa, kind: str, seconds: float) -> asyncio.subprocess.Process:
    """200 attackers from ``ATTACKER`` in their own process (``slowloris.py``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(SLOWLORIS), str(ca.server.port), ATTACKER, "200", kind, f"{seconds}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["byte-at-a-time", "idle-tls", "idle-tcp"])
async def test_a_slowloris_does_not_delay_renewal(guarded: RunningCa, kind: str) -> None:
    ca = guarded
    agent = await ca.attest()
    baseline = min([await renew(agent) for _ in range(3)])
    guard = ca.server.guard
    attacker = await start_slowloris(ca, kind, seconds=8)
    most_open = 0

    def full() -> bool:
        nonlocal most_open
        most_open = max(most_open, guard.open_from(ATTACKER))
        return most_open >= LIMITS.max_connections_per_ip

    try:
        await wait_for(full, "the attacker to fill its per-address share")
        took = []
        for _ in range(3):  # while the attack holds its share
            took.append(await renew(agent))
            full()
        out, _ = await asyncio.wait_for(attacker.communicate(), 30)
    finally:
        if attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
    summary = json.loads(out)
    assert max(took) < RENEWAL_BOUND, (baseline, took)
    assert most_open <= LIMITS.max_connections_per_ip
    assert guard.refused["ip_limit"] > 0
    # Each connection the CA took ended at the handshake or header deadline, not later.
    deadline = LIMITS.tls_handshake_timeout if kind == "idle-tcp" else LIMITS.header_timeout
    assert summary["connections"] > LIMITS.max_connections_per_ip, summary
    assert summary["lived_max"] < deadline + 1.5, summary
    await wait_for(lambda: guard.open_from(ATTACKER) == 0, "the attacker's slots to be released")
    print(f"\n{kind}: renewal {baseline * 1000:.0f} ms alone, {max(took) * 1000:.0f} ms under "
          f"attack; attacker: {summary}; CA refused {guard.refused}, "
          f"timed out {guard.timed_out}")  # fmt: skip


async def test_the_total_limit_refuses_then_recovers(guarded: RunningCa) -> None:
    ca = guarded
    agent = await ca.attest()
    guard = ca.server.guard
    sources = [f"127.0.0.{i}" for i in range(3, 8)]  # 5 x 20 = max_connections
    held = await asyncio.gather(*(open_from(ca, s, tls=False) for s in sources for _ in range(20)))
    await wait_for(lambda: guard.total == LIMITS.max_connections, "the CA to be full")
    assert await open_from(ca, "127.0.0.8") is None  # full, whoever asks
    assert guard.refused["total_limit"] >= 1
    for conn in held:
        if conn is not None:
            conn[1].close()
    await wait_for(lambda: guard.total == 0, "slots to be released")
    assert await renew(agent) < RENEWAL_BOUND  # twin: served again once they are gone


async def test_a_slow_but_timely_request_is_served(guarded: RunningCa) -> None:
    conn = await open_from(guarded, ATTACKER)
    assert conn is not None
    reader, writer = conn
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(LIMITS.header_timeout / 2)
    writer.write(b"Host: ca\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    writer.close()


async def test_a_request_over_the_header_deadline_is_cut_off(guarded: RunningCa) -> None:
    # Timed from before the connection: the deadline starts when the CA has the connection,
    # which may be some time before this side has written its first line on a loaded machine.
    started = time.monotonic()
    conn = await open_from(guarded, ATTACKER)
    assert conn is not None
    reader, writer = conn
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # closed, nothing answered
    assert answer == b""
    # Cut by the header deadline (the counter below), well before the 5 s keep-alive limit.
    assert LIMITS.header_timeout <= time.monotonic() - started < LIMITS.header_timeout + 2
    assert guarded.server.guard.timed_out["headers"] >= 1


async def test_a_slow_body_is_a_408(guarded: RunningCa) -> None:
    token = await guarded.token()
    conn = await open_from(guarded, ATTACKER)
    assert conn is not None
    reader, writer = conn
    body = f'{{"join_token": "{token["token"]}", "csr": "x"}}'.encode()
    writer.write(
        b"POST /v1/agent/attest HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5]
    )
    await writer.drain()
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408"), head[:80]
    assert b'"request_timeout"' in await reader.read(200)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    assert time.monotonic() - started < LIMITS.body_timeout + 2.5  # + lingering (1 s)
    writer.close()
    # Twin: a body that arrives in two parts, the second within the deadline, is read whole.
    good = await open_from(guarded, ATTACKER)
    assert good is not None
    reader, writer = good
    body = json.dumps({"join_token": token["token"], "csr": csr_pem(new_key())}).encode()
    writer.write(
        b"POST /v1/agent/attest HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5]
    )
    await writer.drain()
    await asyncio.sleep(LIMITS.body_timeout / 2)
    writer.write(body[5:])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head[:80] + await reader.read(300)
    writer.close()


async def test_long_polls_and_keep_alive_outlive_the_header_deadline(guarded: RunningCa) -> None:
    """Twins of the header deadline: a long-poll held past it, then the same connection idle
    past it and reused, are served."""
    connector = aiohttp.TCPConnector(ssl=insecure_tls(), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{guarded.url}/v1/revocations"
        async with session.get(url) as first:
            revision = (await first.json())["revision"]
        started = time.monotonic()
        wait = LIMITS.header_timeout * 2
        async with session.get(url, params={"since": str(revision), "wait": f"{wait}"}) as held:
            assert held.status == 200
        assert time.monotonic() - started >= wait - 0.1
        await asyncio.sleep(LIMITS.header_timeout * 1.5)  # idle, under keepalive_timeout
        async with session.get(f"{guarded.url}/healthz") as again:
            assert again.status == 200
        assert guarded.server.guard.timed_out["headers"] == 0


async def test_excess_long_polls_are_answered_at_once(guarded: RunningCa) -> None:
    connector = aiohttp.TCPConnector(ssl=insecure_tls(), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{guarded.url}/v1/revocations"
        async with session.get(url) as first:
            revision = (await first.json())["revision"]
        params = {"since": str(revision), "wait": "30"}

        async def poll() -> float:
            started = time.monotonic()
            async with session.get(url, params=params) as resp:
                assert resp.status == 200
                await resp.read()
            return time.monotonic() - started

        slots = guarded.server.services.long_polls
        waiting = [asyncio.create_task(poll()) for _ in range(LIMITS.max_long_polls)]
        try:
            await wait_for(lambda: slots.held == LIMITS.max_long_polls, "long-polls to be held")
            assert await poll() < 1.0  # one too many: answered at once
            assert not any(t.done() for t in waiting)  # the others are still held
        finally:
            for task in waiting:
                task.cancel()
