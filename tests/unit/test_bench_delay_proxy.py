"""The fleet benchmark's delay proxy against a real echo server on 127.0.0.1: a round trip
gains twice the delay, a zero delay adds none, chunks keep their order across a change of delay,
and EOF is passed on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bench.delay_proxy import DelayProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield ("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


async def _round_trip(proxy: DelayProxy, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    took = time.monotonic() - started
    writer.close()
    return got, took


async def test_a_round_trip_gains_twice_the_delay(echo: tuple[str, int]) -> None:
    proxy = await DelayProxy(echo, delay=0.1).start()
    try:
        got, took = await _round_trip(proxy, b"ping")
    finally:
        await proxy.close()
    assert got == b"ping"
    assert took >= 0.2


async def test_no_delay_adds_none(echo: tuple[str, int]) -> None:
    proxy = await DelayProxy(echo, delay=0.0).start()
    try:
        got, took = await _round_trip(proxy, b"ping")
    finally:
        await proxy.close()
    assert got == b"ping"
    assert took < 0.2


async def test_chunks_keep_their_order_when_the_delay_drops(echo: tuple[str, int]) -> None:
    proxy = await DelayProxy(echo, delay=0.2).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"first,")
        await writer.drain()
        await asyncio.sleep(0.02)  # a separate chunk, read under the long delay
        proxy.delay = 0.0
        writer.write(b"second")  # must not overtake the first
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(12), 5)
        writer.close()
    finally:
        await proxy.close()
    assert got == b"first,second"


async def test_eof_is_passed_on(echo: tuple[str, int]) -> None:
    proxy = await DelayProxy(echo, delay=0.01).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"bye")
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 5)  # to EOF: the echo server closed
        writer.close()
    finally:
        await proxy.close()
    assert got == b"bye"


async def test_an_unreachable_target_closes_the_client() -> None:
    probe = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    proxy = await DelayProxy(("127.0.0.1", port)).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await proxy.close()


@pytest.mark.parametrize("argv", [[], ["nohost"], ["127.0.0.1:port"]])
def test_the_command_refuses_a_target_that_is_not_host_port(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.delay_proxy import main  # noqa: PLC0415

    assert main(argv) == 2
    assert "HOST:PORT" in capsys.readouterr().err
