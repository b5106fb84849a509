"""pyOpenSSL contexts: bad peers are refused inside the handshake by the verify callback."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from typing import Any

import pytest
from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from verifier_support import source_of

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.revocation import RevocationRecord
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.pyopenssl import PyOpenSSLTls
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context
from s2s.verifier.x509context import X509Context

SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"


class BlockingServer:
    """One pyOpenSSL connection served in a thread; records the peer ID or the error."""

    def __init__(self, tls: PyOpenSSLTls) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.outcome: Any = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(True)  # pyOpenSSL needs a blocking socket (no timeout)
        conn = SSL.Connection(self.tls.context, sock)
        conn.set_accept_state()
        try:
            sid = self.tls.handshake(conn)
            conn.sendall(str(sid).encode())
            conn.shutdown()
            self.outcome = sid
        except (PeerRejected, SSL.Error) as exc:
            self.outcome = exc
        finally:
            sock.close()
            self.listener.close()

    def finish(self) -> Any:
        self.thread.join(10)
        assert not self.thread.is_alive(), "the server thread hung"
        return self.outcome


def talk(port: int, ctx: ssl.SSLContext) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with raw, ctx.wrap_socket(raw) as tls:
            return tls.recv(1000)
    except (ssl.SSLError, ConnectionResetError):
        return b""


def _revoked(svid: X509Svid) -> InMemoryRevocations:
    now = dt.datetime.now(dt.UTC)
    revs = InMemoryRevocations()
    revs.add(
        RevocationRecord.for_serial(
            svid.serial, revoked_at=now, expires_at=now + dt.timedelta(hours=1)
        )
    )
    return revs


def _server(ca: TestAuthority, metrics: PeerMetrics, bundles: BundleSet, **kw: Any) -> PyOpenSSLTls:
    src = StaticX509Source(X509Context((ca.issue_x509_svid(SERVER),), bundles))
    kw.setdefault("authorize", authorize_any())
    kw.setdefault("revocations", no_revocation_check())
    return PyOpenSSLTls(src, server_side=True, metrics=metrics, **kw)


def test_accepts_good_client(ca: TestAuthority, metrics: PeerMetrics) -> None:
    server = BlockingServer(_server(ca, metrics, BundleSet.of(ca.bundle())))
    client = client_context(
        source_of(ca.issue_x509_svid(CLIENT), ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    assert talk(server.port, client) == CLIENT.encode()
    assert str(server.finish()) == CLIENT
    assert metrics.accepted_count() >= 1


@pytest.mark.parametrize(
    "case",
    ["untrusted-root", "foreign-root", "svid-uri-san", "expired", "revoked", "unauthorized"],
)
def test_rejects_bad_client_in_the_handshake(
    case: str, ca: TestAuthority, other_ca: TestAuthority, metrics: PeerMetrics
) -> None:
    bundles = BundleSet.of(ca.bundle())
    kw: dict[str, Any] = {}
    svid = ca.issue_x509_svid(CLIENT)
    if case == "untrusted-root":
        svid = TestAuthority("example.org").issue_x509_svid(CLIENT)
    elif case == "foreign-root":
        svid = other_ca.issue_x509_svid("spiffe://other.org/client", issuer=ca)
        bundles = BundleSet.of(ca.bundle(), other_ca.bundle())
    elif case == "svid-uri-san":
        svid = ca.issue_x509_svid(CLIENT, two_uri_sans=True)
    elif case == "expired":
        svid = ca.issue_x509_svid(CLIENT, expired=True)
    elif case == "revoked":
        kw["revocations"] = _revoked(svid)
    elif case == "unauthorized":
        kw["authorize"] = authorize_id("spiffe://example.org/someone-else")
    server = BlockingServer(_server(ca, metrics, bundles, **kw))
    client = client_context(
        source_of(svid, ca.bundle(), other_ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    assert talk(server.port, client) == b""
    outcome = server.finish()
    assert isinstance(outcome, SSL.Error), "must fail inside the handshake"
    assert metrics.rejection_count(case) == 1
    assert metrics.accepted_count() == 0


def test_rejects_client_without_certificate(ca: TestAuthority, metrics: PeerMetrics) -> None:
    server = BlockingServer(_server(ca, metrics, BundleSet.of(ca.bundle())))
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.load_verify_locations(cadata=ca.bundle_pem().decode())
    assert talk(server.port, plain) == b""
    outcome = server.finish()
    assert isinstance(outcome, PeerRejected)
    assert outcome.reason == "no-certificate"
    assert metrics.rejection_count("no-certificate") == 1


def test_server_rotation_swaps_context(ca: TestAuthority, metrics: PeerMetrics) -> None:
    src = StaticX509Source(X509Context((ca.issue_x509_svid(SERVER),), BundleSet.of(ca.bundle())))
    tls = PyOpenSSLTls(
        src,
        server_side=True,
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    new_ca = TestAuthority("example.org")
    src.set(X509Context((new_ca.issue_x509_svid(SERVER),), BundleSet.of(new_ca.bundle())))
    server = BlockingServer(tls)
    both = Bundle(trust_domain=ca.trust_domain, x509_authorities=(ca.root, new_ca.root))
    old_client = client_context(
        source_of(ca.issue_x509_svid(CLIENT), both),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    assert talk(server.port, old_client) == b""  # the old root was dropped
    assert isinstance(server.finish(), SSL.Error)
    server = BlockingServer(tls)
    new_client = client_context(
        source_of(new_ca.issue_x509_svid(CLIENT), new_ca.bundle()),
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )
    assert talk(server.port, new_client) == CLIENT.encode()
    assert str(server.finish()) == CLIENT


def test_pyopenssl_client_checks_server(ca: TestAuthority, metrics: PeerMetrics) -> None:
    server = BlockingServer(_server(ca, PeerMetrics(_reg()), BundleSet.of(ca.bundle())))
    src = source_of(ca.issue_x509_svid(CLIENT), ca.bundle())
    for pinned, ok in ((SERVER, True), ("spiffe://example.org/other", False)):
        if not ok:
            server = BlockingServer(_server(ca, PeerMetrics(_reg()), BundleSet.of(ca.bundle())))
        tls = PyOpenSSLTls(
            src,
            server_side=False,
            authorize=authorize_id(pinned),
            metrics=metrics,
            revocations=no_revocation_check(),
        )
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.setblocking(True)
        conn = SSL.Connection(tls.context, sock)
        conn.set_connect_state()
        try:
            if ok:
                assert str(tls.handshake(conn)) == SERVER
                assert conn.recv(1000) == CLIENT.encode()
            else:
                with pytest.raises(SSL.Error):
                    tls.handshake(conn)
        finally:
            sock.close()
        server.finish()
    assert metrics.rejection_count("unauthorized") == 1


def _reg() -> CollectorRegistry:
    return CollectorRegistry()
