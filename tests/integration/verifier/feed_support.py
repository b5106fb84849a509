"""Helpers for the revocation feed tests: a TCP gate in front of etcd, waits with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from s2s.core.revocation import RevocationRecord

DEADLINE = 10.0


class TcpGate:
    """A real TCP relay to ``target`` that a test can shut (dropping every connection) and reopen
    on the same port: a network partition between one client and its server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


async def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> float:
    """Poll ``check`` every 5 ms until true; return the seconds it took (fail after ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def serial_record(serial: int, *, hours: float = 1.0) -> RevocationRecord:
    now = datetime.now(UTC)
    return RevocationRecord.for_serial(
        serial, revoked_at=now, expires_at=now + timedelta(hours=hours), reason="test"
    )


def id_record(spiffe_id: str, *, hours: float = 1.0) -> RevocationRecord:
    now = datetime.now(UTC)
    return RevocationRecord.for_spiffe_id(
        spiffe_id, revoked_at=now, expires_at=now + timedelta(hours=hours)
    )
