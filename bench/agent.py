"""The node agent: rotation reaching a stream, 1,000 entries, memory.

The CA runs as its own process (``s2s-ca serve``). Figures, each beside a baseline of this run:

* **rotation -> stream** (ms): an agent in this process holds one entry with a 4 s X509-SVID TTL,
  so it renews about every 2 s; the time from the cache storing the renewed SVID to the new SVID
  arriving on a connected FetchX509SVID stream. Baseline: the same Workload API path fed by a
  ``StaticIdentityProvider.put`` (the server's push alone, without the cache).
* **1,000 SVIDs obtained** (s): an agent process started with 1,000 entries, from its start to
  holding all 1,000 SVIDs (attestation, long-poll, local keys, two batched CSR calls). Baseline:
  1,000 ECDSA P-256 keys + CSRs generated in this process (the agent's local share of the work).
* **agent RSS** (MiB) of that process holding 1,000 SVIDs, beside an agent process holding one;
  and that one beside an idle Python process that imports the same modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import Figure, percentiles
from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.config import AgentConfig
from s2s.agent.issuance import build_csr, new_key
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.ca.client import AdminClient
from s2s.core.bundle import BundleSet
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier.workload_client import WorkloadApiClient

CA_CLI = [sys.executable, "-m", "s2s.cli.ca"]
AGENT_CLI = [sys.executable, "-m", "s2s.cli.agent"]
TD = "example.org"
IMPORTS = "import s2s.agent.app, s2s.cli.agent, s2s.agent.cache, s2s.verifier.jwt"


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], marker: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if marker in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{marker} not seen: {log.read_text()[-2000:]}")


def _start_ca(tmp: Path) -> tuple[subprocess.Popen[bytes], int, AdminClient]:
    data_dir = tmp / "ca"
    subprocess.run([*CA_CLI, "--data-dir", str(data_dir), "init", "--trust-domain", TD],
                   check=True, capture_output=True)  # fmt: skip
    log = tmp / "ca.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CA_CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0"],
            stdout=out, stderr=out,
        )  # fmt: skip
    line = _wait_for_line(log, process, '"ca.started"')
    port = int(json.loads(line)["address"].rsplit(":", 1)[1])
    return process, port, AdminClient(data_dir / "admin.sock")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# ---- rotation -> stream -----------------------------------------------------------------


async def _rotation_latencies(tmp: Path, port: int, admin: AdminClient, n: int) -> list[float]:
    token = admin.post("/v1/tokens", {})
    admin.post("/v1/entries", {"spiffe_id": f"spiffe://{TD}/rotating",
                               "parent_id": token["agent_id"], "x509_svid_ttl": 4,
                               "selectors": [f"unix:uid:{os.getuid()}"]})  # fmt: skip
    bundle = tmp / "bundle.pem"
    bundle.write_text(admin.get("/v1/bundle", format="pem"))
    config = AgentConfig(trust_domain=TrustDomain(TD), ca_urls=(f"https://127.0.0.1:{port}",),
                         data_dir=tmp / "agent", trust_bundle=bundle, join_token=token["token"],
                         socket=tmp / "agent.sock", log_level="ERROR")  # fmt: skip
    agent = Agent(config, tuning=AgentTuning(first_sync_timeout=10))
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(agent, stop))
    await asyncio.wait_for(agent.ready.wait(), 30)
    assert agent.cache is not None
    cache = agent.cache
    stored: dict[int, float] = {}

    async def record() -> None:
        version = cache.version
        while True:
            version = await cache.wait_for_update(version)
            svid = cache.state.items[0].svid
            if svid is not None:
                stored.setdefault(svid.serial, time.perf_counter())

    recorder = asyncio.create_task(record())
    samples: list[float] = []
    try:
        async with WorkloadApiClient(str(config.socket)) as client:
            stream = client.watch_x509_context()
            last = (await anext(stream)).default_svid.serial
            while len(samples) < n:
                svid = (await asyncio.wait_for(anext(stream), 10)).default_svid
                arrived = time.perf_counter()
                if svid.serial != last and svid.serial in stored:
                    samples.append(arrived - stored[svid.serial])
                last = svid.serial
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    finally:
        recorder.cancel()
        stop.set()
        await task
    return samples


async def _static_push_latencies(tmp: Path, n: int) -> list[float]:
    authority = TestAuthority(TD)
    svids = [authority.issue_x509_svid(f"spiffe://{TD}/static") for _ in range(2)]
    provider = StaticIdentityProvider(bundles=BundleSet.of(authority.bundle()))
    selectors = [f"unix:uid:{os.getuid()}"]
    provider.put("x", selectors, svids[0])
    samples: list[float] = []
    socket = str(tmp / "static.sock")
    async with (
        WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=socket),
        WorkloadApiClient(socket) as client,
    ):
        stream = client.watch_x509_context()
        await anext(stream)
        for i in range(n):
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            provider.put("x", selectors, svids[(i + 1) % 2])
            await asyncio.wait_for(anext(stream), 10)
            samples.append(time.perf_counter() - start)
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    return samples


# ---- 1,000 entries ------------------------------------------------------------------------


def _agent_process(tmp: Path, port: int, admin: AdminClient, count: int) -> tuple[float, float]:
    """(seconds from process start to ``count`` SVIDs held, RSS in MiB then)."""
    token = admin.post("/v1/tokens", {})
    for i in range(count):
        admin.post("/v1/entries", {"spiffe_id": f"spiffe://{TD}/svc{count}/{i}",
                                   "parent_id": token["agent_id"],
                                   "selectors": [f"unix:uid:{20000 + i}"]})  # fmt: skip
    bundle = tmp / f"bundle{count}.pem"
    bundle.write_text(admin.get("/v1/bundle", format="pem"))
    log = tmp / f"agent{count}.log"
    env = {**os.environ, "S2S_AGENT_JOIN_TOKEN": token["token"]}
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*AGENT_CLI, "run", "--trust-domain", TD, "--ca-url", f"https://127.0.0.1:{port}",
             "--trust-bundle", str(bundle), "--data-dir", str(tmp / f"agent{count}"),
             "--socket", str(tmp / f"agent{count}.sock"), "--log-level", "info"],
            stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        _wait_for_line(log, process, '"state": true')  # agent.health: every entry has an SVID
        elapsed = time.perf_counter() - start
        time.sleep(1.0)  # let allocations settle before reading RSS
        return elapsed, _rss_mib(process.pid)
    finally:
        _stop(process)


def _idle_rss() -> tuple[float, float]:
    """(RSS in MiB, seconds to start) of a Python process that imports what the agent imports."""
    start = time.perf_counter()
    script = f"{IMPORTS}; import sys; print('ready', flush=True); sys.stdin.read()"
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    process.stdout.readline()
    started = time.perf_counter() - start
    try:
        return _rss_mib(process.pid), started
    finally:
        _stop(process)


def _keys_and_csrs(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        build_csr(new_key())
    return time.perf_counter() - start


def run(quick: bool) -> list[Figure]:
    rotations = 3 if quick else 10
    entries = 200 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="s2s-bench-agent-", dir="/tmp") as name:
        tmp = Path(name)
        ca, port, admin = _start_ca(tmp)
        try:
            rotation = asyncio.run(_rotation_latencies(tmp, port, admin, rotations))
            static = asyncio.run(_static_push_latencies(tmp, max(rotations, 20)))
            _, rss_one = _agent_process(tmp, port, admin, 1)
            obtained, rss = _agent_process(tmp, port, admin, entries)
        finally:
            _stop(ca)
        idle, startup = _idle_rss()
        raw = _keys_and_csrs(entries)
    r50, r_max = percentiles(rotation, 50, 100)
    s50, s_max = percentiles(static, 50, 100)
    return [
        Figure("rotation -> connected stream p50", r50 * 1e3, "ms",
               "StaticIdentityProvider.put -> stream p50", s50 * 1e3, higher_is_better=False,
               note=f"max {r_max * 1e3:.1f} vs {s_max * 1e3:.1f} ms, {len(rotation)} rotations"),
        Figure(f"agent start -> {entries} SVIDs held", obtained, "s",
               f"{entries} P-256 keys + CSRs (local)", raw, higher_is_better=False,
               note=f"CA in its own process; python start + imports alone {startup:.2f} s"),
        Figure(f"agent RSS holding {entries} SVIDs", rss, "MiB",
               "agent RSS holding 1 SVID", rss_one, higher_is_better=False,
               note=f"{(rss - rss_one) * 1024 / max(entries - 1, 1):.1f} KiB per extra SVID"),
        Figure("agent RSS holding 1 SVID", rss_one, "MiB",
               "idle python, same imports", idle, higher_is_better=False),
    ]  # fmt: skip
