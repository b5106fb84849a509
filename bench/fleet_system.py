"""The processes of a fleet run and what is read from them: a 3-member etcd cluster on loopback,
CA replicas (``s2s-ca serve``, real processes), simulated-agent workers (``bench.fleet_agents``);
CPU-seconds and RSS from ``/proc/PID/stat`` and ``/proc/PID/status``, issuance counters from each
replica's ``/metrics``, request and byte counters from each etcd member's ``/metrics``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import ssl
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from s2s.ca.client import ADMIN_SOCKET_NAME, AdminClient
from s2s.core.errors import Conflict, StoreError, Unavailable
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationRecord
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.demo.launcher import _base_env
from s2s.demo.procs import Child, run_cli
from s2s.etcd.values import put_op
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import doc
from s2s.testing_etcd import EtcdCluster

CLK_TCK = os.sysconf("SC_CLK_TCK")
ETCD_COUNTERS = {
    "requests": "grpc_server_handled_total",
    "received": "etcd_network_client_grpc_received_bytes_total",
    "sent": "etcd_network_client_grpc_sent_bytes_total",
}


class FleetFailed(RuntimeError):
    """The run cannot go on (a process would not start, a command failed)."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prom_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` (with these label values) in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if any(f'{k}="{v}"' not in line for k, v in labels.items()):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


async def _patiently(write: Callable[[], Awaitable[object]]) -> None:
    """A bulk write on a loaded machine: etcd may time out; a retried create that had been
    applied comes back as a conflict, which is the same outcome."""
    for attempt in range(8):
        try:
            await write()
            return
        except Conflict:
            return
        except StoreError:
            if attempt == 7:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))


@dataclass(slots=True)
class Replica:
    name: str
    data_dir: Path
    child: Child | None = None
    port: int = 0
    ready: bool = False
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.running

    def on_line(self, _stream: str, line: str) -> None:
        if len(self.lines) < 2000:
            self.lines.append(line)
        if '"level": "info"' not in line:  # warnings and errors, kept for reading after the run
            with (self.data_dir.parent / f"{self.name}.log").open("a") as log:
                log.write(line + "\n")
        if '"ca.started"' in line:
            record = json.loads(line)
            self.port = int(record["address"].rsplit(":", 1)[1])
            self.ready = True


@dataclass(slots=True)
class Worker:
    name: str
    child: Child | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    errors: list[str] = field(default_factory=list)

    def on_line(self, stream: str, line: str) -> None:
        if stream == "stderr":
            if len(self.errors) < 200:
                self.errors.append(line)
            return
        record = json.loads(line)
        kind = record["k"]
        if kind == "stats":
            self.stats = record
        elif kind == "ready":
            self.ready = True
        else:
            self.events.append(record)


class FleetSystem:
    """One etcd cluster for the whole run; per configuration a trust domain, its CA replicas
    and its simulated agents."""

    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self.root = root
        self.say = say
        self.env = _base_env()
        self.etcd = EtcdCluster(root / "etcd")
        self.td = ""
        self.replicas: list[Replica] = []
        self.workers: list[Worker] = []
        self._ssl: ssl.SSLContext | None = None
        self.bundle_json = ""
        self.admin_retries = 0  # admin calls retried after an etcd timeout
        self.store_endpoints = ""  # the replicas reach etcd here ("": the members themselves)

    # -- etcd -------------------------------------------------------------------------------

    async def start_etcd(self) -> None:
        await asyncio.to_thread(self.etcd.start)

    def stop_etcd(self) -> None:
        for member in self.etcd.members:
            member.stop()

    def etcd_counters(self) -> dict[str, float]:
        out = dict.fromkeys(ETCD_COUNTERS, 0.0)
        for member in self.etcd.members:
            with urllib.request.urlopen(f"http://{member.endpoint}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            for key, name in ETCD_COUNTERS.items():
                out[key] += prom_sum(text, name)
        return out

    # -- a configuration --------------------------------------------------------------------

    async def init_trust_domain(self, replicas: int, config: str) -> None:
        self.td = f"fleet{uuid.uuid4().hex[:8]}.example.org"
        base = self.root / self.td
        base.mkdir()
        (base / "ca.toml").write_text(config)
        store = f"etcd://{self.etcd.endpoints}/{self.td}"
        result = await run_cli(
            self._cli(base / "ca-0", "init", "--trust-domain", self.td, "--store", store),
            env=self.env,
            timeout=60,
        )
        if result.code != 0:
            raise FleetFailed(f"s2s-ca init failed: {result.stderr}")
        self.replicas = [Replica(f"ca-{i}", base / f"ca-{i}") for i in range(replicas)]
        for replica in self.replicas[1:]:
            replica.data_dir.mkdir(mode=0o700)
            shutil.copy2(base / "ca-0" / "kek.bin", replica.data_dir / "kek.bin")
        self._ssl = None

    async def fill_registry(self, count: int, revoked: int, concurrency: int = 4) -> None:
        """``count`` dormant entries (parents no simulated agent is) and ``revoked`` JWT ids
        revoked for an hour, straight into etcd in transactions: 50 entries each (an entry
        with its uniqueness index key, as ``create_entry`` writes them) and 100 revocations
        (on the lease ``add_revocation`` would use). One create per entry took about an hour
        for 100,000 entries on this loaded machine."""
        store = await EtcdStore.open(self.etcd.endpoints, trust_domain=self.td, timeout=30)
        parent = SpiffeId.parse(f"spiffe://{self.td}/s2s/agent/fleet/dormant")
        selectors = parse_selectors(["unix:uid:2000"])
        gate = asyncio.Semaphore(concurrency)

        def entry_ops(i: int) -> list[Any]:
            entry = RegistrationEntry(
                id=f"dormant-{i:06d}", spiffe_id=SpiffeId.parse(f"spiffe://{self.td}/dormant/{i}"),
                parent_id=parent, selectors=selectors, revision=1,
            )  # fmt: skip
            key, index = store.key("entries", entry.id), store._keys.entry_index(entry)
            return [put_op(key, doc(entry)), put_op(index, entry.id.encode())]

        async def write(ops: list[Any]) -> None:
            async with gate:  # puts without a compare: a retried transaction writes the same
                await _patiently(lambda: store.c.txn([], ops))

        now = dt.datetime.now(dt.UTC)
        until = now + dt.timedelta(hours=1)
        try:
            await asyncio.gather(*(
                write([op for i in range(at, min(at + 50, count)) for op in entry_ops(i)])
                for at in range(0, count, 50)
            ))  # fmt: skip
            lease = await store._leases.lease_for(until)
            records = [
                RevocationRecord.for_jti(f"fleet-{i:06d}", revoked_at=now, expires_at=until)
                for i in range(revoked)
            ]
            await asyncio.gather(*(
                write([put_op(store.key("revoked", str(r.kind), r.value), doc(r), lease=lease)
                       for r in records[at : at + 100]])
                for at in range(0, revoked, 100)
            ))  # fmt: skip
        finally:
            await store.close()

    async def add_entries(self, entries: list[RegistrationEntry], concurrency: int = 8) -> None:
        """Entries straight into the store (the admin API would wait, per entry, for the
        registry's reload: see the entry-change figures)."""
        store = await EtcdStore.open(self.etcd.endpoints, trust_domain=self.td, timeout=30)
        gate = asyncio.Semaphore(concurrency)

        async def one(entry: RegistrationEntry) -> None:
            async with gate:
                await _patiently(lambda: store.create_entry(entry))

        try:
            await asyncio.gather(*(one(e) for e in entries))
        finally:
            await store.close()

    async def start_replica(self, replica: Replica) -> None:
        """Start ``replica`` (again: on the port it had, as a restarted service would)."""
        base = self.root / self.td
        endpoints = self.store_endpoints or self.etcd.endpoints
        argv = self._cli(
            replica.data_dir, "serve", "--store", f"etcd://{endpoints}/{self.td}",
            "--name", replica.name, "--listen", f"127.0.0.1:{replica.port}", "--log-format",
            "json", "--config", str(base / "ca.toml"),
        )  # fmt: skip
        replica.ready = False
        replica.child = Child(replica.name, argv, self.env, replica.on_line)
        await replica.child.start()
        deadline = time.monotonic() + 90
        while not replica.ready:
            if not replica.child.running or time.monotonic() > deadline:
                tail = "\n".join(replica.lines[-20:])
                raise FleetFailed(f"{replica.name} did not start:\n{tail}")
            await asyncio.sleep(0.05)

    def admin(self) -> AdminClient:
        live = next(r for r in self.replicas if r.alive)
        return AdminClient(live.data_dir / ADMIN_SOCKET_NAME)

    async def admin_call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """One admin call through a live replica; an etcd timeout on this shared machine is
        retried (a retried create that had been applied answers Conflict: callers look it up)."""
        for attempt in range(5):
            client = self.admin()
            try:
                return await asyncio.to_thread(client.call, method, path, body=body, query=query)
            except Unavailable:
                if attempt == 4:
                    raise
                self.admin_retries += 1
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def replica_metrics(self, replica: Replica) -> str:
        if self._ssl is None:
            bundle = await self.admin_call("GET", "/v1/bundle", None)
            self.bundle_json = json.dumps(bundle)
            pem = await run_cli(
                self._cli(self.replicas[0].data_dir, "bundle", "show", "--format", "pem"),
                env=self.env,
            )
            self._ssl = ssl.create_default_context(cadata=pem.stdout)
            self._ssl.check_hostname = False  # the CA is named by its SPIFFE ID
        async with (
            aiohttp.ClientSession() as session,
            session.get(replica.url + "/metrics", ssl=self._ssl) as resp,
        ):
            return await resp.text()

    async def start_workers(
        self, agents: list[tuple[int, str]], processes: int, jwt_interval: float
    ) -> None:
        urls = [r.url for r in self.replicas if r.alive]
        self.workers = []
        for w in range(processes):
            worker = Worker(f"agents-{w}")
            spec = {
                "trust_domain": self.td, "bundle": self.bundle_json, "ca_urls": urls,
                "agents": agents[w::processes], "jwt_interval": jwt_interval,
            }  # fmt: skip
            argv = [sys.executable, "-m", "bench.fleet_agents"]
            worker.child = Child(worker.name, argv, self.env, worker.on_line)
            await worker.child.start()
            await worker.child.send(json.dumps(spec))
            self.workers.append(worker)
        deadline = time.monotonic() + 300
        shown = time.monotonic()
        while not all(w.ready for w in self.workers):
            if time.monotonic() - shown > 15:
                shown = time.monotonic()
                ready = sum(w.stats.get("ready", 0) for w in self.workers)
                self.say(f"{ready}/{len(agents)} simulated agents hold their SVIDs")
            for worker in self.workers:
                assert worker.child is not None
                if not worker.child.running:
                    raise FleetFailed(f"{worker.name} exited:\n" + "\n".join(worker.errors[-20:]))
            if time.monotonic() > deadline:
                raise FleetFailed("the simulated agents did not all attest within 300 s")
            await asyncio.sleep(0.1)

    async def tell(self, command: str) -> None:
        """Send ``command`` to every simulated-agent worker (see ``bench.fleet_agents``)."""
        for worker in self.workers:
            assert worker.child is not None
            await worker.child.send(command)

    def fleet_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for worker in self.workers:
            for key, value in worker.stats.items():
                if key not in ("k", "t"):
                    out[key] = out.get(key, 0) + value
        return out

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for w in self.workers for e in w.events if e["k"] == kind]

    async def kill(self, replica: Replica) -> None:
        assert replica.child is not None
        replica.child.stopping = True
        os.killpg(replica.child.pid, 9)
        await replica.child.wait()

    async def stop_configuration(self) -> None:
        for worker in self.workers:
            assert worker.child is not None
            await worker.child.send("stop")
        for worker in self.workers:
            assert worker.child is not None
            await worker.child.stop(timeout=20)
        for replica in self.replicas:
            if replica.child is not None:
                await replica.child.stop()
        self.workers = []

    def _cli(self, data_dir: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(data_dir), *args]
