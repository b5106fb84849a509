"""The pyOpenSSL asyncio transport (s2s.verifier.pyopenssl_tls) passes the stdlib path's
handshake cases: the same accepting and rejecting twins (test_verifier_handshakes.make_case),
with the other end of each connection on either path, rotation under a stream of connections
with no failed handshake, no session resumption, and the system's openssl on the other end."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry
from test_verifier_handshakes import REJECTIONS, make_case
from test_verifier_openssl import _with_s_server, s_client, write_svid
from test_verifier_rotation import _bundles
from verifier_support import Served, source_of

from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier import pyopenssl_tls, tls
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.pyopenssl_tls import PyOpenSSLContext, TlsFailed
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.x509context import X509Context

PEER = "spiffe://example.org/peer"
LOCAL = "spiffe://example.org/local"
BACKENDS = ["pyopenssl", "stdlib"]  # the path of the *other* end of each connection
AnyContext = PyOpenSSLContext | ssl.SSLContext


def _context(
    backend: str, server_side: bool, source: StaticX509Source, **kwargs: object
) -> AnyContext:
    module = pyopenssl_tls if backend == "pyopenssl" else tls
    factory = module.server_context if server_side else module.client_context
    kwargs.setdefault("authorize", authorize_any())
    kwargs.setdefault("revocations", no_revocation_check())
    kwargs.setdefault("metrics", PeerMetrics(CollectorRegistry()))
    return factory(source, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(ctx: AnyContext) -> AsyncIterator[Served]:
    """A loopback server on either path answering each connection with the verified peer ID."""
    served = Served(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid = writer.get_extra_info("ssl_object").peer_spiffe_id
        served.peers.append(str(sid))
        writer.write(str(sid).encode())
        await writer.drain()
        writer.close()

    if isinstance(ctx, PyOpenSSLContext):
        server = await pyopenssl_tls.start_server(handle, "127.0.0.1", 0, context=ctx)
    else:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()


async def _open(port: int, ctx: AnyContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(ctx, PyOpenSSLContext):
        return await pyopenssl_tls.open_connection("127.0.0.1", port, context=ctx)
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx)


async def exchange(port: int, ctx: AnyContext) -> bytes:
    """Connect, read the answer; b"" when the server dropped us after our handshake ended."""
    reader, writer = await _open(port, ctx)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        writer.close()


# -- the stdlib path's cases ---------------------------------------------------------------------


async def _server_checks_client(
    name: str, peer: str, ca: TestAuthority, other: TestAuthority, metrics: PeerMetrics
) -> tuple[bytes, list[str], str]:
    case, reason = make_case(name, ca, other)
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(LOCAL), *case.verifier_bundles),
        authorize=case.authorize,
        revocations=case.revocations,
        metrics=metrics,
    )
    client_ctx = _context(peer, False, source_of(case.svid, ca.bundle(), other.bundle()))
    async with serving(server_ctx) as served:
        answer = await exchange(served.port, client_ctx)
    return answer, served.peers, reason


async def _client_checks_server(
    name: str, peer: str, ca: TestAuthority, other: TestAuthority, metrics: PeerMetrics
) -> tuple[bytes | PeerRejected, str]:
    case, reason = make_case(name, ca, other)
    server_ctx = _context(peer, True, source_of(case.svid, ca.bundle(), other.bundle()))
    client_ctx = pyopenssl_tls.client_context(
        source_of(ca.issue_x509_svid(LOCAL), *case.verifier_bundles),
        authorize=case.authorize,
        revocations=case.revocations,
        metrics=metrics,
    )
    async with serving(server_ctx) as served:
        try:
            return await exchange(served.port, client_ctx), reason
        except PeerRejected as exc:
            return exc, reason


@pytest.mark.parametrize("peer", BACKENDS)
async def test_server_accepts_good_client(
    peer: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, peers, _ = await _server_checks_client("good", peer, ca, other_ca, metrics)
    assert answer == PEER.encode()
    assert peers == [PEER]
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("peer", BACKENDS)
@pytest.mark.parametrize("name", REJECTIONS)
async def test_server_rejects_client(
    name: str, peer: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, peers, reason = await _server_checks_client(name, peer, ca, other_ca, metrics)
    assert answer == b""
    assert peers == [], "the application must never see a rejected connection"
    assert metrics.rejection_count(reason) == 1
    assert metrics.accepted_count() == 0


@pytest.mark.parametrize("peer", BACKENDS)
async def test_client_accepts_good_server(
    peer: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    answer, _ = await _client_checks_server("good", peer, ca, other_ca, metrics)
    assert answer == LOCAL.encode()  # the server saw us
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("peer", BACKENDS)
@pytest.mark.parametrize("name", REJECTIONS)
async def test_client_rejects_server(
    name: str, peer: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    outcome, reason = await _client_checks_server(name, peer, ca, other_ca, metrics)
    assert isinstance(outcome, PeerRejected), outcome
    assert outcome.reason == reason
    assert isinstance(outcome, ssl.SSLError)
    assert metrics.rejection_count(reason) == 1


async def test_server_rejects_client_without_certificate(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.load_verify_locations(cadata=ca.bundle_pem().decode())
    async with serving(server_ctx) as served:
        assert await exchange(served.port, plain) == b""
        assert served.peers == []
        # Twin: the same client with an SVID is served.
        svid = ca.issue_x509_svid(PEER)
        load_cert_chain_from_memory(plain, svid.chain_pem(), svid.key_pem())
        assert await exchange(served.port, plain) == PEER.encode()
    assert metrics.rejection_count("no-certificate") == 1


async def test_injected_clock_expires_a_peer_openssl_still_accepts(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        clock=clock,
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    async with serving(server_ctx) as served:
        assert await exchange(served.port, client_ctx) == PEER.encode()
        clock.advance(seconds=6 * 60)  # past the 5-minute SVID, still valid on the wall clock
        assert await exchange(served.port, client_ctx) == b""
    assert metrics.rejection_count("expired") == 1


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_no_session_is_resumed(
    version: ssl.TLSVersion, ca: TestAuthority, metrics: PeerMetrics
) -> None:
    """No tickets, no session cache: a client offering its last session gets a full, fully
    checked handshake (TLS 1.2 and 1.3), and TLS 1.1 is refused."""
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    svid = ca.issue_x509_svid(PEER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.minimum_version = client.maximum_version = version
    client.load_verify_locations(cadata=ca.bundle_pem().decode())
    load_cert_chain_from_memory(client, svid.chain_pem(), svid.key_pem())

    async with serving(server_ctx) as served:

        def connect(session: ssl.SSLSession | None) -> tuple[bytes, ssl.SSLSession | None, bool]:
            raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            with raw, client.wrap_socket(raw, session=session) as conn:
                data = conn.recv(1000)
                assert conn.version() == version.name.replace("v1_", "v1.")
                return data, conn.session, conn.session_reused

        data, session, reused = await asyncio.to_thread(connect, None)
        assert (data, reused) == (PEER.encode(), False)
        data, _, reused = await asyncio.to_thread(connect, session)
        assert (data, reused) == (PEER.encode(), False)
    assert metrics.accepted_count() == 2


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
async def test_old_protocol_versions_are_refused(ca: TestAuthority, metrics: PeerMetrics) -> None:
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    client_ctx = pyopenssl_tls.client_context(
        source_of(ca.issue_x509_svid(PEER), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    assert isinstance(server_ctx, PyOpenSSLContext)
    async with serving(server_ctx) as served:
        assert await exchange(served.port, client_ctx) == PEER.encode()  # twin
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await exchange(served.port, old)
        assert served.peers == [PEER]


async def test_a_peer_that_speaks_no_tls_gets_a_clear_error(ca: TestAuthority) -> None:
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    assert isinstance(client_ctx, PyOpenSSLContext)

    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TlsFailed) as info:
            await pyopenssl_tls.open_connection("127.0.0.1", port, context=client_ctx)
        assert "TLS handshake failed" in str(info.value)
        assert isinstance(info.value, ssl.SSLError)
    finally:
        server.close()
        await server.wait_closed()


async def test_large_payloads_and_backpressure(ca: TestAuthority) -> None:
    """Megabytes both ways through StreamWriter.drain (the socket's pause_writing reaches the
    application) and a paused reader."""
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    assert isinstance(server_ctx, PyOpenSSLContext)
    assert isinstance(client_ctx, PyOpenSSLContext)
    payload = bytes(range(256)) * 16 * 1024  # 4 MiB

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.set_write_buffer_limits(high=64 * 1024)
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await pyopenssl_tls.start_server(echo, "127.0.0.1", 0, context=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await pyopenssl_tls.open_connection(
            "127.0.0.1", port, context=client_ctx, limit=64 * 1024
        )

        async def send() -> None:
            for i in range(0, len(payload), 100_000):
                writer.write(payload[i : i + 100_000])
                await writer.drain()

        sending = asyncio.create_task(send())
        received = bytearray()
        while len(received) < len(payload):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk
            received += chunk
        await sending
        assert bytes(received) == payload
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


# -- rotation ------------------------------------------------------------------------------------


async def _served_serial(port: int, ctx: AnyContext) -> tuple[bytes, int]:
    reader, writer = await _open(port, ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        answer = await asyncio.wait_for(reader.read(), 10)
        return answer, x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


@pytest.mark.parametrize("peer", BACKENDS)
async def test_rotation_during_a_stream_of_connections_fails_no_handshake(
    peer: str, metrics: PeerMetrics
) -> None:
    server_col, client_col = "pyopenssl", peer
    old, new = TestAuthority("example.org"), TestAuthority("example.org")
    server_src = StaticX509Source(X509Context((old.issue_x509_svid(LOCAL),), _bundles(old.root)))
    client_src = StaticX509Source(X509Context((old.issue_x509_svid(PEER),), _bundles(old.root)))
    server_ctx = _context(server_col, True, server_src, metrics=metrics)
    client_ctx = _context(client_col, False, client_src, metrics=metrics)
    both = _bundles(old.root, new.root)
    steps = [
        lambda: server_src.set_svids(old.issue_x509_svid(LOCAL)),  # leaf rotation
        lambda: client_src.set_svids(old.issue_x509_svid(PEER)),
        lambda: (server_src.set_bundles(both), client_src.set_bundles(both)),  # add new root
        lambda: server_src.set_svids(new.issue_x509_svid(LOCAL)),  # move to the new root
        lambda: client_src.set_svids(new.issue_x509_svid(PEER)),
        lambda: (
            server_src.set_bundles(_bundles(new.root)),
            client_src.set_bundles(_bundles(new.root)),
        ),  # drop the old root
    ]
    per_step, done = 12, 0
    failures: list[BaseException] = []
    serials: set[int] = set()
    progressed = asyncio.Condition()

    async with serving(server_ctx) as served:

        async def worker() -> None:
            nonlocal done
            while done < per_step * (len(steps) + 1):
                try:
                    answer, serial = await _served_serial(served.port, client_ctx)
                    assert answer == PEER.encode(), answer
                    serials.add(serial)
                except (OSError, AssertionError) as exc:
                    failures.append(exc)
                async with progressed:
                    done += 1
                    progressed.notify_all()

        async def rotator() -> None:
            for i, step in enumerate(steps, start=1):
                async with progressed:
                    await progressed.wait_for(lambda i=i: done >= per_step * i)
                step()

        await asyncio.wait_for(asyncio.gather(rotator(), *(worker() for _ in range(4))), 60)
        assert failures == []
        assert metrics.rejection_counts() == {} or sum(metrics.rejection_counts().values()) == 0
        assert len(serials) >= 3, "the rotated server certificates were never served"
        # Rejecting twin: a client still holding an SVID of the dropped root is refused now.
        stale = StaticX509Source(X509Context((old.issue_x509_svid(PEER),), both))
        assert await exchange(served.port, _context(client_col, False, stale)) == b""
        assert metrics.rejection_count("untrusted-root") == 1


# -- the system's openssl on the other end -------------------------------------------------------

SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"


def _our_server(ca: TestAuthority, metrics: PeerMetrics) -> PyOpenSSLContext:
    return pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )


def _our_client(ca: TestAuthority, metrics: PeerMetrics) -> PyOpenSSLContext:
    return pyopenssl_tls.client_context(
        source_of(ca.issue_x509_svid(CLIENT), ca.bundle()),
        authorize=authorize_id(SERVER),
        metrics=metrics,
        revocations=no_revocation_check(),
    )


@pytest.mark.parametrize("case", ["good", "no-certificate", "untrusted-root", "unauthorized"])
async def test_s_client_against_our_server(case: str, metrics: PeerMetrics, tmp_path: Path) -> None:
    ca = TestAuthority("example.org")
    svid: X509Svid | None = {
        "good": lambda: ca.issue_x509_svid(CLIENT),
        "no-certificate": lambda: None,
        "untrusted-root": lambda: TestAuthority("example.org").issue_x509_svid(CLIENT),
        "unauthorized": lambda: ca.issue_x509_svid(CLIENT),
    }[case]()
    files = write_svid(tmp_path / "c", svid or ca.issue_x509_svid(CLIENT), ca.bundle_pem())
    ctx = _our_server(ca, metrics)
    if case == "unauthorized":
        ctx = pyopenssl_tls.server_context(
            source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
            metrics=metrics,
            authorize=authorize_id("spiffe://example.org/someone-else"),
            revocations=no_revocation_check(),
        )
    async with serving(ctx) as served:
        out = await s_client(served.port, files if svid else None, files["roots"])
    if case == "good":
        assert CLIENT in out
        assert served.peers == [CLIENT]
        assert metrics.accepted_count() == 1
    else:
        assert CLIENT not in out
        assert served.peers == []
        assert metrics.rejection_count(case) == 1
        assert "alert" in out, out  # the refusal reached s_client as a TLS alert


async def _connect_peer(port: int, ctx: PyOpenSSLContext) -> str:
    _reader, writer = await pyopenssl_tls.open_connection("127.0.0.1", port, context=ctx)
    sid = writer.get_extra_info("ssl_object").peer_spiffe_id
    writer.close()
    return str(sid)


async def test_our_client_against_s_server_verify(metrics: PeerMetrics, tmp_path: Path) -> None:
    ca = TestAuthority("example.org")
    files = write_svid(tmp_path / "s", ca.issue_x509_svid(SERVER), ca.bundle_pem())
    ctx = _our_client(ca, metrics)
    assert await _with_s_server(files, lambda port: _connect_peer(port, ctx)) == SERVER
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("case", ["unauthorized", "untrusted-root", "svid-uri-san", "expired"])
async def test_our_client_rejects_s_server(case: str, metrics: PeerMetrics, tmp_path: Path) -> None:
    ca = TestAuthority("example.org")
    server_svid = {
        "unauthorized": lambda: ca.issue_x509_svid("spiffe://example.org/impostor"),
        "untrusted-root": lambda: TestAuthority("example.org").issue_x509_svid(SERVER),
        "svid-uri-san": lambda: ca.issue_x509_svid(SERVER, two_uri_sans=True),
        "expired": lambda: ca.issue_x509_svid(SERVER, expired=True),
    }[case]()
    files = write_svid(tmp_path / "s", server_svid, ca.bundle_pem())
    ctx = _our_client(ca, metrics)
    with pytest.raises(PeerRejected) as info:
        await _with_s_server(files, lambda port: _connect_peer(port, ctx))
    assert info.value.reason == case
    assert metrics.rejection_count(case) == 1


async def test_close_notify_then_eof_reaches_the_application_once(ca: TestAuthority) -> None:
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    assert isinstance(server_ctx, PyOpenSSLContext)
    assert isinstance(client_ctx, PyOpenSSLContext)
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[Exception | None] = loop.create_future()

    class Counting(asyncio.Protocol):
        def __init__(self) -> None:
            self.data, self.eofs = b"", 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.data += data
            self.transport.write(data)  # echo

        def eof_received(self) -> bool:
            self.eofs += 1
            return True  # keep our side open: the transport still closes on the socket's EOF

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set_result(exc)

    seen: list[Counting] = []

    def app() -> Counting:
        seen.append(Counting())
        return seen[-1]

    server = await loop.create_server(
        pyopenssl_tls.server_protocol_factory(server_ctx, app), "127.0.0.1", 0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await pyopenssl_tls.open_connection("127.0.0.1", port, context=client_ctx)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        writer.close()  # close_notify, then FIN
        assert await asyncio.wait_for(lost, 10) is None
        assert (seen[0].data, seen[0].eofs) == (b"hello", 1)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(ca: TestAuthority) -> None:
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    assert isinstance(server_ctx, PyOpenSSLContext)
    assert isinstance(client_ctx, PyOpenSSLContext)
    served: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(str(writer.get_extra_info("ssl_object").peer_spiffe_id))
        writer.close()

    server = await pyopenssl_tls.start_server(
        handle, "127.0.0.1", 0, context=server_ctx, handshake_timeout=1.0
    )  # the twin's handshake (milliseconds) must beat it on a loaded machine too
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # speaks no TLS
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
        # Twin: a client that does the handshake within the timeout is served.
        r2, w2 = await pyopenssl_tls.open_connection("127.0.0.1", port, context=client_ctx)
        await asyncio.wait_for(r2.read(), 10)
        w2.close()
        assert served == [PEER]
    finally:
        server.close()
        await server.wait_closed()


async def test_each_side_needs_its_own_context(ca: TestAuthority) -> None:
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    client_ctx = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    assert isinstance(server_ctx, PyOpenSSLContext)
    assert isinstance(client_ctx, PyOpenSSLContext)
    with pytest.raises(InvalidConfig, match="server_context"):
        pyopenssl_tls.server_protocol_factory(client_ctx, asyncio.Protocol)
    with pytest.raises(InvalidConfig, match="client_context"):
        await pyopenssl_tls.create_connection(server_ctx, asyncio.Protocol, "127.0.0.1", 1)
    with pytest.raises(InvalidConfig, match="revocations"):
        pyopenssl_tls.server_context(
            source_of(ca.issue_x509_svid(LOCAL), ca.bundle()), authorize=authorize_any()
        )


async def test_many_concurrent_handshakes_good_and_refused(
    ca: TestAuthority, metrics: PeerMetrics
) -> None:
    """60 connections at once, a third of them refused: every good one is served, every bad one
    refused in its handshake, each counted once."""
    server_ctx = pyopenssl_tls.server_context(
        source_of(ca.issue_x509_svid(LOCAL), ca.bundle()),
        authorize=authorize_id(PEER),
        revocations=no_revocation_check(),
        metrics=metrics,
    )
    good = _context("pyopenssl", False, source_of(ca.issue_x509_svid(PEER), ca.bundle()))
    bad = _context(
        "pyopenssl", False, source_of(ca.issue_x509_svid("spiffe://example.org/x"), ca.bundle())
    )
    async with serving(server_ctx) as served:
        answers = await asyncio.gather(
            *(exchange(served.port, bad if i % 3 == 0 else good) for i in range(60))
        )
    assert answers.count(PEER.encode()) == 40
    assert answers.count(b"") == 20
    assert served.peers == [PEER] * 40
    assert metrics.accepted_count() == 40
    assert metrics.rejection_count("unauthorized") == 20


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_a_server_that_waits_for_the_client_first(
    version: ssl.TLSVersion, ca: TestAuthority
) -> None:
    """The server's last handshake flight (TLS 1.2) leaves at once; held TLS 1.3 tickets never
    stall a client that speaks first."""
    server_ctx = _context("pyopenssl", True, source_of(ca.issue_x509_svid(LOCAL), ca.bundle()))
    assert isinstance(server_ctx, PyOpenSSLContext)
    svid = ca.issue_x509_svid(PEER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.minimum_version = client.maximum_version = version
    client.load_verify_locations(cadata=ca.bundle_pem().decode())
    load_cert_chain_from_memory(client, svid.chain_pem(), svid.key_pem())

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await pyopenssl_tls.start_server(echo, "127.0.0.1", 0, context=server_ctx)
    port = server.sockets[0].getsockname()[1]

    def talk() -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw, client.wrap_socket(raw) as conn:
            conn.sendall(b"ping")
            return conn.recv(100)

    try:
        assert await asyncio.to_thread(talk) == b"ping"
    finally:
        server.close()
        await server.wait_closed()
