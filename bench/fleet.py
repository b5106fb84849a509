"""Fleet simulator: simulated agents against real CA replicas on a 3-member etcd cluster.

``python -m bench.fleet [--quick] [--sizes 1000,10000] [--replicas 1,3] [--agents N]``

Per configuration (registry size x CA replicas) it starts the replicas (``s2s-ca serve``
processes on one trust domain in a 3-member etcd cluster on loopback), fills the registry with
dormant entries (parented to an agent nobody runs: they cost the CA what a big registry costs,
not renewals), gives each simulated agent ``--entries`` live entries, starts the simulated agents
(``bench.fleet_agents``: real agent-API clients over mTLS, see there) and measures, phase by phase:

* steady: CPU-seconds per X509-SVID renewal on each replica (``/proc/PID/stat`` over the
  replica's own ``s2s_ca_svids_issued_total{kind="x509"}``), RSS, etcd requests/s and bytes/s
  (every member's ``/metrics``), beside the in-process issuance cost measured in the same run
  (``Issuer.sign_x509_svids`` on SQLite, the same batch size, process CPU);
* entry changes: an entry created for a random simulated agent every ``--interval`` s; fan-out
  latency (commit -> that agent's long-poll has it), how many long-poll answers the fleet got per
  change, CPU per change on each replica (CPU beyond the renewals it signed meanwhile);
* revocations: a SPIFFE ID revoked every ``--interval`` s; latency until each of the N simulated
  agents (every one long-polls ``/v1/revocations``) has it, and until all have; CPU per
  revocation on each replica;
* JWT-SVIDs: agents also mint JWT-SVIDs (one per agent every ``--jwt-interval`` s on average);
* with several replicas, one replica killed (SIGKILL) mid-run: the agents fail over; renewals,
  failed attempts and SVIDs that expired before their replacement came are counted over a whole
  SVID lifetime, then the change and revocation phases run again on the survivors.

SVID lifetimes are short (``--ttl`` s) to compress time: an agent renews at half-life +-10%, so
a fleet of A agents with E entries asks for A*E/(ttl/2) renewals per second, as a fleet with
5-minute SVIDs and ttl/300 times as many workloads would. Writes its tables to bench/RESULTS.md
(section "Fleet") unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._harness import percentiles
from bench.fleet_faults import DELAYS_MS, herd, slow_etcd, start_proxies
from bench.fleet_report import FAULTS_HEADING, render, render_faults, write_results
from bench.fleet_system import FleetSystem, cpu_seconds, prom_sum, rss_mb
from s2s.core.errors import Conflict
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId


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
SMOKE = Shape(configs=((200, 1),), agents=6, entries=2, ttl=10, processes=1, steady=6.0,
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


async def prepare(
    system: FleetSystem, shape: Shape, size: int, replicas: int
) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """A trust domain with its registry and replicas, and the simulated agents holding their
    SVIDs: the agents (index, agent ID) and the result so far (the idle CPU of each replica)."""
    live = shape.agents * shape.entries
    # Every simulated agent comes from 127.0.0.1: the per-address cap (256 connections, meant
    # for one node) would hold the fleet back, so it is raised to the process-wide cap.
    config = (f'[ttl]\nx509_svid = "{shape.ttl}s"\njwt_svid = "{shape.ttl}s"\n'
              f'max_svid = "{shape.ttl}s"\n[limits]\nmax_connections_per_ip = 4096\n')  # fmt: skip
    await system.init_trust_domain(replicas, config)
    say(f"registry {size}: {max(0, size - live)} dormant entries, {size // 10} revocations")
    started = time.monotonic()
    await system.fill_registry(max(0, size - live), revoked=size // 10)
    fill = time.monotonic() - started
    for replica in system.replicas:
        await system.start_replica(replica)
    say(f"{replicas} CA replica(s) up; {shape.agents} agents with {shape.entries} entries each")
    gate = asyncio.Semaphore(8)

    async def enrol(i: int) -> tuple[str, str]:
        async with gate:
            token = await system.admin_call("POST", "/v1/tokens", {})
            return token["token"], token["agent_id"]

    enrolled = await asyncio.gather(*(enrol(i) for i in range(shape.agents)))
    tokens = [(i, token) for i, (token, _) in enumerate(enrolled)]
    agents = [(i, agent_id) for i, (_, agent_id) in enumerate(enrolled)]
    ttl = dt.timedelta(seconds=shape.ttl)
    await system.add_entries([
        RegistrationEntry(
            id=f"live-{i:05d}-{e}", spiffe_id=SpiffeId.parse(f"spiffe://{system.td}/fleet/a{i}/w{e}"),
            parent_id=SpiffeId.parse(agent_id), selectors=parse_selectors([f"unix:uid:{1000 + e}"]),
            x509_svid_ttl=ttl, jwt_svid_ttl=ttl,
        )
        for i, agent_id in agents for e in range(shape.entries)
    ])  # fmt: skip
    await system.replica_metrics(system.replicas[0])  # the bundle, for the agents and /metrics
    idle_rate = await idle(system, shape.steady / 2)
    started = time.monotonic()
    await system.start_workers(tokens, shape.processes, shape.jwt_interval)
    say(f"every agent attested and holds its SVIDs ({time.monotonic() - started:.1f} s)")
    await asyncio.sleep(2.0)  # the first batch of renewals has settled
    result: dict[str, Any] = {"size": size, "replicas": replicas, "agents": shape.agents,
                              "live": live, "fill_seconds": fill,
                              "revoked": size // 10}  # fmt: skip
    result["idle"] = idle_rate
    return agents, result


async def configuration(
    system: FleetSystem, shape: Shape, size: int, replicas: int
) -> dict[str, Any]:
    agents, result = await prepare(system, shape, size, replicas)
    idle_rate = result["idle"]
    result["steady"] = s = await steady(system, shape, idle_rate)
    say("steady: " + ", ".join(f"{n} {v * 1000:.2f} ms/renewal" for n, v in
                               s["cpu_per_renewal"].items()))  # fmt: skip
    per = Cost(idle_rate, s["cpu_per_renewal"])
    result["changes"] = c = await changes(system, shape, agents, per)
    say(f"entry changes: p50 {c['latency'][0] * 1000:.0f} ms, p99 {c['latency'][1] * 1000:.0f} ms")
    result["revocations"] = r = await revocations(system, shape, 0, per, shape.agents)
    say(f"revocations to {shape.agents} subscribers: p50 {r['latency'][0] * 1000:.0f} ms, "
        f"all {r['to_all'][0] * 1000:.0f} ms")  # fmt: skip
    result["jwt"] = await jwt_phase(system, shape)
    if replicas > 1:
        result["failover"] = f = await failover(system, shape)
        say(f"failover: renewals {f['fleet'].get('renewals', 0):.0f}, expired "
            f"{f['fleet'].get('expired', 0):.0f}")  # fmt: skip
        result["after_changes"] = await changes(system, shape, agents, per)
        result["after_revocations"] = await revocations(
            system, shape, shape.revocations, per, shape.agents
        )
    result["fleet_total"] = system.fleet_stats()
    result["admin_retries"] = system.admin_retries
    result["worker_errors"] = {w.name: w.errors[-30:] for w in system.workers if w.errors}
    await system.stop_configuration()
    return result


def baseline(batch_sizes: list[int], quick: bool) -> dict[int, float]:
    """In-process CPU-seconds per X509-SVID (``Issuer.sign_x509_svids``, SQLite, this process)."""
    from bench.ca import _csr, _setup  # noqa: PLC0415
    from s2s.ca.audit import AUDIT_LOGGER  # noqa: PLC0415
    from s2s.ca.issuance import CsrRequest  # noqa: PLC0415

    logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)
    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        try:
            store, issuer, agent, entry_id = loop.run_until_complete(_setup(Path(tmp)))
            for size in batch_sizes:
                requests = [CsrRequest(entry_id, _csr()) for _ in range(size)]
                rounds = max(3, (300 if quick else 1500) // size)
                samples = []
                for _ in range(3 if quick else 5):
                    start = time.process_time()
                    for _ in range(rounds):
                        loop.run_until_complete(issuer.sign_x509_svids(agent, requests))
                    samples.append((time.process_time() - start) / (rounds * size))
                out[size] = statistics.median(samples)
            loop.run_until_complete(store.close())
        finally:
            loop.close()
    return out


async def run(shape: Shape, root: Path) -> dict[str, Any]:
    system = FleetSystem(root, say)
    say(f"starting a 3-member etcd cluster under {root / 'etcd'}")
    await system.start_etcd()
    results: list[dict[str, Any]] = []
    try:
        for size, replicas in shape.configs:
            say(f"== registry {size} entries, {replicas} CA replica(s)")
            results.append(await configuration(system, shape, size, replicas))
            partial = {"shape": asdict(shape), "configs": results}  # kept if a later one fails
            (root / "fleet-partial.json").write_text(json.dumps(partial, default=str))
    finally:
        await system.stop_configuration()
        await asyncio.to_thread(system.stop_etcd)
    return {"shape": asdict(shape), "configs": results}


async def run_faults(shape: Shape, root: Path) -> dict[str, Any]:
    """The herd and etcd-slow runs (see ``bench.fleet_faults``) on the first configuration."""
    system = FleetSystem(root, say)
    say(f"starting a 3-member etcd cluster under {root / 'etcd'}")
    await system.start_etcd()
    proxies = await start_proxies(system)
    size, replicas = shape.configs[0]
    try:
        say(f"== faults: registry {size} entries, {replicas} CA replica(s), etcd behind proxies")
        agents, result = await prepare(system, shape, size, replicas)
        result["herd"] = h = await herd(system, shape, say)
        say(f"herd: every agent back {h['all_back_after']:.1f} s after the restart, peak"
            f" {h['peak_connections']} connections, {h['expired']:.0f} SVIDs expired")  # fmt: skip
        per = Cost(result["idle"], {})
        result["slow"] = []
        for delay in DELAYS_MS:
            d = await slow_etcd(system, shape, proxies, delay,
                                lambda: changes(system, shape, agents, per))  # fmt: skip
            result["slow"].append(d)
            p50, p99, _n = d["issue"]
            say(f"etcd +{delay} ms: issuance p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
                f" burst {d['burst_per_s']:.0f} SVIDs/s")  # fmt: skip
        result["fleet_total"] = system.fleet_stats()
        result["worker_errors"] = {w.name: w.errors[-30:] for w in system.workers if w.errors}
    finally:
        await system.stop_configuration()
        for proxy in proxies:
            await proxy.close()
        await asyncio.to_thread(system.stop_etcd)
    return {"shape": asdict(shape), "configs": [result]}


def _commit() -> str:
    """The commit of the code measured (empty outside a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent, check=False,
        )  # fmt: skip
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a minute or two: small fleet")
    parser.add_argument("--smoke", action="store_true",
                        help="under a minute: 6 agents, one replica")  # fmt: skip
    parser.add_argument("--sizes", help="registry sizes, e.g. 1000,10000 (with --replicas)")
    parser.add_argument("--replicas", help="CA replica counts, e.g. 1,3")
    parser.add_argument("--agents", type=int, help="simulated agents")
    parser.add_argument("--ttl", type=int, help="SVID lifetime in seconds")
    parser.add_argument("--faults", action="store_true",
                        help="thundering herd after a CA restart, then etcd made slow")  # fmt: skip
    parser.add_argument("--dir", type=Path, help="keep the run's files here")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = parser.parse_args(argv)
    shape = SMOKE if args.smoke else QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.sizes or args.replicas:
        sizes = [int(s) for s in (args.sizes or "1000").split(",")]
        counts = [int(r) for r in (args.replicas or "1,3").split(",")]
        overrides["configs"] = tuple((s, r) for s in sizes for r in counts)
    if args.agents:
        overrides["agents"] = args.agents
    if args.ttl:
        overrides["ttl"] = args.ttl
    shape = Shape(**{**asdict(shape), **overrides})
    root = args.dir or Path(tempfile.mkdtemp(prefix="s2s-fleet-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.faults:
        return _faults(shape, root, args, started)
    measured = asyncio.run(run(shape, root))
    batches = sorted({max(1, round(c["steady"]["batch"])) for c in measured["configs"]} | {1})
    say(f"in-process baseline, batch sizes {batches}")
    measured["baseline"] = baseline(batches, args.quick or args.smoke)
    measured["wall_seconds"] = time.monotonic() - started
    measured["quick"] = args.quick or args.smoke
    measured["form"] = "--smoke" if args.smoke else "--quick" if args.quick else "full form"
    measured["date"] = dt.date.today().isoformat()
    measured["commit"] = _commit()
    (root / "fleet.json").write_text(json.dumps(measured, indent=1, default=str))
    text = render(measured)
    print(text)
    if not args.no_write:
        write_results(text)
        say("tables written to bench/RESULTS.md (section Fleet)")
    say(f"raw figures: {root / 'fleet.json'}")
    return 0


def _faults(shape: Shape, root: Path, args: argparse.Namespace, started: float) -> int:
    if not (args.sizes or args.replicas):
        shape = Shape(**{**asdict(shape), "configs": ((1000, 1),)})
    measured = asyncio.run(run_faults(shape, root))
    measured["wall_seconds"] = time.monotonic() - started
    measured["form"] = "--faults" + (" --smoke" if args.smoke else " --quick" if args.quick else "")
    measured["date"] = dt.date.today().isoformat()
    measured["commit"] = _commit()
    (root / "fleet-faults.json").write_text(json.dumps(measured, indent=1, default=str))
    text = render_faults(measured)
    print(text)
    if not args.no_write:
        write_results(text, heading=FAULTS_HEADING)
        say("tables written to bench/RESULTS.md (section Fleet faults)")
    say(f"raw figures: {root / 'fleet-faults.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
