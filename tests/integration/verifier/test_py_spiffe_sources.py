"""py-spiffe's own sources (the official ``spiffe`` package) drive the s2s verifier unchanged.

A real CA and a real s2s agent; two py-spiffe ``X509Source``s in this process (each picks one of
the two SVIDs the agent serves us, with py-spiffe's ``svid_picker``) and a py-spiffe
``JwtSource``, each built in a worker thread (their constructors block). They are passed as they
are to ``server_context``, ``client_context`` and ``JwtValidator``: mTLS handshakes are accepted
with the pinned IDs and refused for another ID, a foreign trust domain, an impostor root and a
revoked SVID (explicit ``CaRevocationFeed``); a rotated SVID is used on the next handshake;
revocations must be chosen (``InvalidConfig`` naming both choices). Bundles stay per trust
domain: over the agent's Workload API server with a federated bundle, a client of the federated
trust domain is accepted until that bundle is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import spiffe
from cryptography import x509
from prometheus_client import CollectorRegistry

from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidConfig, InvalidToken
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_id, authorize_member_of
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.jwt import JwtValidator
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.py_spiffe import PySpiffeX509Source, from_py_spiffe
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(90)

MY_UID = f"unix:uid:{os.getuid()}"
SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"
AUD = "billing"


def picker(spiffe_id: str) -> Callable[[list[Any]], Any]:
    # Never raise: py-spiffe closes the source for good when its picker fails, and the agent
    # withdraws a revoked SVID before its replacement arrives.
    return lambda svids: next((s for s in svids if str(s.spiffe_id) == spiffe_id), svids[0])


async def py_x509(socket: str, spiffe_id: str | None = None) -> Any:
    kwargs: dict[str, Any] = {"socket_path": f"unix://{socket}", "timeout_in_seconds": 10}
    if spiffe_id is not None:
        kwargs["svid_picker"] = picker(spiffe_id)
    return await asyncio.to_thread(spiffe.X509Source, **kwargs)


@dataclass
class World:
    ca: Any
    py_server: Any
    py_client: Any
    py_jwt: Any
    feed: CaRevocationFeed


@pytest.fixture
async def world(harness: Any) -> AsyncIterator[World]:
    ca = harness.ca
    token, agent_id = await ca.join_token()
    await ca.entry(agent_id, "/client", [MY_UID])
    await ca.entry(agent_id, "/server", [MY_UID])
    running = await harness.start_agent(harness.config(token=token))
    socket = str(running.agent.config.socket)
    async with contextlib.AsyncExitStack() as stack:
        sources = []
        for spiffe_id in (SERVER, CLIENT):
            source = await py_x509(socket, spiffe_id)
            stack.callback(source.close)
            sources.append(source)
        py_jwt = await asyncio.to_thread(
            spiffe.JwtSource, socket_path=f"unix://{socket}", timeout_in_seconds=10
        )
        stack.callback(py_jwt.close)
        # The feed reaches the CA over mTLS with the server's SVID, from the py-spiffe source too.
        feed = CaRevocationFeed.over_https(ca.url, from_py_spiffe(sources[0]), wait=5.0)
        await feed.start()
        stack.push_async_callback(feed.stop)
        yield World(ca, sources[0], sources[1], py_jwt, feed)


@contextlib.asynccontextmanager
async def serving(ctx: ssl.SSLContext) -> AsyncIterator[tuple[int, list[int]]]:
    """A TLS server answering with the verified peer ID; the list gets each client's serial."""
    serials: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        serials.append(x509.load_der_x509_certificate(der).serial_number)
        with contextlib.suppress(OSError):
            writer.write(str(tls.peer_spiffe_id).encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1], serials
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    """The server's answer; b"" when the server refused us after our side of the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        writer.close()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def static_client(svid: X509Svid, bundles: BundleSet) -> ssl.SSLContext:
    """A client presenting ``svid`` (a holder of its key), trusting ``bundles``, pinning SERVER."""
    return client_context(
        StaticX509Source(X509Context((svid,), bundles)),
        authorize=authorize_id(SERVER),
        revocations=no_revocation_check(),
    )


def py_serial(source: Any, spiffe_id: str = CLIENT) -> int | None:
    svid = source.get_x509_context().default_svid
    return int(svid.leaf.serial_number) if str(svid.spiffe_id) == spiffe_id else None


async def test_py_spiffe_x509_sources_are_accepted_by_both_contexts(world: World) -> None:
    metrics = PeerMetrics(CollectorRegistry())
    server_ctx = server_context(
        world.py_server, authorize=authorize_id(CLIENT), revocations=world.feed, metrics=metrics
    )
    client_ctx = client_context(
        world.py_client, authorize=authorize_id(SERVER), revocations=world.feed
    )
    async with serving(server_ctx) as (port, serials):
        assert await exchange(port, client_ctx) == CLIENT.encode()
        assert serials == [py_serial(world.py_client)]  # py-spiffe's picked SVID was presented

        # Twin: the client pins another server ID and refuses ours inside the handshake.
        pinned_elsewhere = client_context(
            world.py_client, authorize=authorize_id("spiffe://example.org/db"),
            revocations=world.feed,
        )  # fmt: skip
        with pytest.raises(PeerRejected, match="is not authorized"):
            await exchange(port, pinned_elsewhere)

        # Twin: a server that expects another client refuses ours.
        strict = server_context(
            world.py_server,
            authorize=authorize_id("spiffe://example.org/db"),
            revocations=world.feed,
            metrics=metrics,
        )
        async with serving(strict) as (other_port, _):
            assert await exchange(other_port, client_ctx) == b""
        assert metrics.rejection_count("unauthorized") == 1

        bundles = from_py_spiffe(world.py_client).current().bundles
        # Twin: a client of a foreign trust domain (no bundle for other.org here).
        foreign = TestAuthority("other.org")
        foreign_ctx = static_client(foreign.issue_x509_svid("spiffe://other.org/client"), bundles)
        assert await exchange(port, foreign_ctx) == b""
        # Twin: our client's ID, under a root that merely claims example.org.
        impostor = TestAuthority("example.org")
        assert await exchange(port, static_client(impostor.issue_x509_svid(CLIENT), bundles)) == b""
        # OpenSSL refuses both chains (no root of the bundles) before the SPIFFE checks.
        assert metrics.rejection_count("untrusted-root") == 2
        assert await exchange(port, client_ctx) == CLIENT.encode()  # still accepted

    # A context's own adapter stops following py-spiffe when the context is closed.
    followers = len(world.py_client._subscribers)
    client_context(
        world.py_client, authorize=authorize_id(SERVER), revocations=world.feed
    ).s2s.close()
    assert len(world.py_client._subscribers) == followers


async def test_revoked_svid_is_refused_and_the_rotated_one_is_used(world: World) -> None:
    metrics = PeerMetrics(CollectorRegistry())
    server_ctx = server_context(
        world.py_server, authorize=authorize_id(CLIENT), revocations=world.feed, metrics=metrics
    )
    client_ctx = client_context(
        world.py_client, authorize=authorize_id(SERVER), revocations=world.feed
    )
    adapter = from_py_spiffe(world.py_client)
    assert isinstance(adapter, PySpiffeX509Source)
    old = adapter.current().default_svid
    replay = static_client(old, adapter.current().bundles)
    async with serving(server_ctx) as (port, serials):
        assert await exchange(port, replay) == CLIENT.encode()  # twin: accepted until revoked
        await world.ca.server.revocations.revoke_serial(old.serial, reason="key compromise")

        async def refused() -> bool:
            return await exchange(port, replay) == b""

        await until(refused, f"the revoked serial {old.serial:x} is refused", 5.0)
        assert metrics.rejection_count("revoked") >= 1

        async def rotated() -> bool:
            return py_serial(world.py_client) not in (None, old.serial)

        await until(rotated, "the agent pushes py-spiffe a fresh SVID", 10.0)
        fresh = py_serial(world.py_client)
        # The same context, built before the rotation, presents the fresh SVID (the adapters
        # convert py-spiffe's update on its watcher thread, just after py-spiffe has it).

        async def presents_fresh() -> bool:
            return await exchange(port, client_ctx) == CLIENT.encode()

        await until(presents_fresh, "the context presents the fresh SVID", 5.0)
        assert serials[-1] == fresh
        assert adapter.current().default_svid.serial == fresh  # the adapter followed too
        assert await exchange(port, replay) == b""  # and the old one stays refused


async def test_revocations_must_be_chosen_for_py_spiffe_sources(world: World) -> None:
    for make in (server_context, client_context):
        with pytest.raises(InvalidConfig) as err:
            make(world.py_server, authorize=authorize_id(CLIENT))
        assert "X509Source carries no revocations" in str(err.value)
        assert "revocations=<a lookup>" in str(err.value)
        assert "revocations=no_revocation_check()" in str(err.value)
        # Twin: the explicit opt-out is a choice, and is accepted.
        make(world.py_server, authorize=authorize_id(CLIENT), revocations=no_revocation_check())
    with pytest.raises(InvalidConfig, match=r"JwtSource carries no revocations.*no_revocation"):
        JwtValidator(world.py_jwt, AUD)
    with pytest.raises(InvalidConfig, match="JwtSource holds no X509-SVID"):
        server_context(world.py_jwt, authorize=authorize_id(CLIENT), revocations=world.feed)
    with pytest.raises(InvalidConfig, match="X509Source holds no JWT authorities"):
        JwtValidator(world.py_server, AUD, revocations=world.feed)
    with pytest.raises(InvalidConfig, match="not a py-spiffe X509Source or JwtSource"):
        from_py_spiffe(object())


async def test_py_spiffe_jwt_source_drives_the_validator(world: World) -> None:
    validator = JwtValidator(world.py_jwt, AUD, revocations=world.feed)
    svid = await asyncio.to_thread(world.py_jwt.fetch_svid, {AUD}, spiffe.SpiffeId(CLIENT))
    assert str(validator.validate(svid.token).spiffe_id) == CLIENT
    # Another token of the same ID (the agent caches one per audience list).
    other = await asyncio.to_thread(
        world.py_jwt.fetch_svid, {AUD, "payroll"}, spiffe.SpiffeId(CLIENT)
    )
    assert other.token != svid.token

    # Twins: another audience; a key that only claims the trust domain; a revoked jti.
    with pytest.raises(InvalidToken) as err:
        JwtValidator(world.py_jwt, "payroll", revocations=world.feed).validate(svid.token)
    assert err.value.reason == "aud"
    with pytest.raises(InvalidToken) as err:
        validator.validate(TestAuthority("example.org").issue_jwt_svid(CLIENT, AUD))
    assert err.value.reason == "kid"
    jti = validator.validate(svid.token).claims.jti
    assert jti is not None
    await world.ca.server.revocations.revoke_jti(jti, reason="leaked")

    async def refused() -> bool:
        try:
            validator.validate(svid.token)
        except InvalidToken as exc:
            return exc.reason == "revoked"
        return False

    await until(refused, "the revoked jti is refused", 5.0)
    assert str(validator.validate(other.token).spiffe_id) == CLIENT  # another token still passes


async def test_federated_bundles_stay_per_trust_domain(
    authority: TestAuthority, provider: StaticIdentityProvider, server: WorkloadApiServer
) -> None:
    other = TestAuthority("other.org")
    provider.put("web", [MY_UID], authority.issue_x509_svid(SERVER))
    provider.set_bundles(BundleSet.of(authority.bundle(), other.bundle()))
    py_server = await py_x509(server.socket_path)
    try:
        adapter = from_py_spiffe(py_server)
        td = {b.trust_domain: b.x509_authorities for b in adapter.current().bundles}
        assert td == {
            TrustDomain.parse("example.org"): (authority.root,),
            TrustDomain.parse("other.org"): (other.root,),
        }
        server_ctx = server_context(
            py_server, authorize=authorize_member_of("other.org"),
            revocations=no_revocation_check(),
        )  # fmt: skip
        ours = BundleSet.of(authority.bundle())
        federated = static_client(other.issue_x509_svid("spiffe://other.org/client"), ours)
        third = TestAuthority("third.org")
        async with serving(server_ctx) as (port, _):
            assert await exchange(port, federated) == b"spiffe://other.org/client"
            # Twin: a trust domain py-spiffe has no bundle for.
            assert await exchange(port, static_client(third.issue_x509_svid(
                "spiffe://third.org/client"), ours)) == b""  # fmt: skip
            # Twin: other.org's bundle is withdrawn; the next handshake refuses its client.
            provider.set_bundles(BundleSet.of(authority.bundle()))

            async def dropped() -> bool:
                return len(adapter.current().bundles) == 1

            await until(dropped, "py-spiffe drops other.org's bundle")

            async def refused() -> bool:
                return await exchange(port, federated) == b""

            await until(refused, "the context drops other.org's root")
    finally:
        await asyncio.to_thread(py_server.close)
