"""A client that goes away mid-request (a body cut short, a long-poll left before its answer) is
logged at info as ``http.client_gone`` and counted with status 499, never as a 500
``http.internal_error``; a held long-poll frees its slot at once. Twins: a handler that fails
while its client is still there is a 500 ``http.internal_error``, whatever it raised."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator

import aiohttp
import polling
import pytest
from aiohttp import web
from ca_harness import Agent, RunningCa, key_pem
from prometheus_client.parser import text_string_to_metric_families

from s2s.ca.http_middleware import error_middleware
from s2s.ca.metrics import CaMetrics

LOGGER = "s2s.ca.http_middleware"


def events(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage() == message]


async def requests_by_status(ca: RunningCa, route: str) -> dict[str, float]:
    """{status: count} of ``s2s_ca_http_requests_total`` for ``route``."""
    status, text = await ca.public("GET", "/metrics")
    assert status == 200
    return {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "s2s_ca_http_requests_total" and s.labels["route"] == route
    }


until = functools.partial(polling.until, timeout=5)  # this module's deadline


async def send(
    port: int, context: ssl.SSLContext, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(data)
    await writer.drain()
    return reader, writer


def agent_tls(ca: RunningCa, agent: Agent) -> ssl.SSLContext:
    return ca.client_ssl(agent.chain_pem.encode(), key_pem(agent.key))


HALF_BODY = (
    b"POST /v1/agent/attest HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n" + b'{"join_token": "'
)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_a_body_cut_short_is_a_client_gone_not_a_500(
    ca: RunningCa, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    _, writer = await send(ca.server.port, ca.client_ssl(), HALF_BODY)
    await until(lambda: ca.server.guard.total == 1, "the request is being read")
    if reset:
        writer.transport.abort()
    else:
        writer.close()
    await until(lambda: bool(events(caplog, "http.client_gone")), "an http.client_gone line")
    (line,) = events(caplog, "http.client_gone")
    assert line.levelno == logging.INFO
    assert (line.__dict__["path"], line.__dict__["status"]) == ("/v1/agent/attest", 499)
    assert events(caplog, "http.internal_error") == []
    assert await requests_by_status(ca, "/v1/agent/attest") == {"499": 1}


@pytest.mark.parametrize("route", ["/v1/agent/entries", "/v1/revocations"])
async def test_a_long_poll_left_early_frees_its_slot_and_is_a_client_gone(
    ca: RunningCa, agent: Agent, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    status, first = await agent.call("GET", route)
    assert status == 200
    since = first["revision"]
    request = f"GET {route}?since={since}&wait=50 HTTP/1.1\r\nHost: ca\r\n\r\n".encode()
    _, writer = await send(ca.server.port, agent_tls(ca, agent), request)
    slots = ca.server.services.long_polls
    await until(lambda: slots.held == 1, "the long-poll is held")
    writer.close()
    started = time.monotonic()
    await until(lambda: slots.held == 0, "the slot is free after the client left")
    assert time.monotonic() - started < 10  # not the 50 s the client asked to wait
    await until(lambda: bool(events(caplog, "http.client_gone")), "an http.client_gone line")
    (line,) = events(caplog, "http.client_gone")
    assert line.__dict__["path"] == route
    assert events(caplog, "http.internal_error") == []
    counts = await requests_by_status(ca, route)
    assert counts == {"200": 1, "499": 1}
    status, text = await ca.public("GET", "/metrics")
    assert "s2s_ca_entry_long_polls 0.0" in text


async def test_a_long_poll_kept_open_is_still_answered(ca: RunningCa, agent: Agent) -> None:
    """Twin: a held long-poll whose client stays is answered (200) when its wait ends."""
    status, first = await agent.call("GET", "/v1/agent/entries")
    query = f"/v1/agent/entries?since={first['revision']}&wait=0.3"
    status, again = await agent.call("GET", query)
    assert (status, again["revision"]) == (200, first["revision"])
    assert await requests_by_status(ca, "/v1/agent/entries") == {"200": 2}


async def test_a_handler_bug_with_the_client_present_is_still_a_500(
    ca: RunningCa, agent: Agent, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin: a ConnectionResetError of the CA's own (a store connection reset) while the agent
    waits for its answer is a 500 ``http.internal_error``, not a client gone."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def reset(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError("the store reset the connection")

    monkeypatch.setattr(ca.server.services.registry, "entries_for_agent", reset)
    status, body = await agent.call("GET", "/v1/agent/entries")
    assert (status, body["error"]) == (500, "internal")
    assert len(events(caplog, "http.internal_error")) == 1
    assert events(caplog, "http.client_gone") == []
    assert await requests_by_status(ca, "/v1/agent/entries") == {"500": 1}


# ---- the middleware on its own, on a real socket ------------------------------------------


@pytest.fixture
async def small_app() -> AsyncIterator[tuple[str, CaMetrics, asyncio.Event]]:
    """An application with the CA's middleware on 127.0.0.1:0: ``/read`` reads its body,
    ``/bug`` fails with a ConnectionResetError of its own; the event is set when a handler ends."""
    metrics = CaMetrics()
    ended = asyncio.Event()

    async def read(request: web.Request) -> web.Response:
        try:
            await request.read()
            return web.Response(text="ok")
        finally:
            ended.set()

    async def bug(request: web.Request) -> web.Response:
        raise ConnectionResetError("a connection of the handler's own was reset")

    app = web.Application(middlewares=[error_middleware(metrics)])
    app.router.add_post("/read", read)
    app.router.add_get("/bug", bug)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}", metrics, ended
    finally:
        await runner.cleanup()


def count(metrics: CaMetrics, route: str, status: str) -> float:
    return metrics.requests.labels(route=route, status=status)._value.get()


async def test_plain_http_body_cut_short_is_a_client_gone(
    small_app: tuple[str, CaMetrics, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    address, metrics, ended = small_app
    host, port = address.split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    await writer.drain()
    writer.close()
    await asyncio.wait_for(ended.wait(), 5)
    await until(lambda: bool(events(caplog, "http.client_gone")), "an http.client_gone line")
    assert events(caplog, "http.internal_error") == []
    assert count(metrics, "/read", "499") == 1
    assert count(metrics, "/read", "500") == 0


async def test_a_connection_reset_of_the_handlers_own_is_a_500(
    small_app: tuple[str, CaMetrics, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    address, metrics, _ = small_app
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}/bug") as resp:
        assert resp.status == 500
        assert (await resp.json())["error"] == "internal"
    assert len(events(caplog, "http.internal_error")) == 1
    assert events(caplog, "http.client_gone") == []
    assert count(metrics, "/bug", "500") == 1
    assert count(metrics, "/bug", "499") == 0


async def test_a_handler_cancelled_because_its_client_left_is_a_client_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A runner that cancels handlers on disconnect (aiohttp's ``handler_cancellation``): the
    cancelled request is counted as 499 and logged as a client gone; its ``finally`` runs."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = CaMetrics()
    started, released = asyncio.Event(), asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            released.set()
        raise AssertionError("not reached")

    app = web.Application(middlewares=[error_middleware(metrics)])
    app.router.add_get("/hold", hold)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        writer.close()
        await asyncio.wait_for(released.wait(), 5)
        await until(lambda: bool(events(caplog, "http.client_gone")), "an http.client_gone line")
    finally:
        await runner.cleanup()
    assert count(metrics, "/hold", "499") == 1
    assert events(caplog, "http.internal_error") == []
