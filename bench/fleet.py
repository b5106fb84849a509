"""Fleet simulator: simulated agents against real CA replicas on a 3-member etcd cluster.

``python -m bench.fleet [--smoke | --quick] [--sizes 1000,10000] [--replicas 1,3] [--agents N]
[--faults] [--from-json RUN/fleet.json ...]``

``--smoke`` (6 agents, one replica, under a minute on a quiet machine) checks that it runs;
``--faults`` runs the thundering herd and etcd-slow measurements instead (``bench.fleet_faults``);
``--from-json`` renders (and writes) the tables of earlier runs, side by side.

Per configuration (registry size x CA replicas) it starts the replicas (``s2s-ca serve``
processes on one trust domain in a 3-member etcd cluster on loopback), fills the registry with
dormant entries (parented to an agent nobody runs: they cost the CA what a big registry costs,
not renewals), gives each simulated agent ``--entries`` live entries, starts the simulated agents
(``bench.fleet_agents``: the real agent's CA client, SVID cache and revocation feed, asking for
deltas as the agent does, see there) and measures, phase by phase:

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
(section "Fleet") and, with several registry sizes, bench/plots/fleet_entry_changes.png, unless
``--no-write``. Run it from an exported tree (``git archive HEAD``) with ``--commit`` to measure a
commit without others' uncommitted edits.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.fleet_faults import DELAYS_MS, herd, slow_etcd, start_proxies
from bench.fleet_phases import (
    FULL,
    QUICK,
    SMOKE,
    Cost,
    Shape,
    changes,
    failover,
    idle,
    jwt_phase,
    revocations,
    say,
    steady,
)
from bench.fleet_plot import draw
from bench.fleet_report import FAULTS_HEADING, render, render_faults, write_results
from bench.fleet_system import FleetSystem
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId


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
        await proxies.stop()
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


# The shortest SVID lifetime for --faults: renewal at half-life must leave more slack than a
# restart of every replica takes on a loaded machine (about 6 s seen).
FAULTS_MIN_TTL = 20

# The longest run directory: <dir>/fleetXXXXXXXX.example.org/ca-N/admin.sock fits in 107 bytes.
MAX_DIR = 107 - len("/fleet12345678.example.org/ca-0/admin.sock")


def _count(text: str) -> int:
    """A whole number above 0; anything else is a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def _counts(text: str) -> list[int]:
    """A comma-separated list of whole numbers above 0, e.g. ``1000,10000``."""
    return [_count(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a minute or two: small fleet")
    parser.add_argument("--smoke", action="store_true",
                        help="under a minute: 6 agents, one replica")  # fmt: skip
    parser.add_argument("--sizes", type=_counts, help="registry sizes, e.g. 1000,10000")
    parser.add_argument("--replicas", type=_counts, help="CA replica counts, e.g. 1,3")
    parser.add_argument("--agents", type=_count, help="simulated agents")
    parser.add_argument("--ttl", type=_count, help="SVID lifetime in seconds (at least 6)")
    parser.add_argument("--faults", action="store_true",
                        help="thundering herd after a CA restart, then etcd made slow")  # fmt: skip
    parser.add_argument("--dir", type=Path, help="keep the run's files here")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--commit", help="the commit measured, when run from an exported tree")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FLEET_JSON",
                        help="no run: the tables (and plot) of earlier runs' fleet.json files,"
                        " their configurations side by side")  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_json:
        return _from_json(args.from_json, parser, write=not args.no_write)
    shape = SMOKE if args.smoke else QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.sizes or args.replicas:
        sizes = args.sizes or [1000]
        counts = args.replicas or [1, 3]
        overrides["configs"] = tuple((s, r) for s in sizes for r in counts)
    if args.agents:
        overrides["agents"] = args.agents
    if args.ttl:
        if args.ttl < 6:
            parser.error("--ttl must be at least 6 seconds (agents renew at half-life)")
        overrides["ttl"] = args.ttl
    shape = Shape(**{**asdict(shape), **overrides})
    if args.dir is not None and len(str(args.dir.resolve())) > MAX_DIR:
        parser.error(f"--dir must be at most {MAX_DIR} characters long: the CA's admin socket"
                     " goes under it, and a Unix socket path has at most 107")  # fmt: skip
    root = args.dir or Path(tempfile.mkdtemp(prefix="s2s-fleet-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    commit = args.commit or _commit()  # HEAD may move while a long run goes on
    if args.faults:
        return _faults(shape, root, args, started, commit)
    measured = asyncio.run(run(shape, root))
    batches = sorted({max(1, round(c["steady"]["batch"])) for c in measured["configs"]} | {1})
    say(f"in-process baseline, batch sizes {batches}")
    measured["baseline"] = baseline(batches, args.quick or args.smoke)
    measured["wall_seconds"] = time.monotonic() - started
    measured["quick"] = args.quick or args.smoke
    measured["form"] = "--smoke" if args.smoke else "--quick" if args.quick else "full form"
    measured["date"] = dt.date.today().isoformat()
    measured["commit"] = commit
    for config in measured["configs"]:
        config["commit"] = commit
    (root / "fleet.json").write_text(json.dumps(measured, indent=1, default=str))
    text = render(measured)
    print(text)
    if not args.no_write:
        write_results(text)
        say("tables written to bench/RESULTS.md (section Fleet)")
        if len({c["size"] for c in measured["configs"]}) > 1:
            say(f"plot: {draw(measured)}")
    say(f"raw figures: {root / 'fleet.json'}")
    return 0


def _from_json(paths: list[Path], parser: argparse.ArgumentParser, *, write: bool) -> int:
    """Render (and write) the tables of earlier runs, their configurations side by side; the
    first file gives the shape and the in-process baseline."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read the fleet figures {path}: {exc}")
    for run_ in runs:
        if not isinstance(run_, dict) or not run_.get("configs"):
            parser.error("a --from-json file is not the fleet.json of a fleet run")
        if "herd" not in run_["configs"][0] and "baseline" not in run_:
            parser.error("a --from-json file is not the fleet.json of a fleet run")
        for config in run_["configs"]:
            config.setdefault("commit", run_.get("commit", ""))
    if "herd" in runs[0]["configs"][0]:  # --faults runs: one after the other
        text = "\n".join(render_faults(r, heading=i == 0) for i, r in enumerate(runs))
        print(text)
        if write:
            write_results(text, heading=FAULTS_HEADING)
        return 0
    measured = dict(runs[0])
    measured["configs"] = [c for run_ in runs for c in run_["configs"]]
    measured["wall_seconds"] = sum(r["wall_seconds"] for r in runs)
    text = render(measured)
    print(text)
    if write:
        write_results(text)
        say("tables written to bench/RESULTS.md (section Fleet)")
        if len({c["size"] for c in measured["configs"]}) > 1:
            say(f"plot: {draw(measured)}")
    return 0


def _faults(shape: Shape, root: Path, args: argparse.Namespace, started: float, commit: str) -> int:
    if not (args.sizes or args.replicas):
        shape = Shape(**{**asdict(shape), "configs": ((1000, 1),)})
    if shape.ttl < FAULTS_MIN_TTL:  # a restart on this machine takes seconds: SVIDs need slack
        shape = Shape(**{**asdict(shape), "ttl": FAULTS_MIN_TTL})
    measured = asyncio.run(run_faults(shape, root))
    measured["wall_seconds"] = time.monotonic() - started
    measured["form"] = "--faults" + (" --smoke" if args.smoke else " --quick" if args.quick else "")
    measured["date"] = dt.date.today().isoformat()
    measured["commit"] = commit
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
