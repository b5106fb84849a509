"""Two s2s trust domains on loopback, each a real CA and a real agent, federated by hand with
``s2s-ca bundle show --format spiffe`` / ``s2s-ca bundle set``: a workload of example.org calls a
service of other.org over mTLS through ``s2s.verifier`` (with our X509Source and with the official
``spiffe`` client's), each side checking the other against that trust domain's own bundle.

Rejecting twins: a peer of a trust domain that is not federated, an entry that does not federate
with the peer's trust domain, an authorizer that names another trust domain, a federated bundle
deleted at the CA, and revocation data that never crosses trust domains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import spiffe
from federation_support import CaHandle, RunningAgent, agent_config, start_agent, wait_until

from s2s.cli.ca import main as s2s_ca
from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidToken
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier import (
    JwtSource,
    JwtValidator,
    StaticX509Source,
    X509Context,
    X509Source,
    authorize_id,
    authorize_member_of,
    client_context,
    server_context,
)
from s2s.verifier.revocation_choice import no_revocation_check

MY_UID = f"unix:uid:{os.getuid()}"
A = TrustDomain.parse("example.org")
B = TrustDomain.parse("other.org")
CLIENT = SpiffeId.parse("spiffe://example.org/client")
API = SpiffeId.parse("spiffe://other.org/api")


@dataclass
class Domain:
    ca: CaHandle
    td: TrustDomain
    agent: RunningAgent
    entry_id: str

    @property
    def socket(self) -> str:
        return str(self.agent.agent.config.socket)


async def cli(ca: CaHandle, *args: str) -> int:
    assert ca.server is not None
    socket = str(ca.server.options.admin_socket)
    return await asyncio.to_thread(s2s_ca, ["--socket", socket, *args])


async def cli_out(ca: CaHandle, capsys: Any, *args: str) -> str:
    capsys.readouterr()
    code = await cli(ca, *args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return str(out.out)


async def exchange_bundles(a: CaHandle, b: CaHandle, capsys: Any, tmp_path: Path) -> None:
    """What two operators do: each prints its bundle, the other sets it."""
    for src, dst, td in ((a, b, A), (b, a, B)):
        path = tmp_path / f"{td}.json"
        path.write_text(await cli_out(src, capsys, "bundle", "show", "--format", "spiffe"))
        await cli_out(dst, capsys, "bundle", "set", "--trust-domain", str(td), "--file", str(path))


async def start_domain(
    ca: CaHandle, td: TrustDomain, path: str, peer: TrustDomain, base: Path, sockets: Path
) -> Domain:
    server = ca.server
    assert server is not None
    token = await server.registry.generate_join_token()
    entry = await server.registry.create_entry(
        spiffe_id=td.id(path),
        parent_id=token.agent_id,
        selectors=[Selector.parse(MY_UID)],
        federates_with=[peer],
    )
    (base / str(td)).mkdir()
    config = agent_config(
        ca, base / str(td), sockets, token=token.token,
        trust_domain=td, socket=sockets / f"{td}.sock",
    )  # fmt: skip
    return Domain(ca, td, await start_agent(config), entry.id)


@pytest.fixture
async def domains(
    live_ca: CaHandle, foreign_ca: CaHandle, capsys: Any, tmp_path: Path, short_dir: Path
) -> AsyncIterator[tuple[Domain, Domain]]:
    await exchange_bundles(live_ca, foreign_ca, capsys, tmp_path)
    a = await start_domain(live_ca, A, "/client", B, tmp_path, short_dir)
    b = await start_domain(foreign_ca, B, "/api", A, tmp_path, short_dir)
    try:
        yield a, b
    finally:
        await a.agent.shutdown()
        await b.agent.shutdown()


@contextlib.asynccontextmanager
async def serving(ctx: ssl.SSLContext) -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback TLS server answering each connection with the verified peer ID."""
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid = str(writer.get_extra_info("ssl_object").peer_spiffe_id)
        peers.append(sid)
        writer.write(sid.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1], peers
    finally:
        server.close()
        await server.wait_closed()


async def call(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect and read; b"" when either side refused the other."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, ConnectionResetError):
        return b""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        writer.close()


async def until_bundles(source: X509Source, ok: Callable[[BundleSet], bool], what: str) -> None:
    await wait_until(lambda: ok(source.current().bundles), timeout=15, what=what)


async def test_a_workload_calls_a_service_of_the_other_trust_domain(
    domains: tuple[Domain, Domain], capsys: Any
) -> None:
    a, b = domains
    async with (
        X509Source(socket=a.socket) as client_source,
        X509Source(socket=b.socket) as server_source,
    ):
        await until_bundles(client_source, lambda s: B in s.trust_domains(), "B's bundle at A")
        await until_bundles(server_source, lambda s: A in s.trust_domains(), "A's bundle at B")
        server_ctx = server_context(
            server_source, authorize=authorize_member_of(A), revocations=server_source.revocations
        )
        client_ctx = client_context(
            client_source, authorize=authorize_id(API), revocations=client_source.revocations
        )
        async with serving(server_ctx) as (port, peers):
            assert await call(port, client_ctx) == str(CLIENT).encode()
            assert peers == [str(CLIENT)]

            # twin: a server that accepts only third.test refuses the example.org client
            only_third = server_context(
                server_source, authorize=authorize_member_of("third.test"),
                revocations=server_source.revocations,
            )  # fmt: skip
            async with serving(only_third) as (port3, peers3):
                assert await call(port3, client_ctx) == b""
                assert peers3 == []

            # twin: a peer of a trust domain that is not federated (third.test, with its own
            # valid chain and bundle, trusting other.org) is refused by the other.org service
            third = TestAuthority("third.test")
            b_bundle = client_source.current().bundles.get(B)
            assert b_bundle is not None
            stranger = StaticX509Source(X509Context(
                (third.issue_x509_svid("spiffe://third.test/x"),),
                BundleSet.of(third.bundle(), b_bundle),
            ))  # fmt: skip
            stranger_ctx = client_context(
                stranger, authorize=authorize_member_of(B), revocations=no_revocation_check()
            )
            assert await call(port, stranger_ctx) == b""
            # twin: the client pinning another ID of other.org refuses the service
            pinned = client_context(
                client_source, authorize=authorize_id("spiffe://other.org/else"),
                revocations=client_source.revocations,
            )  # fmt: skip
            assert await call(port, pinned) == b""
            assert peers == [str(CLIENT)]

            # twin: the service's entry stops federating with example.org: its agent redacts
            # example.org's bundle and the client no longer verifies
            assert await cli(b.ca, "entry", "update", b.entry_id, "--no-federation") == 0
            await until_bundles(server_source, lambda s: A not in s.trust_domains(), "redacted")
            assert await call(port, client_ctx) == b""
            assert await cli(b.ca, "entry", "update", b.entry_id, "--federates-with", str(A)) == 0
            await until_bundles(server_source, lambda s: A in s.trust_domains(), "restored")
            assert await call(port, client_ctx) == str(CLIENT).encode()

            # twin: the federated bundle deleted at A's CA: the client stops trusting other.org
            assert await cli(a.ca, "bundle", "delete", str(B)) == 5  # the client's entry uses it
            assert await cli(a.ca, "bundle", "delete", str(B), "--force") == 0
            await until_bundles(client_source, lambda s: B not in s.trust_domains(), "deleted")
            assert await call(port, client_ctx) == b""
            assert peers == [str(CLIENT), str(CLIENT)]


async def test_the_official_client_dials_across_trust_domains(
    domains: tuple[Domain, Domain],
) -> None:
    a, b = domains

    def official_contexts() -> tuple[Any, dict[str, list[str]]]:
        source = spiffe.X509Source(socket_path=f"unix://{a.socket}", timeout_in_seconds=10)
        jwt = spiffe.JwtSource(socket_path=f"unix://{a.socket}", timeout_in_seconds=10)
        deadline = time.monotonic() + 15
        while True:
            bundles = source.get_x509_context().x509_bundle_set.bundles
            x509_tds = sorted(str(x.trust_domain) for x in bundles)
            jwt_tds = sorted(str(j.trust_domain) for j in jwt.bundles)
            if x509_tds == jwt_tds == ["example.org", "other.org"]:
                break
            assert time.monotonic() < deadline, (x509_tds, jwt_tds)
            time.sleep(0.05)
        jwt.close()
        return source, {"x509": x509_tds, "jwt": jwt_tds}

    source, seen = await asyncio.to_thread(official_contexts)
    try:
        assert seen == {"x509": ["example.org", "other.org"], "jwt": ["example.org", "other.org"]}
        async with X509Source(socket=b.socket) as server_source:
            await until_bundles(server_source, lambda s: A in s.trust_domains(), "A's bundle")
            server_ctx = server_context(
                server_source, authorize=authorize_member_of(A),
                revocations=server_source.revocations,
            )  # fmt: skip
            client_ctx = client_context(
                source, authorize=authorize_id(API), revocations=no_revocation_check()
            )
            async with serving(server_ctx) as (port, peers):
                assert await call(port, client_ctx) == str(CLIENT).encode()
                pinned = client_context(
                    source, authorize=authorize_member_of("third.test"),
                    revocations=no_revocation_check(),
                )  # fmt: skip
                assert await call(port, pinned) == b""  # twin: other.org is not third.test
                assert peers == [str(CLIENT)]
                client_ctx.s2s.close()
                pinned.s2s.close()
    finally:
        await asyncio.to_thread(source.close)


async def test_a_jwt_svid_of_one_trust_domain_validates_at_the_other(
    domains: tuple[Domain, Domain],
) -> None:
    a, b = domains
    async with JwtSource(socket=a.socket) as caller, JwtSource(socket=b.socket) as service:
        token = (await caller.fetch_jwt_svid("api")).token
        await wait_until(lambda: A in service.current().trust_domains(), what="A's JWT keys")
        validator = JwtValidator(service, "api", revocations=service.revocations)
        assert validator.validate(token).spiffe_id == CLIENT
        # the keys stay per trust domain: our token's kid is unknown in other.org's bundle
        b_keys = service.current().get(B)
        a_keys = service.current().get(A)
        assert b_keys is not None
        assert a_keys is not None
        assert not {k.kid for k in a_keys.jwt_authorities} & {k.kid for k in b_keys.jwt_authorities}
        # twin: the service's entry stops federating: example.org's keys leave its JWT bundles
        assert await cli(b.ca, "entry", "update", b.entry_id, "--no-federation") == 0
        await wait_until(lambda: A not in service.current().trust_domains(), what="redacted")
        with pytest.raises(InvalidToken) as refused:
            validator.validate(token)
        assert refused.value.reason == "untrusted"
