"""mTLS through the verifier: new handshakes/s and aiohttp requests/s, each beside plain ``ssl``.

* Handshakes: in-memory (MemoryBIO) TLS 1.3 mTLS handshakes with ECDSA P-256 SVIDs; only the
  *server side* is timed (its ``do_handshake`` calls), once through ``server_context`` (peer check
  in the handshake: bundle of the peer's TD, profile, validity, revocation, authorizer) and once
  through a plain ``ssl`` context with the same certificates and trust store (no SPIFFE check).
* The same handshakes, same certificates, same client (stdlib ``ssl``), served by the opt-in
  pyOpenSSL transport (``pyopenssl_tls.TlsProtocol`` over an in-memory transport, the OpenSSL
  bundled with ``cryptography``; the same SPIFFE checks in the handshake). Its server-side time is
  every ``connection_made``/``data_received`` call of the protocol (BIO copies, handshake, peer
  check, application protocol creation), i.e. more than the stdlib figures time.
* ``verify_peer`` alone on a completed handshake (cached chain facts), beside ``getpeercert()``.
* aiohttp: a server process (pinned to one core) with ``SpiffeTCPSite`` + ``server_context``
  beside a plain ``web.TCPSite`` with the plain context; the load is aiohttp clients in this
  process (the other core), 8 concurrent, over keep-alive connections and with a new connection
  per request. The figure is requests per second of *server CPU* (the client, not the server, is
  the bottleneck, and the machine is shared), i.e. the capacity of one server core. The
  new-connection run is repeated with ``PyOpenSSLSite`` (pyOpenSSL transport) as the server.

Each figure is the median of 3 runs. ``python -m bench.verifier_tls [--quick] [--runs N]
[--plot PNG]`` runs the module N times, prints the median of each figure and draws the handshake
figures of both paths (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import multiprocessing as mp
import os
import ssl
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from bench._harness import Figure, time_per_op
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.x509svid import X509Svid, spiffe_id_of
from s2s.testing import TestAuthority
from s2s.verifier.aiohttp import SpiffeTCPSite, peer_spiffe_id
from s2s.verifier.authorize import authorize_any, authorize_member_of
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.peer import verify_peer
from s2s.verifier.pyopenssl_aiohttp import PyOpenSSLSite
from s2s.verifier.pyopenssl_tls import CIPHERS, PyOpenSSLContext, TlsProtocol, set_stdlib_groups
from s2s.verifier.pyopenssl_tls import server_context as pyopenssl_server_context
from s2s.verifier.pyopenssl_tls import start_server as pyopenssl_start_server
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context

RUNS = 3
CONCURRENCY = 8
Pems = dict[str, bytes]


def _pems(ca: TestAuthority, sid: str) -> Pems:
    svid = ca.issue_x509_svid(sid, ttl=dt.timedelta(hours=1))
    return {"chain": svid.chain_pem(), "key": svid.key_pem(), "root": ca.bundle_pem()}


def _source(p: Pems) -> StaticX509Source:
    chain = tuple(x509.load_pem_x509_certificates(p["chain"]))
    key = serialization.load_pem_private_key(p["key"], None)
    svid = X509Svid(spiffe_id_of(chain[0]), chain, key)
    td = svid.spiffe_id.trust_domain
    roots = tuple(x509.load_pem_x509_certificates(p["root"]))
    return StaticX509Source(X509Context((svid,), BundleSet.of(Bundle(td, roots))))


def _plain(p: Pems, *, server_side: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server_side:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    load_cert_chain_from_memory(ctx, p["chain"], p["key"])
    ctx.load_verify_locations(cadata=p["root"].decode())
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[float, Any]:
    """One in-memory handshake; returns the seconds spent in the server's do_handshake."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    spent, c_done, s_done = 0.0, False, False
    while not (c_done and s_done):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            start = time.thread_time()  # CPU time: other processes on the machine don't count
            try:
                server.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - start
        c_in.write(s_out.read())
    return spent, server


class _MemoryTransport(asyncio.Transport):
    """The socket under a TlsProtocol in the bench: keeps what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _pyopenssl_handshake(server_ctx: PyOpenSSLContext, client_ctx: ssl.SSLContext) -> float:
    """One in-memory handshake served by TlsProtocol (needs a running loop for its timer);
    returns the seconds spent in the protocol's calls."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    below = _MemoryTransport()
    start = time.thread_time()
    proto = TlsProtocol(server_ctx, asyncio.Protocol)
    proto.connection_made(below)
    spent = time.thread_time() - start
    c_done = False
    for _ in range(10):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        if data:
            start = time.thread_time()
            proto.data_received(data)
            spent += time.thread_time() - start
        c_in.write(bytes(below.out))
        below.out.clear()
        if c_done and proto.done.done():
            proto.done.result()  # raises if the handshake failed
            start = time.thread_time()
            proto.connection_lost(None)  # as a server's socket does; it breaks the reference cycles
            return spent + time.thread_time() - start
    raise RuntimeError("the pyOpenSSL handshake did not complete")


def _raw_pyopenssl(p: Pems) -> SSL.Context:
    """A bare pyOpenSSL server context, same certificates and policy, no SPIFFE check: the
    ceiling of the pyOpenSSL path (the bundled OpenSSL alone)."""
    src = _source(p).current()
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list(CIPHERS)
    set_stdlib_groups(ctx)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    svid = src.default_svid
    ctx.use_certificate(svid.leaf)
    for ca in svid.cert_chain[1:]:
        ctx.add_extra_chain_cert(ca)
    ctx.use_privatekey(svid.private_key)  # type: ignore[arg-type]
    store = ctx.get_cert_store()
    assert store is not None
    for bundle in src.bundles:
        for root in bundle.x509_authorities:
            store.add_cert(crypto.X509.from_cryptography(root))
    return ctx


def _raw_handshake(server_ctx: SSL.Context, client_ctx: ssl.SSLContext) -> float:
    """One in-memory handshake on a bare SSL.Connection; the server's seconds."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    start = time.thread_time()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    spent = time.thread_time() - start
    c_done = s_done = False
    while not (c_done and s_done):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        start = time.thread_time()
        if data:
            server.bio_write(data)
        if not s_done:
            try:
                server.do_handshake()
                s_done = True
            except SSL.WantReadError:
                pass
        out = b""
        while True:
            try:
                out += server.bio_read(65536)
            except SSL.WantReadError:
                break
        spent += time.thread_time() - start
        c_in.write(out)
    return spent


Server = ssl.SSLContext | PyOpenSSLContext | SSL.Context


def _rate(server: Server, client_ctx: ssl.SSLContext, n: int) -> float:
    if isinstance(server, SSL.Context):
        return n / sum(_raw_handshake(server, client_ctx) for _ in range(n))
    if isinstance(server, PyOpenSSLContext):

        async def served() -> float:
            return sum(_pyopenssl_handshake(server, client_ctx) for _ in range(n))

        return n / asyncio.run(served())
    return n / sum(_handshake(server, client_ctx)[0] for _ in range(n))


def _handshake_rates(servers: list[Server], client_ctx: ssl.SSLContext, n: int) -> list[float]:
    """Median handshakes/s per server context over RUNS runs, the contexts interleaved."""
    runs: list[list[float]] = [[] for _ in servers]
    for _ in range(RUNS):
        for i, server_ctx in enumerate(servers):
            runs[i].append(_rate(server_ctx, client_ctx, n))
    return [statistics.median(r) for r in runs]


def _handshake_figures(quick: bool) -> list[Figure]:
    ca = TestAuthority("example.org")
    server_p, client_p = (
        _pems(ca, "spiffe://example.org/server"),
        _pems(ca, "spiffe://example.org/c"),
    )
    spiffe_server = server_context(
        _source(server_p),
        authorize=authorize_member_of("example.org"),
        revocations=InMemoryRevocations(),
    )
    plain_server, plain_client = (
        _plain(server_p, server_side=True),
        _plain(client_p, server_side=False),
    )
    fast_server = pyopenssl_server_context(
        _source(server_p),
        authorize=authorize_member_of("example.org"),
        revocations=InMemoryRevocations(),
    )
    raw_server = _raw_pyopenssl(server_p)
    servers: list[Server] = [spiffe_server, plain_server, fast_server, raw_server]
    n = 60 if quick else 400
    _handshake_rates(servers, plain_client, 20)  # warm up caches
    verified, plain, fast, raw = _handshake_rates(servers, plain_client, n)
    _, done = _handshake(plain_server, plain_client)
    bundles = _source(server_p).current().bundles
    auth = authorize_member_of("example.org")
    now = dt.datetime.now(dt.UTC)
    check = time_per_op(lambda: verify_peer(done, bundles=bundles, authorize=auth, now=now))
    peercert = time_per_op(done.getpeercert)
    return [
        Figure(
            "mTLS handshakes/s, server_context (server CPU)",
            verified,
            "hs/s",
            "plain ssl context, same certs",
            plain,
        ),
        Figure(
            "mTLS handshakes/s, pyopenssl_tls (server CPU)",
            fast,
            "hs/s",
            "server_context (stdlib ssl), same certs and client",
            verified,
            note=f"plain stdlib ssl {plain:,.0f} hs/s: x{fast / plain:.2f}",
        ),
        Figure(
            "mTLS handshakes/s, bare pyOpenSSL, no SPIFFE check (server CPU)",
            raw,
            "hs/s",
            "plain ssl context, same certs",
            plain,
            note="the ceiling of the pyOpenSSL path: the bundled OpenSSL alone",
        ),
        Figure(
            "verify_peer on a handshake (cached chain)",
            check * 1e6,
            "µs",
            "getpeercert() dict",
            peercert * 1e6,
            higher_is_better=False,
        ),
    ]


def _serve(kind: str, p: Pems, client_td: str, conn: Any) -> None:
    async def main() -> None:
        async def hello(request: web.Request) -> web.Response:
            if kind != "plain":
                peer_spiffe_id(request)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        if kind == "spiffe":
            ctx = server_context(
                _source(p),
                authorize=authorize_member_of(client_td),
                revocations=no_revocation_check(),
            )
            site: web.TCPSite = SpiffeTCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        elif kind == "pyopenssl":
            fast = pyopenssl_server_context(
                _source(p),
                authorize=authorize_member_of(client_td),
                revocations=no_revocation_check(),
            )
            site = PyOpenSSLSite(runner, "127.0.0.1", 0, context=fast)
        else:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_plain(p, server_side=True))
        await site.start()
        conn.send(site.port)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) == "cpu":
            conn.send(time.process_time())
        await runner.cleanup()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    asyncio.run(main())


async def _load(port: int, ctx: ssl.SSLContext, seconds: float, new_conn: bool) -> int:
    """Requests completed in ``seconds`` by CONCURRENCY clients."""
    connector = aiohttp.TCPConnector(ssl=ctx, force_close=new_conn, limit=CONCURRENCY)
    url = f"https://127.0.0.1:{port}/"
    count = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200
                count += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count


def _serve_handshakes(kind: str, p: Pems, client_td: str, conn: Any) -> None:
    """A bare asyncio TLS server: each connection is a handshake, the peer's ID, a close."""

    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            info = writer.get_extra_info("ssl_object")
            writer.write(b"ok" if kind == "plain" else str(info.peer_spiffe_id).encode())
            writer.close()

        auth, revs = authorize_member_of(client_td), no_revocation_check()
        if kind == "pyopenssl":
            fast = pyopenssl_server_context(_source(p), authorize=auth, revocations=revs)
            server = await pyopenssl_start_server(answer, "127.0.0.1", 0, context=fast)
        else:
            ctx = (
                server_context(_source(p), authorize=auth, revocations=revs)
                if kind == "spiffe"
                else _plain(p, server_side=True)
            )
            server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) == "cpu":
            conn.send(time.process_time())
        server.close()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    asyncio.run(main())


async def _connect_load(port: int, ctx: ssl.SSLContext, seconds: float, new_conn: bool) -> int:
    """Connections (handshake, answer, close) completed in ``seconds`` by CONCURRENCY clients."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            assert await reader.read()
            writer.close()
            count += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count


def _requests_rate(
    kind: str,
    server_p: Pems,
    client_ctx: Callable[[], ssl.SSLContext],
    seconds: float,
    new_conn: bool,
    *,
    serve: Callable[..., None] = _serve,
    load: Callable[..., Any] = _load,
) -> float:
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(
        target=serve, args=(kind, server_p, "example.org", child), daemon=True
    )
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("bench server did not start")
        port = parent.recv()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
        rates: list[float] = []
        for _ in range(RUNS):
            parent.send("cpu")
            before: float = parent.recv()
            count = asyncio.run(load(port, client_ctx(), seconds, new_conn))
            parent.send("cpu")
            rates.append(count / max(parent.recv() - before, 1e-9))
        return statistics.median(rates)
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def _aiohttp_figures(quick: bool) -> list[Figure]:
    ca = TestAuthority("example.org")
    server_p, client_p = (
        _pems(ca, "spiffe://example.org/server"),
        _pems(ca, "spiffe://example.org/c"),
    )
    seconds = 0.5 if quick else 2.0
    out = []

    def spiffe_client() -> ssl.SSLContext:
        return client_context(
            _source(client_p), authorize=authorize_any(), revocations=no_revocation_check()
        )

    for new_conn, label in ((False, "keep-alive"), (True, "new connection per request")):
        spiffe = _requests_rate("spiffe", server_p, spiffe_client, seconds, new_conn)
        plain = _requests_rate(
            "plain", server_p, lambda: _plain(client_p, server_side=False), seconds, new_conn
        )
        out.append(
            Figure(
                f"aiohttp req/server-CPU-s, SpiffeTCPSite, {label}",
                spiffe,
                "req/s",
                "plain TLS aiohttp server",
                plain,
            )
        )
    fast = _requests_rate("pyopenssl", server_p, spiffe_client, seconds, True)
    out.append(
        Figure(
            "aiohttp req/server-CPU-s, PyOpenSSLSite, new connection per request",
            fast,
            "req/s",
            "SpiffeTCPSite (stdlib ssl)",
            spiffe,
        )
    )
    return out


def _socket_handshake_figures(quick: bool) -> list[Figure]:
    """New mTLS connections per server CPU-second over loopback sockets (asyncio servers)."""
    ca = TestAuthority("example.org")
    server_p, client_p = (
        _pems(ca, "spiffe://example.org/server"),
        _pems(ca, "spiffe://example.org/c"),
    )
    seconds = 0.5 if quick else 2.0

    def client() -> ssl.SSLContext:
        return _plain(client_p, server_side=False)

    rates = {
        kind: _requests_rate(
            kind, server_p, client, seconds, True, serve=_serve_handshakes, load=_connect_load
        )
        for kind in ("spiffe", "pyopenssl", "plain")
    }
    return [
        Figure(
            "new mTLS connections/server-CPU-s, asyncio server_context",
            rates["spiffe"],
            "conn/s",
            "plain ssl asyncio server, same certs",
            rates["plain"],
        ),
        Figure(
            "new mTLS connections/server-CPU-s, asyncio pyopenssl_tls",
            rates["pyopenssl"],
            "conn/s",
            "asyncio server_context (stdlib ssl)",
            rates["spiffe"],
            note=f"plain stdlib ssl x{rates['pyopenssl'] / rates['plain']:.2f}",
        ),
    ]


def run(quick: bool) -> list[Figure]:
    return _handshake_figures(quick) + _socket_handshake_figures(quick) + _aiohttp_figures(quick)


# Bars of the plot: (label, figure name, which value of it).
_BARS = {
    "in memory\n(handshake only)": (
        ("mTLS handshakes/s, server_context (server CPU)", "baseline"),
        ("mTLS handshakes/s, server_context (server CPU)", "value"),
        ("mTLS handshakes/s, pyopenssl_tls (server CPU)", "value"),
        ("mTLS handshakes/s, bare pyOpenSSL, no SPIFFE check (server CPU)", "value"),
    ),
    "asyncio server\n(loopback sockets)": (
        ("new mTLS connections/server-CPU-s, asyncio server_context", "baseline"),
        ("new mTLS connections/server-CPU-s, asyncio server_context", "value"),
        ("new mTLS connections/server-CPU-s, asyncio pyopenssl_tls", "value"),
        None,
    ),
    "aiohttp, a new\nconnection per request": (
        ("aiohttp req/server-CPU-s, SpiffeTCPSite, new connection per request", "baseline"),
        ("aiohttp req/server-CPU-s, SpiffeTCPSite, new connection per request", "value"),
        ("aiohttp req/server-CPU-s, PyOpenSSLSite, new connection per request", "value"),
        None,
    ),
}
_SERIES = (
    "plain stdlib ssl (no SPIFFE check)",
    "stdlib path (server_context)",
    "pyOpenSSL path (pyopenssl_tls)",
    "bare pyOpenSSL (no SPIFFE check)",
)


def plot(figures: list[Figure], png: Path) -> None:
    """Grouped bars: per server CPU-second, each path in each setting."""
    import matplotlib  # noqa: PLC0415 (the bench extra; nothing else needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    by_name = {f.name: f for f in figures}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for s, series in enumerate(_SERIES):
        xs, ys = [], []
        for g, bars in enumerate(_BARS.values()):
            bar = bars[s]
            if bar is None or bar[0] not in by_name:
                continue
            f = by_name[bar[0]]
            xs.append(g + (s - 1.5) * width)
            ys.append(f.baseline_value if bar[1] == "baseline" else f.value)
        ax.bar(xs, ys, width, label=series)
    ax.set_xticks(range(len(_BARS)), list(_BARS))
    ax.set_ylabel("new mTLS handshakes per server CPU-second")
    ax.set_title("TLS handshakes: stdlib ssl (OpenSSL 3.0) vs pyOpenSSL (bundled OpenSSL)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    runs = [run(args.quick) for _ in range(args.runs)]
    medians = [
        dataclasses.replace(
            figs[0],
            value=statistics.median(f.value for f in figs),
            baseline_value=statistics.median(f.baseline_value for f in figs),
            note="",
        )
        for figs in zip(*runs, strict=True)
    ]
    print("| figure | value | baseline | baseline value | ratio |")
    print("|---|---|---|---|---|")
    for f in medians:
        print(
            f"| {f.name} | {f.value:,.0f} {f.unit} | {f.baseline_name} | "
            f"{f.baseline_value:,.0f} | {f.ratio:.2f} |"
        )
    if args.plot:
        plot(medians, args.plot)


if __name__ == "__main__":
    main()
