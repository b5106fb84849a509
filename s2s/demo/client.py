"""The demo's client: calls the demo service every second over SPIFFE mTLS.

    SPIFFE_ENDPOINT_SOCKET=unix:///run/s2s/agent.sock python -m s2s.demo.client \\
        --url https://127.0.0.1:8443/hello --server-id spiffe://example.org/server

Every request opens a new TLS connection (no keep-alive), so each line of the log is a full
handshake in which both sides check the other's SVID, revocations included. The client accepts
only the server ID given with ``--server-id``.

Commands on stdin (from the launcher): ``pin`` keeps the current SVID aside and reports its
serial; ``probe`` then also calls the service with that pinned SVID every second, to show what
happens to a credential after it was revoked; ``unpin`` stops the probes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import stat
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

from s2s.aio import wait_event
from s2s.core.errors import S2SError
from s2s.core.spiffe_id import SpiffeId
from s2s.demo.workload import LoggingPeerMetrics, SvidWatcher, emit, open_source, run_workload
from s2s.verifier.aiohttp import SpiffeClientResponse, server_spiffe_id, spiffe_connector
from s2s.verifier.authorize import authorize_id
from s2s.verifier.source import X509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

__all__ = ["main"]

ROLE = "client"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _describe(exc: BaseException) -> str:
    """A one-line reason for a failed call (no stack, no certificate dump)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
        return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "the server closed the connection (it refused our certificate)"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno is not None:
        return f"connection error: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".strip()


async def call(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """One request: the status, the server's SPIFFE ID as verified in the handshake, and the ID
    the server saw for us."""
    async with session.get(url) as response:
        body = await response.json()
    return {
        "status": response.status,
        "server": str(server_spiffe_id(response)),
        "seen_as": body.get("client"),
    }


class Client:
    """The request loop plus the pin/probe commands."""

    def __init__(self, source: X509Source, args: argparse.Namespace) -> None:
        self.source = source
        self.url: str = args.url
        self.interval: float = args.interval
        self.server_id = SpiffeId.parse(args.server_id)
        self.pinned: X509Context | None = None
        self.probing = False

    def session(self, source: Any, role: str) -> aiohttp.ClientSession:
        connector = spiffe_connector(
            source,
            authorize=authorize_id(self.server_id),
            revocations=self.source.revocations,
            metrics=LoggingPeerMetrics(role),
            force_close=True,  # a full handshake for every request
        )
        # Each call opens a new connection, released once the small body is read: the response
        # class records the server ID verified in that call's handshake.
        return aiohttp.ClientSession(
            connector=connector, timeout=REQUEST_TIMEOUT, response_class=SpiffeClientResponse
        )

    async def run(self, stop: asyncio.Event) -> None:
        main = self.session(self.source, "client")
        probe: aiohttp.ClientSession | None = None
        try:
            while not stop.is_set():
                await self.once(main, "response", self.current_serial())
                if self.probing and self.pinned is not None:
                    if probe is None:
                        probe = self.session(StaticX509Source(self.pinned), "probe")
                    await self.once(probe, "probe", format(self.pinned.default_svid.serial, "x"))
                elif probe is not None:
                    await probe.close()
                    probe = None
                await _wait(stop, self.interval)
        finally:
            await main.close()
            if probe is not None:
                await probe.close()

    def current_serial(self) -> str:
        return format(self.source.current().default_svid.serial, "x")

    async def once(self, session: aiohttp.ClientSession, kind: str, serial: str) -> None:
        try:
            result = await call(session, self.url)
        except (aiohttp.ClientError, OSError, TimeoutError, S2SError) as exc:
            emit(f"{kind}_failed", role="client", serial=serial, error=_describe(exc))
            return
        emit(kind, role="client", serial=serial, **result)

    def command(self, line: str) -> None:
        word = line.strip()
        if word == "pin":
            self.pinned = self.source.current()
            emit("pinned", role="client", serial=format(self.pinned.default_svid.serial, "x"))
        elif word == "probe":
            self.probing = self.pinned is not None
        elif word == "unpin":
            self.pinned, self.probing = None, False


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)


async def _read_commands(client: Client) -> None:
    try:
        is_pipe = stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError):
        is_pipe = False
    if not is_pipe:
        return  # a terminal or /dev/null: no commands (they come from the launcher's pipe)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        client.command(line.decode("utf-8", "replace"))


async def run(args: argparse.Namespace) -> None:
    opened = await open_source(ROLE, args, START_TIMEOUT)
    if opened is None:
        return
    source, stop = opened
    try:
        unsubscribe = SvidWatcher("client").follow(source)
        client = Client(source, args)
        commands = asyncio.create_task(_read_commands(client))
        try:
            await client.run(stop)
        finally:
            commands.cancel()
            unsubscribe()
    finally:
        await source.close()
    emit("stopped", role="client")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2s.demo.client", description=__doc__)
    parser.add_argument("--url", required=True, help="https://HOST:PORT/hello")
    parser.add_argument("--server-id", required=True, help="the server's expected SPIFFE ID")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between calls")
    parser.add_argument("--socket", help="Workload API socket (default: SPIFFE_ENDPOINT_SOCKET)")
    parser.add_argument("--uid", type=int, help="drop from root to this uid before attesting")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_workload(ROLE, _parser().parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
