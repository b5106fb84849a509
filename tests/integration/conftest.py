"""Shared integration fixtures: a real CA (``CaServer``, what ``s2s-ca serve`` runs) that a test
can stop and start again on the same port, and a real agent (``s2s.agent.app.Agent``) in the
same event loop. Registration goes through the CA's own registry (the admin API's service).
Also a Workload API server on a real Unix socket (``socket_dir``, ``provider``, ``server``) that the
agent and verifier tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.config import AgentConfig
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock, FakeClock
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.testing import TestAuthority

TRUST_DOMAIN = "example.org"
FAST = AgentTuning(
    entries_wait=2.0,
    bundle_interval=5.0,
    backoff_initial=0.05,
    backoff_cap=0.5,
    health_interval=0.1,
    first_sync_timeout=5.0,
)


@dataclass
class CaHandle:
    """A CA in this event loop; ``stop()`` and ``start()`` keep its data dir and port."""

    data_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    server: CaServer | None = None
    port: int = 0
    clock: Clock | None = None
    replica: str = "ca-0"
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def td(self) -> TrustDomain:
        return TrustDomain(TRUST_DOMAIN)

    async def start(self) -> None:
        options = ServeOptions(
            data_dir=self.data_dir,
            listen=f"127.0.0.1:{self.port}",
            tick=0.2,
            json_logs=False,
            config_overrides=self.overrides,
            replica_name=self.replica,
            socket_path=self.data_dir / f"admin-{self.replica}.sock",
        )
        self.server = await CaServer.open(options, clock=self.clock)
        self.port = self.server.port
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.server.run(self._stop))

    async def stop(self) -> None:
        if self.server is None:
            return
        assert self._stop is not None
        assert self._task is not None
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
        await self.server.close()
        self.server = None

    def _live(self) -> CaServer:
        assert self.server is not None, "the CA is stopped"
        return self.server

    def bundle_pem(self) -> bytes:
        return self._live().authority.bundle.x509_pem()

    async def join_token(self, ttl: timedelta | None = None) -> tuple[str, SpiffeId]:
        token = await self._live().registry.generate_join_token(ttl=ttl)
        return token.token, token.agent_id

    async def entry(
        self,
        parent: SpiffeId,
        path: str,
        selectors: list[str],
        *,
        ttl: timedelta | None = None,
        **extra: Any,
    ) -> RegistrationEntry:
        return await self._live().registry.create_entry(
            spiffe_id=self.td.id(path),
            parent_id=parent,
            selectors=[Selector.parse(s) for s in selectors],
            x509_svid_ttl=ttl,
            **extra,
        )


@contextlib.contextmanager
def _open_dir() -> Iterator[Path]:
    # Under /tmp with mode 0755: short Unix socket paths, reachable by the uid-65534 workloads
    # (pytest's own tmp dirs are 0700).
    path = Path(tempfile.mkdtemp(prefix="s2s-it-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp (0755) for Unix sockets: short paths, reachable by other uids."""
    with _open_dir() as path:
        yield path


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory under /tmp (0755) for a Workload API socket (another than ``short_dir``)."""
    with _open_dir() as path:
        yield path


@pytest.fixture
def provider(authority: TestAuthority, fake_clock: FakeClock) -> StaticIdentityProvider:
    """Bundles of ``authority``; JWT-SVIDs signed by it; nothing registered yet."""
    return StaticIdentityProvider(
        bundles=BundleSet.of(authority.bundle()),
        jwt_signer=authority.issue_jwt_svid,
        clock=fake_clock,
    )


@pytest.fixture
async def server(
    provider: StaticIdentityProvider, socket_dir: Path
) -> AsyncIterator[WorkloadApiServer]:
    """A Workload API server on ``socket_dir/agent.sock`` serving ``provider``."""
    async with WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(socket_dir / "agent.sock")
    ) as srv:
        yield srv


@pytest.fixture
async def live_ca(tmp_path: Path) -> AsyncIterator[CaHandle]:
    """A running CA for ``example.org`` (entries may pick short TTLs under the 5 min cap)."""
    data_dir = tmp_path / "ca"
    await init_trust_domain(data_dir, TRUST_DOMAIN)
    handle = CaHandle(data_dir)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def foreign_ca(tmp_path: Path) -> AsyncIterator[CaHandle]:
    """A running CA of another trust domain, ``other.org`` (its ``td`` still says example.org)."""
    data_dir = tmp_path / "other-ca"
    await init_trust_domain(data_dir, "other.org")
    handle = CaHandle(data_dir)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


def agent_config(
    ca: CaHandle, tmp_path: Path, socket_dir: Path, *, token: str | None, **kw: Any
) -> AgentConfig:
    """An agent config for ``ca``: bootstrap bundle written to ``tmp_path``."""
    bundle = tmp_path / "bootstrap.pem"
    if not bundle.exists():
        bundle.write_bytes(ca.bundle_pem())
    values: dict[str, Any] = {
        "trust_domain": ca.td,
        "ca_urls": (ca.url,),
        "data_dir": tmp_path / "agent",
        "trust_bundle": bundle,
        "join_token": token,
        "socket": socket_dir / "agent.sock",
        "log_format": "text",
        **kw,
    }
    return AgentConfig(**values)


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)


async def start_agent(
    config: AgentConfig, *, wait_ready: bool = True, tuning: AgentTuning = FAST
) -> RunningAgent:
    """Run an agent in a task; wait until its Workload API serves (or its task fails)."""
    agent = Agent(config, tuning=tuning)
    stop = asyncio.Event()
    running = RunningAgent(agent, asyncio.create_task(run_agent(agent, stop)), stop)
    if wait_ready:
        await _wait_ready(running)
    return running


async def wait_until(predicate: Any, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate()`` every 20 ms until true, or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Harness:
    """What the agent tests need: the CA, temp dirs, and agents to shut down afterwards."""

    ca: CaHandle
    tmp_path: Path
    socket_dir: Path
    agents: list[RunningAgent] = field(default_factory=list)
    replicas: list[CaHandle] = field(default_factory=list)

    async def replica(self, name: str) -> CaHandle:
        """Another CA replica on the same store (its own intermediate and JWT key)."""
        handle = CaHandle(self.ca.data_dir, overrides=self.ca.overrides, replica=name)
        await handle.start()
        self.replicas.append(handle)
        return handle

    def config(self, *, token: str | None, **kw: Any) -> AgentConfig:
        return agent_config(self.ca, self.tmp_path, self.socket_dir, token=token, **kw)

    async def start_agent(
        self, config: AgentConfig, *, wait_ready: bool = True, tuning: AgentTuning = FAST
    ) -> RunningAgent:
        running = await start_agent(config, wait_ready=False, tuning=tuning)
        self.agents.append(running)
        if wait_ready:
            await _wait_ready(running)
        return running

    @staticmethod
    async def wait_until(predicate: Any, *, timeout: float = 10.0, what: str = "it") -> None:
        await wait_until(predicate, timeout=timeout, what=what)


async def _wait_ready(running: RunningAgent) -> None:
    ready = asyncio.create_task(running.agent.ready.wait())
    done, _ = await asyncio.wait(
        {ready, running.task}, timeout=20, return_when=asyncio.FIRST_COMPLETED
    )
    if running.task in done:
        ready.cancel()
        running.task.result()  # raises the agent's error
        raise AssertionError("the agent stopped before it was ready")
    assert ready in done, "the agent did not become ready within 20 s"


@pytest.fixture
async def harness(live_ca: CaHandle, tmp_path: Path, short_dir: Path) -> AsyncIterator[Harness]:
    h = Harness(live_ca, tmp_path, short_dir)
    try:
        yield h
    finally:
        for running in h.agents:
            await running.shutdown()
        for replica in h.replicas:
            await replica.stop()


@pytest.fixture
async def make_harness(tmp_path: Path, short_dir: Path) -> AsyncIterator[Any]:
    """``await make_harness(clock=FakeClock())``: a harness around a CA of its own."""
    made: list[Harness] = []

    async def make(*, clock: Clock | None = None, **overrides: Any) -> Harness:
        base = tmp_path / f"h{len(made)}"
        await init_trust_domain(base / "ca", TRUST_DOMAIN)
        handle = CaHandle(base / "ca", overrides=overrides, clock=clock)
        await handle.start()
        h = Harness(handle, base, short_dir)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            for running in h.agents:
                await running.shutdown()
            await h.ca.stop()
