"""Rotation under load: SVIDs and trust anchors change while new connections keep arriving.

No handshake may fail, the new certificates must actually be served, and a root removed from
the bundle must stop being trusted (the server swaps whole contexts; ``load_verify_locations``
alone could never forget a root).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import pytest
from cryptography import x509
from verifier_support import exchange, serving

from s2s.core.bundle import Bundle, BundleSet
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context

SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"
WORKERS = 4
PER_STEP = 12  # connections between rotation steps


def _bundles(*roots: x509.Certificate) -> BundleSet:
    return BundleSet.of(
        Bundle(trust_domain=TestAuthority("example.org").trust_domain, x509_authorities=roots)
    )


async def _served_serial(port: int, ctx: ssl.SSLContext) -> tuple[bytes, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return await asyncio.wait_for(reader.read(), 10), x509.load_der_x509_certificate(
            der
        ).serial_number
    finally:
        writer.close()


async def test_rotation_during_a_stream_of_connections_fails_no_handshake(
    metrics: PeerMetrics,
) -> None:
    old, new = TestAuthority("example.org"), TestAuthority("example.org")
    server_src = StaticX509Source(X509Context((old.issue_x509_svid(SERVER),), _bundles(old.root)))
    client_src = StaticX509Source(X509Context((old.issue_x509_svid(CLIENT),), _bundles(old.root)))
    server_ctx = server_context(
        server_src, metrics=metrics, authorize=authorize_any(), revocations=no_revocation_check()
    )
    client_ctx = client_context(
        client_src, metrics=metrics, authorize=authorize_any(), revocations=no_revocation_check()
    )
    both = _bundles(old.root, new.root)
    steps = [
        lambda: server_src.set_svids(old.issue_x509_svid(SERVER)),  # leaf rotation
        lambda: client_src.set_svids(old.issue_x509_svid(CLIENT)),
        lambda: (server_src.set_bundles(both), client_src.set_bundles(both)),  # add new root
        lambda: server_src.set_svids(new.issue_x509_svid(SERVER)),  # move to the new root
        lambda: client_src.set_svids(new.issue_x509_svid(CLIENT)),
        lambda: (
            server_src.set_bundles(_bundles(new.root)),
            client_src.set_bundles(_bundles(new.root)),
        ),  # drop the old root
    ]
    done = 0
    failures: list[BaseException] = []
    serials: set[int] = set()
    progressed = asyncio.Condition()

    async with serving(server_ctx) as served:

        async def worker() -> None:
            nonlocal done
            while done < PER_STEP * (len(steps) + 1):
                try:
                    answer, serial = await _served_serial(served.port, client_ctx)
                    assert answer == CLIENT.encode(), answer
                    serials.add(serial)
                except (OSError, AssertionError) as exc:
                    failures.append(exc)
                async with progressed:
                    done += 1
                    progressed.notify_all()

        async def rotator() -> None:
            for i, step in enumerate(steps, start=1):
                async with progressed:
                    await progressed.wait_for(lambda i=i: done >= PER_STEP * i)
                step()

        await asyncio.wait_for(asyncio.gather(rotator(), *(worker() for _ in range(WORKERS))), 60)

        assert failures == []
        assert metrics.rejection_count("untrusted-root") == 0
        assert len(serials) >= 3, "the rotated server certificates were never served"
        trusted = {int(c["serialNumber"], 16) for c in server_ctx.s2s.current().get_ca_certs()}
        assert trusted == {new.root.serial_number}, "the dropped root is still in the store"
        # Rejecting twin: a client still holding an SVID of the dropped root is refused now.
        stale = StaticX509Source(X509Context((old.issue_x509_svid(CLIENT),), both))
        assert (
            await exchange(
                served.port,
                client_context(stale, authorize=authorize_any(), revocations=no_revocation_check()),
            )
            == b""
        )
        assert metrics.rejection_count("untrusted-root") == 1


async def test_client_context_follows_rotation_in_place(metrics: PeerMetrics) -> None:
    ca = TestAuthority("example.org")
    server_src = StaticX509Source(X509Context((ca.issue_x509_svid(SERVER),), _bundles(ca.root)))
    client_src = StaticX509Source(X509Context((ca.issue_x509_svid(CLIENT),), _bundles(ca.root)))
    client_ctx = client_context(
        client_src, metrics=metrics, authorize=authorize_any(), revocations=no_revocation_check()
    )
    first = client_ctx.s2s.current()
    async with serving(
        server_context(server_src, authorize=authorize_any(), revocations=no_revocation_check())
    ) as served:
        assert await exchange(served.port, client_ctx) == CLIENT.encode()
        client_src.set_svids(ca.issue_x509_svid("spiffe://example.org/renamed"))
        assert await exchange(served.port, client_ctx) == b"spiffe://example.org/renamed"
        assert client_ctx.s2s.current() is not first
        assert await exchange(served.port, client_ctx.s2s.current()) == (
            b"spiffe://example.org/renamed"
        )
        # Twin: after close() the context no longer follows the source.
        client_ctx.s2s.close()
        client_src.set_svids(ca.issue_x509_svid("spiffe://example.org/third"))
        assert await exchange(served.port, client_ctx) == b"spiffe://example.org/renamed"


async def test_rotation_from_another_thread_under_blocking_clients(metrics: PeerMetrics) -> None:
    """Sources such as the sync facade call back from their own thread while other threads
    wrap sockets: contexts are swapped, never modified, so no handshake may fail."""
    ca = TestAuthority("example.org")
    server_src = StaticX509Source(X509Context((ca.issue_x509_svid(SERVER),), _bundles(ca.root)))
    client_src = StaticX509Source(X509Context((ca.issue_x509_svid(CLIENT),), _bundles(ca.root)))
    client_ctx = client_context(
        client_src, metrics=metrics, authorize=authorize_any(), revocations=no_revocation_check()
    )
    svids = [ca.issue_x509_svid(CLIENT) for _ in range(20)]
    stop = threading.Event()
    failures: list[BaseException] = []
    answers: list[bytes] = []

    async with serving(
        server_context(
            server_src,
            metrics=metrics,
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
    ) as served:

        def connect_many() -> None:
            for _ in range(40):
                try:
                    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
                    with raw, client_ctx.wrap_socket(raw) as tls:
                        answers.append(tls.recv(1000))
                except OSError as exc:
                    failures.append(exc)

        def rotate() -> None:
            while not stop.is_set():
                for svid in svids:
                    client_src.set_svids(svid)
                    server_src.set_svids(ca.issue_x509_svid(SERVER))

        rotator = threading.Thread(target=rotate, daemon=True)
        rotator.start()
        try:
            await asyncio.gather(*(asyncio.to_thread(connect_many) for _ in range(2)))
        finally:
            stop.set()
            rotator.join(10)
    assert failures == []
    assert answers == [CLIENT.encode()] * 80
    assert metrics.rejection_count("handshake-failed") == 0


async def test_current_context_used_directly_still_verifies(metrics: PeerMetrics) -> None:
    ca = TestAuthority("example.org")
    server_src = StaticX509Source(X509Context((ca.issue_x509_svid(SERVER),), _bundles(ca.root)))
    client_src = StaticX509Source(X509Context((ca.issue_x509_svid(CLIENT),), _bundles(ca.root)))
    pinned = client_context(
        client_src,
        authorize=authorize_id(SERVER),
        metrics=metrics,
        revocations=no_revocation_check(),
    )
    wrong = client_context(
        client_src,
        authorize=authorize_id(CLIENT),
        metrics=metrics,
        revocations=no_revocation_check(),
    )
    async with serving(
        server_context(server_src, authorize=authorize_any(), revocations=no_revocation_check())
    ) as served:
        assert await exchange(served.port, pinned.s2s.current()) == CLIENT.encode()
        with pytest.raises(PeerRejected):
            await exchange(served.port, wrong.s2s.current())
    assert metrics.rejection_count("unauthorized") == 1
