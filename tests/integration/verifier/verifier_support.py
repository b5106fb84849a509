"""Helpers for verifier integration tests: sources fed by TestAuthority, loopback TLS servers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

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
