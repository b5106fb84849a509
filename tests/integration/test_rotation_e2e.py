"""Rotation end to end: a real CA, a real agent and a verifier-protected mTLS server and client
(X509Source over the Workload API). ``s2s-ca rotate-root`` and an intermediate rotation run while
connections keep flowing: zero failed handshakes. Tainting makes the agent re-issue at once.

TTLs are short (SVIDs 6 s, agent and CA server SVIDs 8 s, backdate 1 s) so the old root's hold
(longest lifetime plus skew) is 9 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.config import AgentConfig
from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.store_config import StoreSettings
from s2s.cli.ca import main as s2s_ca
from s2s.core.selectors import Selector
from s2s.core.x509svid import X509Svid
from s2s.testing_etcd import EtcdServer
from s2s.verifier.authorize import authorize_any
from s2s.verifier.source import X509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.workload_client import WorkloadApiClient

MY_UID = f"unix:uid:{os.getuid()}"
SHORT = {
    "max_svid_ttl": timedelta(seconds=6),
    "x509_svid_ttl": timedelta(seconds=6),
    "jwt_svid_ttl": timedelta(seconds=6),
    "agent_svid_ttl": timedelta(seconds=8),
    "server_svid_ttl": timedelta(seconds=8),
    "backdate": timedelta(seconds=1),
}

TUNING = AgentTuning(
    entries_wait=2.0, bundle_interval=5.0, backoff_initial=0.05, backoff_cap=0.5,
    health_interval=0.1, first_sync_timeout=5.0,
)  # fmt: skip


def ski(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def aki(cert: x509.Certificate) -> str:
    ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ext.key_identifier is not None
    return ext.key_identifier.hex()


@dataclass
class Traffic:
    """An mTLS echo server and a client connecting over and over, both on the agent's SVIDs."""

    source: X509Source
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        server_ctx = server_context(self.source, authorize=authorize_any())  # the agent's CRLs
        client_ctx = client_context(self.source, authorize=authorize_any())
        server = await asyncio.start_server(self._echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            while not stop.is_set():
                await self._one(port, client_ctx)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)  # pacing, not waiting for a result
        finally:
            server.close()
            await server.wait_closed()

    async def _one(self, port: int, ctx: Any) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"),
                5,
            )
            writer.write(b"ping\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            assert line.startswith(b"spiffe://"), line
            self.peers.add(line.decode().strip())
            self.ok += 1
        except Exception as exc:  # every failure counts; the test asserts there are none
            self.failures.append(f"{type(exc).__name__}: {exc}")

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            leaf = x509.load_der_x509_certificate(cert)
            uri = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            writer.write(
                str(uri.value.get_values_for_type(x509.UniformResourceIdentifier)[0]).encode()
                + b"\n"
            )
            await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def flowing(socket: str) -> AsyncIterator[Traffic]:
    source = X509Source(socket=socket)
    await source.start()
    traffic = Traffic(source)
    stop = asyncio.Event()
    task = asyncio.create_task(traffic.run(stop))
    try:
        yield traffic
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await source.close()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(s2s_ca, list(args))


def served(traffic: Traffic) -> X509Svid:
    return traffic.source.current().default_svid


async def test_rotate_root_and_intermediate_while_connections_flow(
    make_harness: Any, capsys: Any
) -> None:
    h = await make_harness(**SHORT)
    token, agent_id = await h.ca.join_token()
    await h.ca.entry(agent_id, "/workload", [MY_UID], ttl=timedelta(seconds=6))
    running = await h.start_agent(h.config(token=token))
    sock = ["--socket", str(h.ca.server.options.admin_socket)]
    old_root = ski(h.ca.server.authority.root)
    async with flowing(str(running.agent.config.socket)) as traffic:
        await h.wait_until(lambda: traffic.ok >= 5, timeout=10, what="first connections")
        # Intermediate rotation: prepare, activate; the workload moves to the new intermediate.
        first = h.ca.server.authority.x509_signer.authority_id
        assert await cli(*sock, "authority", "prepare", "--kind", "x509") == 0
        assert await cli(*sock, "authority", "activate", "--kind", "x509") == 0
        second = h.ca.server.authority.x509_signer.authority_id
        assert second != first
        await h.wait_until(
            lambda: aki(served(traffic).leaf) == second,
            timeout=10,
            what="SVID under new intermediate",
        )
        # Root rotation, driven by the CLI to the end (it waits for the agent, then the hold).
        capsys.readouterr()
        code = await cli(*sock, "rotate-root", "--poll", "0.2", "--timeout", "60")
        out = capsys.readouterr().out
        assert code == 0, out
        assert "[prepared]" in out
        assert "[activated]" in out
        assert "[done]" in out
        new_root = ski(h.ca.server.authority.root)
        assert new_root != old_root
        bundle = h.ca.server.authority.bundle
        assert [ski(c) for c in bundle.x509_authorities] == [new_root]
        await h.wait_until(
            lambda: (
                [
                    ski(c)
                    for c in traffic.source.current()
                    .bundles.get(bundle.trust_domain)
                    .x509_authorities
                ]
                == [new_root]
            ),
            timeout=10,
            what="the workload's bundle without the old root",
        )
        chain = served(traffic).cert_chain
        assert aki(chain[-1]) == new_root  # the intermediate is signed by the new root
        done = traffic.ok
        await h.wait_until(lambda: traffic.ok >= done + 10, timeout=10, what="traffic after retire")
    assert traffic.failures == []
    assert traffic.ok > 50
    assert await cli(*sock, "rotate-root", "--status") == 0
    assert "finished" in capsys.readouterr().out


async def test_a_stopped_agent_holds_the_rotation_until_banned(
    make_harness: Any, capsys: Any
) -> None:
    h = await make_harness(**SHORT)
    token, agent_id = await h.ca.join_token()
    await h.ca.entry(agent_id, "/workload", [MY_UID])
    live = await h.start_agent(h.config(token=token))
    token2, stuck_id = await h.ca.join_token()
    stuck = await h.start_agent(h.config(token=token2, data_dir=h.tmp_path / "agent2",
                                         socket=h.socket_dir / "agent2.sock"))  # fmt: skip
    await stuck.shutdown()  # still attested and unexpired: a live agent that will not report
    sock = ["--socket", str(h.ca.server.options.admin_socket)]
    assert await cli(*sock, "rotate-root", "--step") == 0  # prepare
    capsys.readouterr()
    # The running agent catches up within a second; the stopped one never does.
    target = h.ca.server.authority.bundle.sequence
    registry = h.ca.server.registry
    deadline = asyncio.get_running_loop().time() + 10
    while (await registry.get_agent(agent_id)).bundle_sequence < target:  # the CA heard it
        assert asyncio.get_running_loop().time() < deadline, "the live agent never reported"
        await asyncio.sleep(0.02)
    assert live.agent.cache.bundles().get(h.ca.td).sequence >= target  # type: ignore[union-attr]
    for _ in range(2):
        assert await cli(*sock, "rotate-root", "--step") == 7
        out = capsys.readouterr().out
        assert str(stuck_id) in out
        assert str(agent_id) not in out
    assert await cli(*sock, "rotate-root", "--step", "--json") == 7
    assert await cli(*sock, "agent", "ban", str(stuck_id)) == 0
    assert await cli(*sock, "rotate-root", "--step") == 0  # activated
    assert "[activated]" in capsys.readouterr().out


async def test_taint_makes_the_agent_reissue_at_once(make_harness: Any, capsys: Any) -> None:
    h = await make_harness()  # default 5 min SVIDs: half-life is far away
    token, agent_id = await h.ca.join_token()
    await h.ca.entry(agent_id, "/workload", [MY_UID])
    running = await h.start_agent(h.config(token=token))
    sock = ["--socket", str(h.ca.server.options.admin_socket)]
    socket = str(running.agent.config.socket)
    async with flowing(socket) as traffic:
        await h.wait_until(lambda: traffic.ok >= 3, timeout=10, what="first connections")
        first = h.ca.server.authority.x509_signer.authority_id
        before = served(traffic)
        assert aki(before.leaf) == first
        assert aki(running.agent.node.identity.svid.leaf) == first
        async with WorkloadApiClient(socket) as client:
            jwt_before = await client.fetch_jwt_svid("aud")
        assert await cli(*sock, "authority", "prepare") == 0
        assert await cli(*sock, "authority", "activate") == 0
        assert served(traffic).serial == before.serial  # activation alone re-issues nothing
        # Rejecting twin: the active intermediate cannot be tainted.
        assert (
            await cli(
                *sock, "authority", "taint", "--id", h.ca.server.authority.x509_signer.authority_id
            )
            == 5
        )
        assert await cli(*sock, "authority", "taint", "--id", first) == 0
        await h.wait_until(
            lambda: aki(served(traffic).leaf) != first, timeout=5, what="re-issue after taint"
        )
        await h.wait_until(  # the agent's own SVID too
            lambda: aki(running.agent.node.identity.svid.leaf) != first,
            timeout=5,
            what="agent SVID renewed after taint",
        )
        assert await cli(*sock, "authority", "revoke", "--id", first) == 0
        assert await cli(*sock, "authority", "revoke", "--id", first) == 5  # already revoked
        # JWT keys: prepare, activate, taint the old one: cached tokens signed by it are dropped.
        kid = h.ca.server.authority.jwt_signer.kid
        for step in ("prepare", "activate"):
            assert await cli(*sock, "authority", step, "--kind", "jwt") == 0
        assert await cli(*sock, "authority", "taint", "--kind", "jwt", "--id", kid) == 0

        async def fresh_token() -> bool:
            async with WorkloadApiClient(socket) as client:
                return (await client.fetch_jwt_svid("aud")).token != jwt_before.token

        deadline = asyncio.get_running_loop().time() + 5
        while not await fresh_token():
            assert asyncio.get_running_loop().time() < deadline, "the tainted JWT is still served"
            await asyncio.sleep(0.05)
    assert traffic.failures == []


# ---- two replicas on one etcd ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def replica(data_dir: Path, name: str, store: StoreSettings) -> AsyncIterator[CaServer]:
    options = ServeOptions(
        data_dir=data_dir, listen="127.0.0.1:0", replica_name=name, tick=0.2, json_logs=False,
        config_overrides=SHORT, store=store,
    )  # fmt: skip
    server = await CaServer.open(options)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.close()


async def test_rotate_root_across_two_replicas_on_etcd(
    tmp_path: Path, short_dir: Path, capsys: Any
) -> None:
    td = "example.org"
    with EtcdServer(tmp_path / "etcd") as etcd:
        store = StoreSettings(url=f"{etcd.url}/{td}")
        await init_trust_domain(tmp_path / "a", td, store_settings=store)
        (tmp_path / "b").mkdir(mode=0o700)
        shutil.copy2(tmp_path / "a" / "kek.bin", tmp_path / "b" / "kek.bin")
        async with (
            replica(tmp_path / "a", "ca-a", store) as ca_a,
            replica(tmp_path / "b", "ca-b", store) as ca_b,
        ):
            token = await ca_a.registry.generate_join_token()
            await ca_a.registry.create_entry(
                spiffe_id=ca_a.authority.trust_domain.id("/workload"),
                parent_id=token.agent_id,
                selectors=[Selector.parse(MY_UID)],
                x509_svid_ttl=timedelta(seconds=6),
            )
            (tmp_path / "bundle.pem").write_bytes(ca_a.authority.bundle.x509_pem())
            config = AgentConfig(
                trust_domain=ca_a.authority.trust_domain,
                ca_urls=(f"https://127.0.0.1:{ca_a.port}", f"https://127.0.0.1:{ca_b.port}"),
                data_dir=tmp_path / "agent", trust_bundle=tmp_path / "bundle.pem",
                join_token=token.token, socket=short_dir / "agent.sock", log_format="text",
            )  # fmt: skip
            agent = Agent(config, tuning=TUNING)
            stop = asyncio.Event()
            task = asyncio.create_task(run_agent(agent, stop))
            try:
                await asyncio.wait_for(agent.ready.wait(), 20)
                async with flowing(str(config.socket)) as traffic:
                    await wait_for(lambda: traffic.ok >= 5, "first connections")
                    code = await cli("--socket", str(ca_b.options.admin_socket), "rotate-root",
                                     "--poll", "0.2", "--timeout", "60")  # fmt: skip
                    out = capsys.readouterr().out
                    assert code == 0, out
                    new_root = ski(ca_b.authority.root)
                    await wait_for(lambda: ski(ca_a.authority.root) == new_root, "replica a's root")
                    for server in (ca_a, ca_b):  # both sign under the new root, TLS included
                        assert aki(server.authority.x509_signer.certificate) == new_root
                        assert aki(server.server_svid.cert_chain[-1]) == new_root
                    await wait_for(
                        lambda: aki(served(traffic).cert_chain[-1]) == new_root, "workload SVID"
                    )
                    done = traffic.ok
                    await wait_for(lambda: traffic.ok >= done + 10, "traffic after retire")
                assert traffic.failures == []
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)


async def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_lifecycle_and_rotation_cli_bad_input(make_harness: Any, capsys: Any) -> None:
    h = await make_harness()
    sock = ["--socket", str(h.ca.server.options.admin_socket)]
    assert await cli(*sock, "authority", "activate") == 4  # nothing prepared
    assert "no prepared" in capsys.readouterr().err
    assert await cli(*sock, "authority", "taint", "--id", "00" * 20) == 4
    assert await cli(*sock, "authority", "prepare", "--kind", "root") == 2  # not a choice
    assert await cli(*sock, "authority", "prepare") == 0
    assert await cli(*sock, "authority", "prepare") == 5  # already prepared
    capsys.readouterr()
    assert await cli(*sock, "authority", "list", "--kind", "x509", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(a["state"] for a in listed) == ["active", "prepared"]
    assert await cli(*sock, "rotate-root", "--status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "idle"
    assert "no root rotation" in status["message"]
    assert await cli("--socket", str(h.tmp_path / "nobody.sock"), "rotate-root", "--status") == 3
