"""Real ``s2s-ca serve`` processes on a real 3-member etcd cluster, for fault tests.

A replica can reach etcd through :class:`~tcp_cut.TcpCut` links (one per member, so that cutting
them all partitions the replica from the whole cluster, as a network partition would) or
directly. Each replica's JSON log is kept; the operator side is the admin API on its Unix socket
(the CLI's client); the agent side is :class:`ca_harness.Agent` (join token, mTLS) or a real
in-process agent (``s2s.agent.app.Agent``) given several CA URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
from ca_harness import RunningCa
from tcp_cut import TcpCut

from s2s.agent.app import Agent as RealAgent
from s2s.agent.app import AgentTuning, run_agent
from s2s.agent.config import AgentConfig
from s2s.ca.client import AdminClient
from s2s.cli.ca import main as ca_main
from s2s.core.spiffe_id import TrustDomain
from s2s.demo.launcher import _base_env
from s2s.demo.procs import Child
from s2s.testing_etcd import EtcdCluster

AGENT_TUNING = AgentTuning(
    entries_wait=2.0,
    bundle_interval=5.0,
    backoff_initial=0.05,
    backoff_cap=0.5,
    health_interval=0.1,
    first_sync_timeout=10.0,
)


async def until(predicate: Callable[[], bool], what: str, deadline: float = 20.0) -> float:
    """Seconds until ``predicate()`` held (polled every 50 ms), or an AssertionError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class Replica:
    """One ``s2s-ca serve`` child: its log lines, port, admin client and (after start) HTTPS."""

    def __init__(self, name: str, data_dir: Path, argv: list[str], cuts: list[TcpCut]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.cuts = cuts
        self.port = 0
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.child = Child(name, argv, _base_env(), self._line)
        self.ca: RunningCa | None = None

    def _line(self, _stream: str, line: str) -> None:
        self.lines.append(line)
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                self.events.append(record)
                if record.get("event") == "ca.started":
                    self.port = int(record["address"].rsplit(":", 1)[1])

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.events if r.get("event") == event]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cut(self, *, silent: bool = False) -> None:
        """Partition the replica from etcd: connections reset, or (``silent``) packets dropped."""
        for link in self.cuts:
            if silent:
                link.stall()
            else:
                link.cut()

    def heal(self) -> None:
        for link in self.cuts:
            link.heal()

    async def get(self, path: str) -> tuple[int, Any, Any]:
        """A public call: (status, JSON body, headers)."""
        assert self.ca is not None
        async with self.ca.session.get(self.url + path) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    async def ready(self) -> bool:
        return (await self.get("/readyz"))[0] == 200

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the replica's /metrics (0 when absent)."""
        assert self.ca is not None
        async with self.ca.session.get(self.url + "/metrics") as resp:
            text = await resp.text()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            base, _, rest = key.partition("{")
            found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if base == name and found == want:
                return float(value)
        return 0.0


class Replicas:
    """Replicas of one trust domain on ``cluster``; :meth:`close` stops every process and link."""

    def __init__(self, root: Path, cluster: EtcdCluster, td: str) -> None:
        self.root = root
        self.cluster = cluster
        self.td = td
        self.replicas: list[Replica] = []
        self.links: list[TcpCut] = []
        self.sessions: list[aiohttp.ClientSession] = []
        self.bundle_pem = b""

    def store_url(self, endpoints: str) -> str:
        return f"etcd://{endpoints}/{self.td}"

    async def init(self) -> None:
        argv = ["--data-dir", str(self.root / "ca-0"), "init", "--trust-domain", self.td]
        code = await asyncio.to_thread(
            ca_main, [*argv, "--store", self.store_url(self.cluster.endpoints)]
        )
        assert code == 0

    async def start(
        self, name: str, *, through_links: bool = False, extra_args: tuple[str, ...] = ()
    ) -> Replica:
        data_dir = self.root / name
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700)
            (data_dir / "kek.bin").write_bytes((self.root / "ca-0" / "kek.bin").read_bytes())
            (data_dir / "kek.bin").chmod(0o600)
        cuts: list[TcpCut] = []
        endpoints = self.cluster.endpoints
        if through_links:
            for member in self.cluster.members:
                cuts.append(await TcpCut(("127.0.0.1", member.client_port)).start())
            self.links += cuts
            endpoints = ",".join(c.address for c in cuts)
        argv = [
            sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(data_dir), "serve",
            "--store", self.store_url(endpoints), "--name", name, "--listen", "127.0.0.1:0",
            "--log-format", "json", *extra_args,
        ]  # fmt: skip
        replica = Replica(name, data_dir, argv, cuts)
        self.replicas.append(replica)
        await replica.child.start()
        await until(lambda: replica.port > 0 or not replica.child.running, f"{name} to start", 60)
        assert replica.port, "\n".join(replica.lines[-30:])
        admin = AdminClient(data_dir / "admin.sock")
        if not self.bundle_pem:
            pem = await asyncio.to_thread(admin.call, "GET", "/v1/bundle", query={"format": "pem"})
            self.bundle_pem = pem.encode()
        context = ssl.create_default_context(cadata=self.bundle_pem.decode())
        context.check_hostname = False  # the CA's SVID names its SPIFFE ID; loopback here
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        self.sessions.append(session)
        replica.ca = RunningCa(
            cast(Any, None), data_dir, replica.url, admin, self.bundle_pem, session
        )
        return replica

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.child.stop()
            if replica.ca is not None:
                for agent in replica.ca.agents:
                    await agent.close()
        for session in self.sessions:
            await session.close()
        for link in self.links:
            await link.close()


class RunningAgent:
    """A real agent (``s2s.agent.app.Agent``) in this event loop, stopped by :meth:`stop`."""

    def __init__(self, agent: RealAgent) -> None:
        self.agent = agent
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(run_agent(agent, self._stop))

    def held(self) -> dict[str, Any]:
        """The entries the agent holds, by id."""
        return {item.entry.id: item.entry for item in self.agent.cache._state.items}

    def items(self) -> tuple[Any, ...]:
        return self.agent.cache._state.items

    def svids(self) -> list[Any]:
        return [item.svid for item in self.items()]

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)


async def start_agent(
    fleet: Replicas, urls: list[str], token: str, workdir: Path, socket_dir: Path
) -> RunningAgent:
    bundle = workdir / "bootstrap.pem"
    bundle.write_bytes(fleet.bundle_pem)
    config = AgentConfig(
        trust_domain=TrustDomain(fleet.td),
        ca_urls=tuple(urls),
        data_dir=workdir / "agent",
        trust_bundle=bundle,
        join_token=token,
        socket=socket_dir / "agent.sock",
        log_format="text",
    )
    running = RunningAgent(RealAgent(config, tuning=AGENT_TUNING))
    ready = asyncio.create_task(running.agent.ready.wait())
    done, _ = await asyncio.wait({ready, running.task}, timeout=30, return_when="FIRST_COMPLETED")
    if running.task in done:
        ready.cancel()
        running.task.result()
    assert ready in done, "the agent did not become ready within 30 s"
    return running
