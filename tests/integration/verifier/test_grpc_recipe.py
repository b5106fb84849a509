"""The gRPC recipe: a grpc.aio server and client over TCP on loopback, SVIDs from X.509 sources.

The server uses ``server_credentials`` (gRPC's dynamic SSL credentials, following the source) and
``SpiffeServerInterceptor`` (the s2s checks on every call, from the auth context); the client
``SpiffeChannel`` (the server's trust domain's roots and DNS name; a new channel after rotation).
Accepted with the right ID; refused with another ID, a foreign trust domain, an ID of ours under
a federated root, a revoked certificate; the client refuses a server without the DNS name or of
a foreign trust domain; after rotation calls succeed with the new SVIDs on both sides. Last, the
same with a real CA and agent: the server's SVID from ``X509Source``, revocations from the agent's
CRLs, rotation by revoking the served SVID at the CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from cryptography import x509

from s2s.core.bundle import BundleSet
from s2s.core.revocation import RevocationRecord
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_id
from s2s.verifier.grpc_tls import (
    SpiffeChannel,
    SpiffeServerInterceptor,
    peer_spiffe_id,
    server_credentials,
)
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.source import X509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context
from s2s.verifier.x509context import X509Context

pytestmark = pytest.mark.timeout(60)

SERVER = "spiffe://example.org/billing"
CLIENT = "spiffe://example.org/web"
NAME = "billing.internal"
METHOD = "/s2s.test.Echo/Who"


async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    leaf = x509.load_pem_x509_certificate(context.auth_context()["x509_pem_cert"][0])
    return f"{peer_spiffe_id()} {leaf.serial_number:x}".encode()


class World:
    def __init__(self, ca: TestAuthority, other: TestAuthority) -> None:
        self.ca, self.other = ca, other
        # The server trusts example.org and, federated, other.org.
        self.server_src = StaticX509Source(
            X509Context(
                (ca.issue_x509_svid(SERVER, dns_names=[NAME]),),
                BundleSet.of(ca.bundle(), other.bundle()),
            )
        )
        self.revocations = InMemoryRevocations()
        self.port = 0

    def client_src(self, svid: Any) -> StaticX509Source:
        return StaticX509Source(X509Context((svid,), BundleSet.of(self.ca.bundle())))

    async def call(self, source: StaticX509Source, **kw: Any) -> str:
        return await call(self.port, source, **kw)


async def call(
    port: int, source: StaticX509Source, *, td: str = "example.org", name: str = NAME
) -> str:
    """One call over a fresh SpiffeChannel (so a fresh connection): the server's answer."""
    channel = SpiffeChannel(f"127.0.0.1:{port}", source, server_trust_domain=td, server_name=name)
    try:
        answer = await channel.channel().unary_unary(METHOD)(b"", timeout=10)
        return bytes(answer).decode()
    finally:
        await channel.close()


@pytest.fixture
async def world(ca: TestAuthority, other_ca: TestAuthority) -> AsyncIterator[World]:
    w = World(ca, other_ca)
    interceptor = SpiffeServerInterceptor(
        w.server_src, authorize=authorize_id(CLIENT), revocations=w.revocations
    )
    server = grpc.aio.server(interceptors=[interceptor])
    handler = grpc.method_handlers_generic_handler(
        "s2s.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server.add_generic_rpc_handlers((handler,))
    w.port = server.add_secure_port("127.0.0.1:0", server_credentials(w.server_src))
    await server.start()
    try:
        yield w
    finally:
        await server.stop(None)


async def refused(world: World, source: StaticX509Source, **kw: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.call(source, **kw)
    return err.value.code()


async def test_the_right_client_is_accepted_and_others_refused(world: World) -> None:
    client = world.ca.issue_x509_svid(CLIENT)
    answer = await world.call(world.client_src(client))
    assert answer == f"{CLIENT} {client.serial:x}"

    # Another ID of our trust domain: the interceptor refuses it before the handler.
    intruder = world.client_src(world.ca.issue_x509_svid("spiffe://example.org/intruder"))
    assert await refused(world, intruder) == grpc.StatusCode.PERMISSION_DENIED
    # A trust domain the server has no bundle for: gRPC's handshake fails.
    third = TestAuthority("third.org")
    foreign = world.client_src(third.issue_x509_svid("spiffe://third.org/web"))
    assert await refused(world, foreign) == grpc.StatusCode.UNAVAILABLE
    # Our client's ID under the federated other.org root: gRPC accepts the chain (that root is
    # in its pool), the per-trust-domain check does not.
    posing = world.client_src(world.ca.issue_x509_svid(CLIENT, issuer=world.other))
    assert await refused(world, posing) == grpc.StatusCode.PERMISSION_DENIED
    # A revoked certificate.
    now = dt.datetime.now(dt.UTC)
    world.revocations.add(
        RevocationRecord.for_serial(
            client.serial, revoked_at=now, expires_at=now + dt.timedelta(hours=1)
        )
    )
    assert await refused(world, world.client_src(client)) == grpc.StatusCode.PERMISSION_DENIED
    fresh = world.ca.issue_x509_svid(CLIENT)
    assert await world.call(world.client_src(fresh)) == f"{CLIENT} {fresh.serial:x}"


async def test_the_client_refuses_a_server_it_should_not_trust(world: World) -> None:
    source = world.client_src(world.ca.issue_x509_svid(CLIENT))
    # The server's SVID does not carry this DNS name.
    assert await refused(world, source, name="payroll.internal") == grpc.StatusCode.UNAVAILABLE
    # The server is not of the trust domain the client expects.
    ours_and_other = StaticX509Source(
        X509Context(source.current().svids, BundleSet.of(world.ca.bundle(), world.other.bundle()))
    )
    assert await refused(world, ours_and_other, td="other.org") == grpc.StatusCode.UNAVAILABLE
    assert (await world.call(ours_and_other)).startswith(CLIENT)  # twin: the right one


async def test_rotation_is_followed_on_both_sides(world: World) -> None:
    first = world.ca.issue_x509_svid(CLIENT)
    source = world.client_src(first)
    channel = SpiffeChannel(
        f"127.0.0.1:{world.port}", source, server_trust_domain="example.org", server_name=NAME
    )
    try:
        call = channel.channel().unary_unary(METHOD)
        assert await call(b"", timeout=10) == f"{CLIENT} {first.serial:x}".encode()
        # The client rotates: the next channel presents the new SVID.
        second = world.ca.issue_x509_svid(CLIENT)
        source.set_svids(second)
        call = channel.channel().unary_unary(METHOD)
        assert await call(b"", timeout=10) == f"{CLIENT} {second.serial:x}".encode()
        # The server rotates to an SVID with another DNS name: new connections get it.
        world.server_src.set_svids(world.ca.issue_x509_svid(SERVER, dns_names=["billing-v2"]))
        assert (await world.call(source, name="billing-v2")).startswith(CLIENT)
        assert await refused(world, source) == grpc.StatusCode.UNAVAILABLE  # the old name
    finally:
        await channel.close()


MY_UID = f"unix:uid:{os.getuid()}"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def served_serial(port: int, client: StaticX509Source) -> int:
    """The serial of the certificate the gRPC server presents (an ssl probe pinning SERVER)."""
    ctx = client_context(client, authorize=authorize_id(SERVER), revocations=no_revocation_check())
    ctx.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_with_svids_from_a_real_agent(harness: Any) -> None:
    ca = harness.ca
    token, agent_id = await ca.join_token()
    await ca.entry(agent_id, "/billing", [MY_UID], dns_names=[NAME])
    running = await harness.start_agent(harness.config(token=token))
    async with X509Source(socket=str(running.agent.config.socket)) as source:
        # No revocations= given: the source's own, the CRLs the agent pushes.
        interceptor = SpiffeServerInterceptor(source, authorize=authorize_id(CLIENT))
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "s2s.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
                ),
            )
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(source))
        await server.start()
        try:
            bundles = source.current().bundles
            web = await ca.server.issuer.mint_x509_svid(ca.td.id("/web"))
            client = StaticX509Source(X509Context((web,), bundles))
            assert await call(port, client) == f"{CLIENT} {web.serial:x}"
            first = source.current().default_svid
            assert await served_serial(port, client) == first.serial

            # Rotation: the served SVID is revoked at the CA, the agent pushes a fresh one, and
            # the next connection is served with it.
            await ca.server.revocations.revoke_serial(first.serial, reason="superseded")

            async def rotated() -> bool:
                return source.current().default_svid.serial != first.serial

            await until(rotated, "the agent pushes a fresh server SVID")
            fresh = source.current().default_svid.serial
            assert await served_serial(port, client) == fresh
            assert await call(port, client) == f"{CLIENT} {web.serial:x}"

            # A revoked client: refused once the agent's CRL lists it; another one still passes.
            await ca.server.revocations.revoke_serial(web.serial, reason="key compromise")

            async def refused() -> bool:
                try:
                    await call(port, client)
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.PERMISSION_DENIED
                return False

            await until(refused, "the revoked client is refused")
            other = await ca.server.issuer.mint_x509_svid(ca.td.id("/web"))
            again = StaticX509Source(X509Context((other,), bundles))
            assert await call(port, again) == f"{CLIENT} {other.serial:x}"
        finally:
            await server.stop(None)
