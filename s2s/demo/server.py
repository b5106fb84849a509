"""The demo's service: a small aiohttp app behind SPIFFE mTLS, identity from the Workload API.

    SPIFFE_ENDPOINT_SOCKET=unix:///run/s2s/agent.sock \\
        python -m s2s.demo.server --listen 127.0.0.1:8443 --allow spiffe://example.org/client

It serves only clients whose SVID verifies to its trust domain's bundle, is not revoked (CRLs from
the agent) and, with ``--allow``, carries one of the allowed IDs; anyone else is dropped inside
the TLS handshake, before a byte of HTTP is read. Each request is logged with the caller's
verified SPIFFE ID (JSON lines on stdout, see :mod:`s2s.demo.workload`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from s2s.core.spiffe_id import SpiffeId
from s2s.demo.workload import LoggingPeerMetrics, SvidWatcher, emit, open_source, run_workload
from s2s.verifier.aiohttp import SpiffeTCPSite, peer_spiffe_id
from s2s.verifier.authorize import authorize_any, authorize_one_of
from s2s.verifier.source import X509Source
from s2s.verifier.tls import server_context

__all__ = ["main", "make_app"]

ROLE = "server"
START_TIMEOUT = 60.0  # the agent may still be syncing the entry when we start


def make_app(source: X509Source) -> web.Application:
    """``GET /hello`` answers who called and who answered."""

    async def hello(request: web.Request) -> web.Response:
        caller = peer_spiffe_id(request)
        me = source.current().default_svid.spiffe_id
        emit("request", role="server", peer=str(caller), path=request.path)
        return web.json_response({"server": str(me), "client": str(caller)})

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT."""
    opened = await open_source(ROLE, args, START_TIMEOUT)
    if opened is None:
        return
    source, stop = opened
    try:
        unsubscribe = SvidWatcher("server").follow(source)
        allowed = [SpiffeId.parse(a) for a in args.allow]
        ctx = server_context(
            source,
            authorize=authorize_one_of(allowed) if allowed else authorize_any(),
            revocations=source.revocations,
            metrics=LoggingPeerMetrics("server"),
        )
        runner = web.AppRunner(make_app(source), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            host, port = args.listen
            await SpiffeTCPSite(runner, host, port, ssl_context=ctx).start()
            bound = runner.addresses[0][1]
            emit("listening", role="server", address=f"{host}:{bound}", allowed=args.allow)
            await stop.wait()
        finally:
            await runner.cleanup()
            unsubscribe()
    finally:
        await source.close()
    emit("stopped", role="server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2s.demo.server", description=__doc__)
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8443))
    parser.add_argument(
        "--allow", action="append", default=[], metavar="SPIFFE_ID", help="allowed client (repeat)"
    )
    parser.add_argument("--socket", help="Workload API socket (default: SPIFFE_ENDPOINT_SOCKET)")
    parser.add_argument("--uid", type=int, help="drop from root to this uid before attesting")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_workload(ROLE, _parser().parse_args(argv), serve)


if __name__ == "__main__":
    raise SystemExit(main())
