"""The phases of a fleet run (``bench.fleet``): what each measures, from the counters of every
live CA replica, the simulated agents and etcd taken before and after (:class:`Snapshot`)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from bench._harness import percentiles
from bench.fleet_system import FleetSystem, cpu_seconds, prom_sum, rss_mb
from s2s.core.errors import Conflict


@dataclass(frozen=True, slots=True)
class Shape:
    configs: tuple[tuple[int, int], ...]  # (registry size, CA replicas)
    agents: int
    entries: int  # live entries per simulated agent
    ttl: int  # X509-SVID and JWT-SVID lifetime, seconds
    processes: int  # simulated-agent worker processes
    steady: float  # seconds of the steady phase
    changes: int
    revocations: int
    interval: float  # seconds between two changes (or revocations)
    jwt_interval: float


QUICK = Shape(configs=((1000, 1), (1000, 3)), agents=40, entries=3, ttl=16, processes=2,
              steady=6.0, changes=5, revocations=5, interval=1.0, jwt_interval=10.0)  # fmt: skip
SMOKE = Shape(configs=((200, 1),), agents=6, entries=2, ttl=8, processes=1, steady=5.0,
              changes=3, revocations=3, interval=0.3, jwt_interval=2.0)  # fmt: skip
FULL = Shape(configs=((1000, 1), (1000, 3), (10000, 1), (10000, 3)), agents=200, entries=4,
             ttl=40, processes=2, steady=20.0, changes=10, revocations=10, interval=2.0,
             jwt_interval=10.0)  # fmt: skip


def say(text: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Snapshot:
    """Counters of every live replica, the fleet and etcd at one instant."""

    def __init__(self) -> None:
        self.t = 0.0
        self.cpu: dict[str, float] = {}
        self.x509: dict[str, float] = {}
        self.jwt: dict[str, float] = {}
        self.fleet: dict[str, float] = {}
        self.etcd: dict[str, float] = {}

    @classmethod
    async def take(cls, system: FleetSystem) -> Snapshot:
        snap = cls()
        snap.t = time.monotonic()
        for replica in system.replicas:
            if not replica.alive:
                continue
            snap.cpu[replica.name] = cpu_seconds(replica.pid)
            text = await system.replica_metrics(replica)
            snap.x509[replica.name] = prom_sum(text, "s2s_ca_svids_issued_total", kind="x509")
            snap.jwt[replica.name] = prom_sum(text, "s2s_ca_svids_issued_total", kind="jwt")
        snap.fleet = system.fleet_stats()
        snap.etcd = await asyncio.to_thread(system.etcd_counters)
        return snap


def delta(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    seconds = b.t - a.t
    names = [n for n in b.cpu if n in a.cpu]
    return {
        "seconds": seconds,
        "cpu": {n: b.cpu[n] - a.cpu[n] for n in names},
        "x509": {n: b.x509[n] - a.x509[n] for n in names},
        "jwt": {n: b.jwt[n] - a.jwt[n] for n in names},
        "fleet": {k: b.fleet.get(k, 0) - a.fleet.get(k, 0) for k in b.fleet},
        "etcd_rps": (b.etcd["requests"] - a.etcd["requests"]) / seconds,
        "etcd_bps": (b.etcd["received"] + b.etcd["sent"] - a.etcd["received"] - a.etcd["sent"])
        / seconds,
    }


async def idle(system: FleetSystem, seconds: float) -> dict[str, float]:
    """CPU-seconds per second of each replica with no agent connected (its own loops, etcd
    watches, and the benchmark's /metrics scrapes)."""
    before = await Snapshot.take(system)
    await asyncio.sleep(seconds)
    d = delta(before, await Snapshot.take(system))
    return {n: cpu / d["seconds"] for n, cpu in d["cpu"].items()}


async def steady(system: FleetSystem, shape: Shape, idle_rate: dict[str, float]) -> dict[str, Any]:
    before = await Snapshot.take(system)
    await asyncio.sleep(shape.steady)
    d = delta(before, await Snapshot.take(system))
    nan = float("nan")
    d["cpu_per_renewal_all"] = {n: d["cpu"][n] / d["x509"][n] if d["x509"][n] else nan
                                for n in d["cpu"]}  # fmt: skip
    d["cpu_per_renewal"] = {
        n: (d["cpu"][n] - idle_rate[n] * d["seconds"]) / d["x509"][n] if d["x509"][n] else nan
        for n in d["cpu"]
    }
    d["rss_mb"] = {r.name: rss_mb(r.pid) for r in system.replicas if r.alive}
    fleet = d["fleet"]
    d["batch"] = fleet.get("renewals", 0) / max(1, fleet.get("batches", 0))
    return d


async def changes(
    system: FleetSystem, shape: Shape, agents: list[tuple[int, str]], cost: Cost
) -> dict[str, Any]:
    before = await Snapshot.take(system)
    made: list[tuple[str, float]] = []
    for _ in range(shape.changes):
        _index, agent_id = random.choice(agents)
        body = {"spiffe_id": f"spiffe://{system.td}/fleet/new/{random.getrandbits(48):x}",
                "parent_id": agent_id, "selectors": ["unix:uid:3000"],
                "x509_svid_ttl": shape.ttl, "jwt_svid_ttl": shape.ttl}  # fmt: skip
        sent = time.time()
        try:
            entry = await system.admin_call("POST", "/v1/entries", body)
        except Conflict:  # a timed-out attempt had been applied: the entry is there
            found = await system.admin_call(
                "GET", "/v1/entries", None, {"spiffe_id": str(body["spiffe_id"])}
            )
            entry = found["entries"][0]
        made.append((entry["id"], sent))
        await asyncio.sleep(shape.interval)
    ids = {eid for eid, _ in made}
    await _until(lambda: ids <= {e["id"] for e in system.events("entry")}, 15)
    after = await Snapshot.take(system)
    d = delta(before, after)
    first = {e["id"]: e["t"] for e in system.events("entry") if e["id"] in ids}
    lat = [first[eid] - t for eid, t in made if eid in first]
    d["latency"] = _p(lat)
    d["missed"] = len(made) - len(lat)
    d["answers_per_change"] = d["fleet"].get("entry_answers", 0) / len(made)
    d["cpu_per_change"] = _beyond(d, cost, len(made))
    return d


async def revocations(
    system: FleetSystem, shape: Shape, first: int, cost: Cost, agents: int
) -> dict[str, Any]:
    before = await Snapshot.take(system)
    values: set[str] = set()
    made: list[tuple[str, float]] = []
    for k in range(first, first + shape.revocations):
        value = f"spiffe://{system.td}/dormant/{k}"
        body = {"spiffe_id": value, "reason": "fleet benchmark"}
        await system.tell(f"expect {value}")
        sent = time.time()
        await system.admin_call("POST", "/v1/revocations", body)
        made.append((value, sent))
        values.add(value)
        await asyncio.sleep(shape.interval)
    want = len(made) * agents

    def arrived() -> int:
        return sum(1 for e in system.events("revoked") if e["v"] in values)

    await _until(lambda: arrived() >= want, 20)
    d = delta(before, await Snapshot.take(system))
    at = dict(made)
    arrivals = [e for e in system.events("revoked") if e["v"] in values]
    per_subscriber = [e["t"] - at[e["v"]] for e in arrivals]
    to_all = []
    for value, t in made:
        times = [e["t"] for e in arrivals if e["v"] == value]
        if len(times) >= agents:
            to_all.append(max(times) - t)
    d["latency"] = _p(per_subscriber)
    d["to_all"] = _p(to_all)
    d["delivered"] = f"{len(per_subscriber)}/{want}"
    got = {(e["a"], e["v"]) for e in arrivals}
    d["missing"] = sorted({a for a in range(agents) for v, _t in made if (a, v) not in got})[:50]
    d["cpu_per_revocation"] = _beyond(d, cost, len(made))
    return d


async def jwt_phase(system: FleetSystem, shape: Shape) -> dict[str, Any]:
    await system.tell("jwt on")
    before = await Snapshot.take(system)
    await asyncio.sleep(shape.steady / 2)
    d = delta(before, await Snapshot.take(system))
    d["jwt_per_s"] = sum(d["jwt"].values()) / d["seconds"]
    return d


async def failover(system: FleetSystem, shape: Shape) -> dict[str, Any]:
    victim = system.replicas[-1]
    before = await Snapshot.take(system)
    await system.kill(victim)
    say(f"killed {victim.name} (SIGKILL); running a whole SVID lifetime ({shape.ttl} s)")
    await asyncio.sleep(shape.ttl)
    d = delta(before, await Snapshot.take(system))
    d["killed"] = victim.name
    return d


@dataclass(frozen=True, slots=True)
class Cost:
    idle: dict[str, float]  # CPU-seconds per second with no agent connected
    per_renewal: dict[str, float]  # marginal CPU-seconds per X509-SVID renewal


def _beyond(d: dict[str, Any], cost: Cost, count: int) -> dict[str, float]:
    """CPU per event on each replica, beyond its idle loops and the renewals it signed
    meanwhile."""
    out = {}
    nan = float("nan")
    for name, cpu in d["cpu"].items():
        rest = cost.idle.get(name, nan) * d["seconds"]
        rest += d["x509"][name] * cost.per_renewal.get(name, nan)
        out[name] = (cpu - rest) / count
    return out


def _p(samples: list[float]) -> tuple[float, float, int]:
    if not samples:
        return (float("nan"), float("nan"), 0)
    p50, p99 = percentiles(samples, 50, 99)
    return (p50, p99, len(samples))


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
