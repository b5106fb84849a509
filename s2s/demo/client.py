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
import contextlib
import os
import signal
import ssl
import stat
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

from s2s.core.errors import S2SError
from s2s.core.spiffe_id import SpiffeId
from s2s.demo.workload import (
    LoggingPeerMetrics,
    SvidWatcher,
    drop_privileges,
    emit,
    set_parent_death_signal,
    start_source,
)
from s2s.log import configure_logging
from s2s.verifier.aiohttp import spiffe_connector
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


class RecordingAuthorizer:
    """Accepts exactly ``expected`` and remembers the last server it accepted: each call opens a
    new connection, so after a call it is the SPIFFE ID verified in that call's handshake."""

    def __init__(self, expected: SpiffeId) -> None:
        self.expected = expected
        self.last: SpiffeId | None = None

    def __call__(self, peer: SpiffeId) -> bool:
        if peer != self.expected:
            return False
        self.last = peer
        return True


async def call(
    session: aiohttp.ClientSession, url: str, authorizer: RecordingAuthorizer
) -> dict[str, Any]:
    """One request: the status, the server's SPIFFE ID as verified in the handshake, and the ID
    the server saw for us."""
    authorizer.last = None
    async with session.get(url) as response:
        body = await response.json()
    return {
        "status": response.status,
        "server": str(authorizer.last),
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

    def session(self, source: Any, role: str) -> tuple[aiohttp.ClientSession, RecordingAuthorizer]:
        authorizer = RecordingAuthorizer(self.server_id)
        connector = spiffe_connector(
            source,
            authorize=authorizer,
            revocations=self.source.revocations,
            metrics=LoggingPeerMetrics(role),
            force_close=True,  # a full handshake for every request
        )
        session = aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT)
        return session, authorizer

    async def run(self, stop: asyncio.Event) -> None:
        main = self.session(self.source, "client")
        probe: tuple[aiohttp.ClientSession, RecordingAuthorizer] | None = None
        try:
            while not stop.is_set():
                await self.once(main, "response", self.current_serial())
                if self.probing and self.pinned is not None:
                    if probe is None:
                        probe = self.session(StaticX509Source(self.pinned), "probe")
                    await self.once(probe, "probe", format(self.pinned.default_svid.serial, "x"))
                elif probe is not None:
                    await probe[0].close()
                    probe = None
                await _wait(stop, self.interval)
        finally:
            await main[0].close()
            if probe is not None:
                await probe[0].close()

    def current_serial(self) -> str:
        return format(self.source.current().default_svid.serial, "x")

    async def once(
        self, session: tuple[aiohttp.ClientSession, RecordingAuthorizer], kind: str, serial: str
    ) -> None:
        try:
            result = await call(session[0], self.url, session[1])
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
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("waiting", role="client", uid=args.uid)
    source = X509Source(socket=args.socket)
    if not await start_source(source, stop, START_TIMEOUT):
        await source.close()
        emit("stopped", role=ROLE)
        return
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
    args = _parser().parse_args(argv)
    configure_logging(level="WARNING")
    try:
        if args.uid is not None:
            drop_privileges(args.uid)
        else:
            set_parent_death_signal()
        asyncio.run(run(args))
    except S2SError as exc:
        emit("error", role="client", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
