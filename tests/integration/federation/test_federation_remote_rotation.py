"""Two full s2s trust domains on loopback (each a real CA with a bundle endpoint, and a real
agent), federated in both directions through federation relationships: a workload of a.test calls
a service of b.test over mTLS without pause while b.test rotates its root (prepare, activate,
retire). a.test's CA follows b.test's bundle endpoint, its agent hands the new root to the
workload before anything chains to it (the rotation waits three refresh hints for that), and no
call fails. The rejecting twin: a client that keeps only b.test's old root cannot call the service
once it presents an SVID under the new root."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from federation_support import RunningAgent, agent_config, start_agent, wait_until

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.federation_config import BundleEndpointSettings, FederationSettings
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.federation import EndpointProfile, RefreshPolicy
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.verifier import (
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
A, B = TrustDomain.parse("a.test"), TrustDomain.parse("b.test")
API = SpiffeId.parse("spiffe://b.test/api")
SHORT = {
    "max_svid_ttl": dt.timedelta(seconds=6),
    "x509_svid_ttl": dt.timedelta(seconds=6),
    "jwt_svid_ttl": dt.timedelta(seconds=6),
    "agent_svid_ttl": dt.timedelta(seconds=8),
    "server_svid_ttl": dt.timedelta(seconds=8),
    "backdate": dt.timedelta(seconds=1),
}
FEDERATION = FederationSettings(
    bundle_endpoint=BundleEndpointSettings(
        address="127.0.0.1:0", refresh_hint=dt.timedelta(seconds=1)
    ),
    refresh=RefreshPolicy(minimum=dt.timedelta(seconds=0.2), maximum=dt.timedelta(seconds=1)),
)


@dataclass
class Ca:
    """A running CA (what federation_support's agent_config needs: url, bundle_pem, server)."""

    server: CaServer

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def bundle_pem(self) -> bytes:
        return self.server.authority.bundle.x509_pem()

    @property
    def endpoint_url(self) -> str:
        endpoint = self.server.bundle_endpoint
        assert endpoint is not None
        return f"https://127.0.0.1:{endpoint.port}/"


@contextlib.asynccontextmanager
async def running_ca(base: Path, td: TrustDomain, **overrides: object) -> AsyncIterator[Ca]:
    data_dir = base / str(td)
    await init_trust_domain(data_dir, str(td))
    options = ServeOptions(
        data_dir=data_dir, listen="127.0.0.1:0", tick=0.2, json_logs=False,
        config_overrides=dict(overrides), socket_path=data_dir / "admin.sock",
        federation=FEDERATION,
    )  # fmt: skip
    server = await CaServer.open(options)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield Ca(server)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await server.close()


async def federate(us: Ca, them: Ca, td: TrustDomain) -> None:
    """Our relationship with their bundle endpoint, bootstrapped with their bundle; fetched once."""
    federation = us.server.federation
    await federation.relationships.create(
        td, url=them.endpoint_url, profile=EndpointProfile.HTTPS_SPIFFE,
        endpoint_spiffe_id=td.id("/s2s/bundle-endpoint"), bundle=them.server.authority.bundle,
    )  # fmt: skip
    await federation.refresh(td)


async def start_workload_agent(
    ca: Ca, td: TrustDomain, path: str, peer: TrustDomain, base: Path, sockets: Path
) -> RunningAgent:
    token = await ca.server.registry.generate_join_token()
    await ca.server.registry.create_entry(
        spiffe_id=td.id(path), parent_id=token.agent_id, selectors=[Selector.parse(MY_UID)],
        federates_with=[peer], x509_svid_ttl=dt.timedelta(seconds=6),
    )  # fmt: skip
    (base / f"agent-{td}").mkdir()
    config = agent_config(
        ca, base / f"agent-{td}", sockets, token=token.token, trust_domain=td,
        socket=sockets / f"{td}.sock",
    )  # fmt: skip
    return await start_agent(config)


@dataclass
class Traffic:
    ok: int = 0
    failures: list[str] | None = None


async def call(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def run_traffic(port: int, source: X509Source, traffic: Traffic, stop: asyncio.Event) -> None:
    traffic.failures = []
    ctx = client_context(source, authorize=authorize_id(API), revocations=source.revocations)
    while not stop.is_set():
        try:
            answer = await call(port, ctx)
            assert answer == b"ok", answer
            traffic.ok += 1
        except Exception as exc:  # every failure counts; the test asserts there are none
            traffic.failures.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(0.02)


def intermediate_issuer(source: X509Source) -> bytes:
    """The key ID of the root above the SVID the service presents now."""
    chain = source.current().default_svid.cert_chain
    aki = chain[1].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return aki.key_identifier


def root_ids(bundle: Bundle | None) -> set[bytes]:
    assert bundle is not None
    return {
        c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        for c in bundle.x509_authorities
    }


async def test_remote_root_rotation_with_zero_failed_calls(tmp_path: Path, short_dir: Path) -> None:
    async with (
        running_ca(tmp_path, A) as ca_a,
        running_ca(tmp_path, B, **SHORT) as ca_b,
    ):
        await federate(ca_a, ca_b, B)
        await federate(ca_b, ca_a, A)
        agent_a = await start_workload_agent(ca_a, A, "/client", B, tmp_path, short_dir)
        agent_b = await start_workload_agent(ca_b, B, "/api", A, tmp_path, short_dir)
        try:
            async with (
                X509Source(socket=str(agent_a.agent.config.socket)) as client_source,
                X509Source(socket=str(agent_b.agent.config.socket)) as server_source,
            ):
                await wait_until(
                    lambda: B in client_source.current().bundles.trust_domains()
                    and A in server_source.current().bundles.trust_domains(),
                    timeout=15, what="each side holding the other's bundle",
                )  # fmt: skip
                server_ctx = server_context(
                    server_source, authorize=authorize_member_of(A),
                    revocations=server_source.revocations,
                )  # fmt: skip

                async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    w.write(b"ok")
                    await w.drain()
                    w.close()

                service = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
                port = service.sockets[0].getsockname()[1]
                old_b = client_source.current().bundles.get(B)
                old_roots = root_ids(old_b)
                traffic, stop = Traffic(), asyncio.Event()
                task = asyncio.create_task(run_traffic(port, client_source, traffic, stop))
                try:
                    await wait_until(lambda: traffic.ok >= 5, timeout=10, what="first calls")
                    rotation = ca_b.server.services.root_rotation
                    assert rotation is not None
                    assert rotation.federation_lead == dt.timedelta(seconds=3)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 60
                    phases = []
                    while not (progress := await rotation.step()).done:
                        phases.append(progress.waiting_for)
                        assert loop.time() < deadline, progress.message
                        await asyncio.sleep(0.1)
                    assert "federation" in phases  # it waited for a.test to fetch the new root
                    new_roots = root_ids(ca_b.server.authority.bundle)
                    assert new_roots.isdisjoint(old_roots)
                    await wait_until(
                        lambda: root_ids(client_source.current().bundles.get(B)) == new_roots,
                        timeout=15, what="a.test's workload holding only b.test's new root",
                    )  # fmt: skip
                    await wait_until(
                        lambda: intermediate_issuer(server_source) in new_roots,
                        timeout=15, what="the service presenting an SVID under the new root",
                    )  # fmt: skip
                    done = traffic.ok
                    await wait_until(lambda: traffic.ok >= done + 10, timeout=10, what="calls")

                    # Twin: a client that kept b.test's old bundle cannot call the service now.
                    assert old_b is not None
                    stale = StaticX509Source(X509Context(
                        client_source.current().svids,
                        BundleSet.of(client_source.current().bundles.get(A), old_b),
                    ))  # fmt: skip
                    stale_ctx = client_context(
                        stale, authorize=authorize_id(API), revocations=no_revocation_check()
                    )
                    refused = False
                    try:
                        await call(port, stale_ctx)
                    except (ssl.SSLError, ConnectionResetError):
                        refused = True
                    assert refused
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 15)
                    service.close()
                    await service.wait_closed()
                assert traffic.failures == []
                assert traffic.ok > 50
        finally:
            await agent_a.shutdown()
            await agent_b.shutdown()
