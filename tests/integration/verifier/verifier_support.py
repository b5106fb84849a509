"""Helpers for verifier integration tests: sources fed by TestAuthority, loopback TLS servers,
SVID files written atomically, and waiting (with a deadline) for updates."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.x509svid import X509Svid
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context


def source_of(svid: X509Svid, *bundles: Bundle) -> StaticX509Source:
    return StaticX509Source(X509Context((svid,), BundleSet.of(*bundles)))


@dataclass
class Served:
    """A loopback TLS server that answers each connection with the verified peer ID."""

    port: int
    peers: list[str] = field(default_factory=list)


@asynccontextmanager
async def serving(ctx: ssl.SSLContext) -> AsyncIterator[Served]:
    served = Served(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid = writer.get_extra_info("ssl_object").peer_spiffe_id
        served.peers.append(str(sid))
        writer.write(str(sid).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect, read the server's answer; b"" when the server dropped us after the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        writer.close()


class Updates:
    """Collects subscriber calls; ``wait`` blocks (with a deadline) until a predicate holds."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, value: Any) -> None:
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    async def wait(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        return await asyncio.to_thread(self.wait_sync, predicate, timeout)

    def wait_sync(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(predicate(v) for v in self.values), timeout)
            assert ok, f"no matching update within {timeout} s; got {len(self.values)}"
            return next(v for v in self.values if predicate(v))


def serial_is(serial: int) -> Callable[[X509Context], bool]:
    return lambda ctx: ctx.default_svid.serial == serial


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_svid(directory: Path, svid: X509Svid, bundle: bytes) -> tuple[str, str, str]:
    paths = (directory / "svid.pem", directory / "svid.key", directory / "bundle.pem")
    write_atomically(paths[0], svid.chain_pem())
    write_atomically(paths[1], svid.key_pem())
    write_atomically(paths[2], bundle)
    return str(paths[0]), str(paths[1]), str(paths[2])
