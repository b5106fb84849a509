"""Faults for the fleet simulator (``python -m bench.fleet --faults``): a thundering herd after a
CA restart, and etcd made slow.

One configuration (registry ``--sizes``, replicas ``--replicas``; 1,000 and 1 unless told) whose
replicas reach etcd through :class:`bench.delay_proxy.DelayProxy` (one per member, in a process
of their own, no delay until the slow phases):

* **herd**: every replica is killed (SIGKILL) at once and started again at once on its port,
  as a restarted service comes back; every simulated agent's long-polls break together and
  its loops retry under the agent's own backoff. Measured: the CA's open connections (sampled
  from /proc/net/tcp every 50 ms) and held long-polls (its ``s2s_ca_entry_long_polls``) at their
  peak against its limits, requests it answered with an error, the agents' failed calls, the
  time from the replica being up to each agent's first successful call, and SVIDs that expired
  (over a whole SVID lifetime from the kill).
* **etcd slow**: each chunk between the replicas and etcd is held D ms each way (D = 0, 5,
  20, 50); per D the fleet's renewal calls (latency p50/p99 as the agents see it), an issuance
  burst (``--burst`` agents signing one CSR after another: throughput), entry changes
  (latency, all arrived?), failed renewals and expired SVIDs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench._harness import percentiles
from bench.fleet_system import FleetFailed, FleetSystem, Replica, cpu_seconds, prom_sum
from s2s.demo.procs import Child

DELAYS_MS = (0, 5, 20, 50)
BURST_SECONDS = 5.0
BURST_AGENTS = 8  # per worker process
CA_LIMITS = {"max_connections": 4096, "max_connections_per_ip": 4096, "max_long_polls": 2048}


def _p(samples: list[float]) -> tuple[float, float, int]:
    if not samples:
        return (float("nan"), float("nan"), 0)
    p50, p99 = percentiles(samples, 50, 99)
    return (p50, p99, len(samples))


async def _requests(system: FleetSystem, replicas: list[Replica]) -> float:
    """HTTPS requests the replicas answered so far (``s2s_ca_http_requests_total``)."""
    total = 0.0
    for replica in replicas:
        total += prom_sum(await system.replica_metrics(replica), "s2s_ca_http_requests_total")
    return total


def established(ports: set[int]) -> int:
    """TCP connections in state ESTABLISHED whose local port is one of ``ports`` (the server
    side of each connection to a CA replica), from /proc/net/tcp."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split(None, 4)
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                count += 1
    return count


class ProxyProcess:
    """The delay proxies (one per etcd member) in a process of their own (``python -m
    bench.delay_proxy``), so that the benchmark's own work never delays etcd traffic."""

    def __init__(self, system: FleetSystem) -> None:
        self.system = system
        self.ports: list[int] = []
        self.delay = 0.0
        self._acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        targets = [m.endpoint for m in system.etcd.members]
        argv = [sys.executable, "-m", "bench.delay_proxy", *targets]
        self.child = Child("delay-proxy", argv, system.env, self._line)

    def _line(self, stream: str, line: str) -> None:
        if stream == "stdout":
            self._acks.put_nowait(json.loads(line))

    async def start(self) -> None:
        await self.child.start()
        first = await asyncio.wait_for(self._acks.get(), 30)
        self.ports = first["ports"]
        self.system.store_endpoints = ",".join(f"127.0.0.1:{p}" for p in self.ports)

    async def set_delay(self, seconds: float) -> None:
        await self.child.send(f"delay {seconds:g}")
        ack = await asyncio.wait_for(self._acks.get(), 30)
        if ack.get("delay") != seconds:
            raise FleetFailed(f"the delay proxy did not take delay {seconds:g}: {ack}")
        self.delay = seconds

    async def stop(self) -> None:
        await self.child.stop()


async def start_proxies(system: FleetSystem) -> ProxyProcess:
    """The delay proxies; the replicas started from now on reach etcd through them."""
    proxies = ProxyProcess(system)
    await proxies.start()
    return proxies


async def herd(system: FleetSystem, shape: Any, say: Any) -> dict[str, Any]:
    agents = int(system.fleet_stats().get("ready", shape.agents))  # the agents that attested
    replicas = list(system.replicas)
    ports = {r.port for r in replicas}
    stats_before = system.fleet_stats()
    backs_before = len(system.events("back"))
    peak = {"connections": 0, "long_polls": 0.0}
    sampling = True

    async def sample_connections() -> None:
        while sampling:
            peak["connections"] = max(
                peak["connections"], await asyncio.to_thread(established, ports)
            )
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample_connections())
    first, t_first = await _requests(system, replicas), time.monotonic()
    await asyncio.sleep(3.0)
    steady_rate = (await _requests(system, replicas) - first) / (time.monotonic() - t_first)
    before_kill = await asyncio.to_thread(established, ports)
    killed_at = time.time()
    for replica in replicas:
        await system.kill(replica)
    await system.tell("mark")
    say(f"killed every replica (SIGKILL); {before_kill} connections were open; restarting")
    await asyncio.gather(*(system.start_replica(r) for r in replicas))
    up_at = time.time()
    say(f"replica(s) up again after {up_at - killed_at:.1f} s")

    requests: list[tuple[float, float]] = []  # (seconds after up, requests answered so far)

    async def sample_long_polls() -> None:
        while sampling:
            total = 0.0
            for replica in replicas:
                try:
                    text = await system.replica_metrics(replica)
                except Exception:  # a replica still starting: next time
                    continue
                held = prom_sum(text, "s2s_ca_entry_long_polls")
                peak["long_polls"] = max(peak["long_polls"], held)
                total += prom_sum(text, "s2s_ca_http_requests_total")
            requests.append((time.time() - up_at, total))
            await asyncio.sleep(0.5)

    poller = asyncio.create_task(sample_long_polls())

    def back() -> list[dict[str, Any]]:
        return system.events("back")[backs_before:]

    deadline = time.monotonic() + 180
    while len({e["a"] for e in back()}) < agents and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    all_back = time.time()
    await system.tell("dump")  # the agents still away say what they last failed on
    cpu_to_back = sum(cpu_seconds(r.pid) for r in replicas if r.alive)
    say(f"{len({e['a'] for e in back()})}/{agents} agents back {all_back - up_at:.1f} s after up")
    rest = killed_at + shape.ttl + 2 - time.time()  # a whole SVID lifetime from the kill
    if rest > 0:
        await asyncio.sleep(rest)
    sampling = False
    await asyncio.gather(sampler, poller, return_exceptions=True)
    errors = 0.0
    for replica in replicas:
        text = await system.replica_metrics(replica)
        errors += sum(
            prom_sum(text, "s2s_ca_http_requests_total", status=str(code))
            for code in (429, 500, 502, 503, 504)
        )
    stats = system.fleet_stats()
    firsts: dict[int, float] = {}
    for event in back():
        firsts.setdefault(event["a"], event["t"])
    delays = [t - up_at for t in firsts.values()]
    rates = [
        (t1, (n1 - n0) / (t1 - t0))
        for (t0, n0), (t1, n1) in itertools.pairwise(requests)
        if t1 > t0
    ]
    return {
        "steady_requests_per_s": steady_rate,
        "peak_requests_per_s": max((r for _t, r in rates), default=float("nan")),
        "peak_requests_first_10s": max((r for t, r in rates if t <= 10), default=float("nan")),
        "request_rates": rates,
        "replicas": len(replicas),
        "agents": agents,
        "open_before": before_kill,
        "down_seconds": up_at - killed_at,
        "back": len(firsts),
        "back_after": _p(delays),
        "all_back_after": max(delays) if len(firsts) == agents else float("nan"),
        "peak_connections": peak["connections"],
        "peak_long_polls": peak["long_polls"],
        "limits": CA_LIMITS,
        "ca_error_answers": errors,
        "cpu_until_all_back": cpu_to_back,
        "failed": {
            k: stats.get(k, 0) - stats_before.get(k, 0)
            for k in ("entry_failures", "revocation_failures", "renew_failures", "jwt_failures")
        },
        "renewals": stats.get("renewals", 0) - stats_before.get("renewals", 0),
        "expired": stats.get("expired", 0) - stats_before.get("expired", 0),
        "entry_full_answers": (stats.get("entry_answers", 0) - stats.get("entry_deltas", 0))
        - (stats_before.get("entry_answers", 0) - stats_before.get("entry_deltas", 0)),
        "revocation_full_answers": (
            stats.get("revocation_answers", 0) - stats.get("revocation_deltas", 0)
        )
        - (stats_before.get("revocation_answers", 0) - stats_before.get("revocation_deltas", 0)),
    }


async def burst(system: FleetSystem, seconds: float, per_worker: int) -> float:
    """SVIDs per second the fleet got while ``per_worker`` agents of each worker signed one CSR
    after another for ``seconds``."""
    before = len(system.events("burst"))
    await system.tell(f"burst {seconds:g} {per_worker}")
    deadline = time.monotonic() + seconds + 60
    while len(system.events("burst")) - before < len(system.workers):
        if time.monotonic() > deadline:
            return float("nan")
        await asyncio.sleep(0.1)
    done = system.events("burst")[before:]
    return float(sum(e["svids"] for e in done) / max(e["seconds"] for e in done))


async def slow_etcd(
    system: FleetSystem,
    shape: Any,
    proxies: ProxyProcess,
    delay_ms: int,
    changes: Any,
) -> dict[str, Any]:
    """One D: the steady fleet, a burst and entry changes with etcd ``delay_ms`` away."""
    await proxies.set_delay(delay_ms / 1000)
    await asyncio.sleep(2.0)  # requests under the old delay have drained
    stats_before = system.fleet_stats()
    started = time.time()
    await asyncio.sleep(shape.steady)
    ended = time.time()
    latencies = [e["d"] for e in system.events("x509") if started <= e["t"] <= ended]
    renewed = system.fleet_stats().get("renewals", 0) - stats_before.get("renewals", 0)
    throughput = await burst(system, BURST_SECONDS, BURST_AGENTS)
    changed = await changes()
    stats = system.fleet_stats()
    return {
        "delay_ms": delay_ms,
        "issue": _p(latencies),
        "renewals_per_s": renewed / (ended - started),
        "burst_per_s": throughput,
        "change_latency": changed["latency"],
        "changes_missed": changed["missed"],
        "renew_failures": stats.get("renew_failures", 0) - stats_before.get("renew_failures", 0),
        "expired": stats.get("expired", 0) - stats_before.get("expired", 0),
    }
