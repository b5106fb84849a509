"""Housekeeping once per cluster, with three real CA processes on a real 3-member etcd cluster:
exactly one replica runs the jobs (its metrics and log say so, the others run none); a holder
cut off from etcd stops and another takes over; ``kill -9`` of the holder hands the jobs to a
survivor within the lease TTL (plus one poll); the cut-off replica, healed, stays a follower."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from tcp_cut import TcpCut

from s2s.demo.launcher import _base_env
from s2s.demo.procs import Child, run_cli
from s2s.testing_etcd import EtcdCluster

LEASE = 3  # seconds ([housekeeping] lease of the replicas)
POLL = LEASE / 4  # how often a follower looks for a free lease
METRIC = re.compile(r'^(s2s_ca_housekeeping_\w+?)(?:\{job="(\w+)"\})? ([0-9.e+]+)$', re.M)


class Replica:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.ready = False
        self.holds: bool | None = None  # from the last ca.housekeeping.* line
        self.leader: str | None = None
        self.changed_at = 0.0
        self.port = 0
        self.lines: list[str] = []
        self.child = Child(name, argv, env, self._line)

    def _line(self, _stream: str, line: str) -> None:
        self.lines.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            return
        event = record.get("event") if isinstance(record, dict) else None
        if event == "ca.started":
            self.ready = True
            self.port = int(record["address"].rsplit(":", 1)[1])
        elif event in ("ca.housekeeping.elected", "ca.housekeeping.follower"):
            self.holds = event == "ca.housekeeping.elected"
            self.leader = record.get("leader") or None
            self.changed_at = time.monotonic()


class Fleet:
    def __init__(self, root: Path, cluster: EtcdCluster, td: str) -> None:
        self.root = root
        self.cluster = cluster
        self.td = td
        self.env = _base_env()
        self.replicas: dict[str, Replica] = {}
        self.config = root / "ca.toml"
        self.config.write_text(f'[housekeeping]\nlease = "{LEASE}s"\ninterval = "1s"\n')
        self.ssl: ssl.SSLContext | None = None

    def cli(self, data_dir: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(data_dir), *args]

    async def init(self) -> None:
        store = f"etcd://{self.cluster.endpoints}/{self.td}"
        result = await run_cli(
            self.cli(self.root / "ca-0", "init", "--trust-domain", self.td, "--store", store),
            env=self.env,
            timeout=60,
        )
        assert result.code == 0, result.stderr
        for i in (1, 2):
            (self.root / f"ca-{i}").mkdir(mode=0o700)
            shutil.copy2(self.root / "ca-0" / "kek.bin", self.root / f"ca-{i}" / "kek.bin")

    async def start(self, i: int, endpoints: str) -> Replica:
        name = f"ca-{i}"
        argv = self.cli(
            self.root / name, "serve", "--store", f"etcd://{endpoints}/{self.td}", "--name", name,
            "--listen", "127.0.0.1:0", "--log-format", "json", "--config", str(self.config),
        )  # fmt: skip
        replica = self.replicas[name] = Replica(name, argv, self.env)
        await replica.child.start()
        await until(lambda: replica.ready or not replica.child.running, f"{name} to start", 60)
        assert replica.ready, "\n".join(replica.lines[-20:])
        return replica

    async def metrics(self, replica: Replica) -> dict[str, float]:
        if self.ssl is None:
            bundle = await run_cli(
                self.cli(self.root / "ca-0", "bundle", "show", "--format", "pem"), env=self.env
            )
            assert bundle.code == 0, bundle.stderr
            self.ssl = ssl.create_default_context(cadata=bundle.stdout)
            self.ssl.check_hostname = False  # the CA's SVID names its SPIFFE ID; loopback here
        url = f"https://127.0.0.1:{replica.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url, ssl=self.ssl) as resp:
            text = await resp.text()
        return {f"{m[1]}{'/' + m[2] if m[2] else ''}": float(m[3]) for m in METRIC.finditer(text)}

    def holders(self) -> list[str]:
        return [r.name for r in self.replicas.values() if r.child.running and r.holds]

    async def stop(self) -> None:
        for replica in self.replicas.values():
            await replica.child.stop()


async def until(predicate: Callable[[], bool], what: str, deadline: float = 20.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > deadline:
            pytest.fail(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    with EtcdCluster(tmp_path / "etcd") as cluster:
        running = Fleet(tmp_path, cluster, f"t{uuid.uuid4().hex[:10]}.example.org")
        try:
            yield running
        finally:
            await running.stop()


async def test_one_replica_runs_housekeeping_and_another_takes_over(fleet: Fleet) -> None:
    await fleet.init()
    member = fleet.cluster.endpoints.split(",")[0].rsplit(":", 1)
    cut = await TcpCut((member[0], int(member[1]))).start()
    try:
        # ca-2 reaches etcd through a link the test can cut; it starts first and wins
        isolated = await fleet.start(2, cut.address)
        await until(lambda: isolated.holds is True, "ca-2 to hold the lease")
        others = [await fleet.start(i, fleet.cluster.endpoints) for i in (0, 1)]
        for replica in others:
            await until(lambda r=replica: r.leader == "ca-2", f"{replica.name} to see ca-2")
            assert replica.holds is False
        await until(lambda: fleet.holders() == ["ca-2"], "exactly one holder")
        seen: dict[str, dict[str, float]] = {}

        async def runs_grow() -> None:
            for r in fleet.replicas.values():
                seen[r.name] = await fleet.metrics(r)

        await runs_grow()
        first = seen["ca-2"]["s2s_ca_housekeeping_runs_total/prune"]
        deadline = time.monotonic() + 10
        while seen["ca-2"]["s2s_ca_housekeeping_runs_total/prune"] < first + 2:
            assert time.monotonic() < deadline, "ca-2 did not run the jobs every second"
            await asyncio.sleep(0.2)
            await runs_grow()
        assert seen["ca-2"]["s2s_ca_housekeeping_leader"] == 1
        for replica in others:  # twins: the followers ran nothing
            assert seen[replica.name]["s2s_ca_housekeeping_runs_total/prune"] == 0
            assert seen[replica.name]["s2s_ca_housekeeping_leader"] == 0

        # partition ca-2 from etcd: it stops by its lease deadline; one of the others takes over
        cut.cut()
        cut_at = time.monotonic()
        stepped_down = await until(lambda: isolated.holds is False, "ca-2 to stop", LEASE + 2)
        assert stepped_down <= LEASE + 0.5
        await until(lambda: len(fleet.holders()) == 1, "a new holder", LEASE + POLL + 2)
        (new,) = fleet.holders()
        assert new in ("ca-0", "ca-1")
        assert fleet.replicas[new].changed_at - cut_at >= stepped_down  # never two at once
        frozen = (await fleet.metrics(isolated))["s2s_ca_housekeeping_runs_total/prune"]
        assert (await fleet.metrics(isolated))["s2s_ca_housekeeping_leader"] == 0

        # kill -9 the new holder: the survivor takes over within the lease TTL (plus one poll)
        survivor = fleet.replicas["ca-1" if new == "ca-0" else "ca-0"]
        killed = fleet.replicas[new]
        killed.child.stopping = True
        os.killpg(killed.child.pid, 9)
        killed_at = time.monotonic()
        await killed.child.wait()
        await until(lambda: survivor.holds is True, "the survivor to hold", LEASE + POLL + 3)
        took_over = survivor.changed_at - killed_at
        assert took_over <= LEASE + POLL + 1.0, took_over
        assert fleet.holders() == [survivor.name]
        assert (await fleet.metrics(isolated))["s2s_ca_housekeeping_runs_total/prune"] == frozen

        # healed, ca-2 sees the holder and stays a follower
        cut.heal()
        await until(lambda: isolated.leader == survivor.name, "ca-2 to see the survivor", 15)
        assert isolated.holds is False
        assert fleet.holders() == [survivor.name]
        print(f"\nstepped down {stepped_down:.2f} s after the cut; took over {took_over:.2f} s"
              f" after kill -9 (lease {LEASE} s)")  # fmt: skip
    finally:
        await cut.close()
