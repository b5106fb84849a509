"""CA CPU per X509-SVID renewal: a real ``s2s-ca serve`` (pinned to one core) and simulated agents.

``python -m bench.ca_renewal [--quick] [--store sqlite|etcd|both] [--agents N] [--profile DIR]``

Each simulated agent is the real ``s2s.agent.ca_client.CaClient`` with its own agent SVID (attested
with a join token) over mTLS, renewing through ``POST /v1/agent/x509`` as the agent does. The CA
runs as its own process on SQLite or on a real etcd (one member, ``s2s.testing_etcd``), with its
audit lines on (written to a file), pinned to CPU 1; the agents run in this process on CPU 0.
CA CPU-seconds come from ``/proc/PID/stat`` (utime + stime, all its threads), less its idle rate
measured in the same run. Forms, one after the other in each round (the full form is one round;
take medians over runs):

* ``single, kept-alive``: one CSR per request on the agent's kept-alive connection;
* ``single, new connection``: one CSR per request on a fresh mTLS connection (at most 4 agents
  connecting at once), which is what an agent pays when its renewals are further apart than the
  keep-alive (aiohttp's client closes an idle connection after 15 s; a 5-minute SVID is renewed
  every 135-165 s);
* ``batch of B, kept-alive``: B CSRs per request (an agent whose renewals fall due together).

Each form also says how busy the CA's core was: the agents share one process, so the CA runs
well below saturation and concurrent requests are few.

Beside them, measured in this run on the same store and core, the in-process costs:
``Issuer.sign_csr`` (the issuance's own work: CSR parse and check, build, sign, profile check)
per SVID, and ``Issuer.sign_x509_svids`` per SVID, one call at a time (adds the entry lookup, the
serial index write and the revocation re-read; audit off) at 1 and B CSRs per call, and with 24
callers at once. A form's ratio is its CA CPU per renewal over ``sign_x509_svids`` at the same
batch size. ``--profile DIR`` instead records the CA with py-spy per form (raw stacks in DIR) and
prints the functions with the most samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bench.__main__ import _print
from bench._harness import Figure, time_per_op
from s2s.agent.ca_client import CaClient
from s2s.agent.issuance import build_csr, new_key
from s2s.ca.attestation import AgentAttestor
from s2s.ca.audit import AUDIT_LOGGER
from s2s.ca.authority import Authority
from s2s.ca.client import AdminClient
from s2s.ca.config import CaConfig
from s2s.ca.issuance import CsrRequest, Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.registry import Registry
from s2s.core.bundle import Bundle
from s2s.core.clock import SystemClock
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.store.base import Store
from s2s.store.etcd import EtcdStore
from s2s.store.records import AgentRecord
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdMissing, EtcdServer, etcd_binary

CLI = [sys.executable, "-m", "s2s.cli.ca"]
TD = "example.org"
CA_CPU, AGENT_CPU = 1, 0
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECTING = 4  # agents on a new connection at once (the "new connection" form)
CONFIG = "[limits]\nmax_connections_per_ip = 4096\n"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def _affinity(cpu: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    if cpu in before:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(slots=True)
class Ca:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_ca(tmp: Path, store: str | None) -> Ca:
    """``s2s-ca init`` then ``s2s-ca serve`` on CPU ``CA_CPU``."""
    data_dir = tmp / "ca"
    init = [*CLI, "--data-dir", str(data_dir), "init", "--trust-domain", TD]
    store_args = ["--store", store] if store else []
    subprocess.run([*init, *store_args], check=True, capture_output=True)
    (tmp / "ca.toml").write_text(CONFIG)
    argv = [sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(data_dir), "serve", *store_args,
            "--listen", "127.0.0.1:0", "--config", str(tmp / "ca.toml")]  # fmt: skip
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=out,
            # before exec: every thread the CA starts inherits the pin (this process has started
            # no thread that could hold a lock across fork)
            preexec_fn=lambda: os.sched_setaffinity(0, {CA_CPU} & os.sched_getaffinity(0)  # noqa: PLW1509
                                                    or os.sched_getaffinity(0)),
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"ca.started"' in line:
                port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                return Ca(process, port, data_dir)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"s2s-ca serve did not start: {log.read_text()[-2000:]}")


@dataclass(slots=True)
class SimAgent:
    client: CaClient
    entry_ids: list[str]


async def attest_agents(ca: Ca, count: int, entries_each: int) -> list[SimAgent]:
    admin = AdminClient(ca.data_dir / "admin.sock")
    td = TrustDomain.parse(TD)
    bundle = Bundle.decode(td, json.dumps(await asyncio.to_thread(admin.get, "/v1/bundle")))
    agents = []
    for i in range(count):
        token = (await asyncio.to_thread(admin.post, "/v1/tokens", {}))["token"]
        client = CaClient(urls=[ca.url], trust_domain=td, clock=SystemClock())
        client.set_trust(bundle, None)
        key = new_key()
        answer = await client.attest(token, build_csr(key))
        svid = X509Svid(answer.svid.spiffe_id, answer.svid.cert_chain, private_key=key)
        client.set_trust(answer.bundle, svid)
        ids = []
        for j in range(entries_each):
            body = {"spiffe_id": f"spiffe://{TD}/agent{i}/w{j}", "selectors": [f"unix:uid:{j}"],
                    "parent_id": str(svid.spiffe_id)}  # fmt: skip
            ids.append((await asyncio.to_thread(admin.post, "/v1/entries", body))["id"])
        agents.append(SimAgent(client, ids))
    return agents


async def renew_round(
    agents: list[SimAgent],
    csrs: list[x509.CertificateSigningRequest],
    *,
    per_agent: int,
    batch: int,
    fresh_connection: bool,
) -> int:
    """Every agent renews ``per_agent`` times (``batch`` CSRs each), all agents at once (at most
    ``CONNECTING`` of them on a new connection at a time: on a loaded machine a crowd of
    handshakes on one CA core outlasts the client's 5 s connect timeout); the number of SVIDs
    received."""
    gate = asyncio.Semaphore(CONNECTING if fresh_connection else len(agents))

    async def one(agent: SimAgent) -> int:
        got = 0
        for k in range(per_agent):
            requests = [(agent.entry_ids[j], csrs[(k + j) % len(csrs)]) for j in range(batch)]
            async with gate:
                if fresh_connection:
                    await agent.client.close()  # as after an idle keep-alive timeout
                results, _sequence = await agent.client.sign_x509(requests)
            if any(r.svid is None for r in results):
                raise RuntimeError(f"renewal refused: {results[0]}")
            got += len(results)
        return got

    return sum(await asyncio.gather(*(one(a) for a in agents)))


async def ca_cost(
    ca: Ca, work: Callable[[], Awaitable[int]], idle_rate: float
) -> tuple[float, float]:
    """CA CPU-seconds per SVID of ``work`` (its idle rate over the same wall time removed), and
    the share of its core the CA was busy meanwhile (near 1: the CA was the bottleneck; well
    below: the agents were, and requests seldom overlapped)."""
    cpu0, wall0 = ca.cpu(), time.perf_counter()
    count = await work()
    cpu, wall = ca.cpu() - cpu0, time.perf_counter() - wall0
    return max(0.0, cpu - idle_rate * wall) / count, cpu / wall


async def idle_rate(ca: Ca, seconds: float) -> float:
    cpu0, wall0 = ca.cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (ca.cpu() - cpu0) / (time.perf_counter() - wall0)


async def _inprocess_setup(
    data_dir: Path, etcd: str | None
) -> tuple[Store, Issuer, AgentRecord, str]:
    """A CA in this process on SQLite (``data_dir``) or on etcd (its own trust domain's keys):
    one attested agent with one entry."""
    td = TrustDomain.parse(f"inprocess{uuid.uuid4().hex[:8]}.example.org")  # one etcd, many runs
    config = CaConfig(trust_domain=td, data_dir=data_dir)
    clock = SystemClock()
    kek = KeyEncryptionKey.create(config.kek_path)
    store: Store = await (
        SqliteStore.open(config.store_path) if etcd is None
        else EtcdStore.open(etcd, trust_domain=td, timeout=30)
    )  # fmt: skip
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    registry = Registry(config=config, store=store, clock=clock)
    issuer = Issuer(config=config, authority=authority, registry=registry, store=store, clock=clock)
    attestor = AgentAttestor(authority=authority, registry=registry, issuer=issuer)
    token = await registry.generate_join_token()
    csr = build_csr(new_key()).public_bytes(Encoding.DER)
    agent = (await attestor.attest_join_token(token.token, csr)).agent
    entry = await registry.create_entry(
        spiffe_id=SpiffeId.parse(f"spiffe://{td}/ns/x/sa/y"),
        parent_id=agent.spiffe_id,
        selectors=parse_selectors(["unix:uid:1000"]),
    )
    return store, issuer, agent, entry.id


CALLERS = 24  # in-process callers at once (as many as the simulated agents)


async def _concurrent_cost(issuer: Issuer, agent: AgentRecord, request: CsrRequest) -> float:
    """Process CPU-seconds per SVID when ``CALLERS`` callers renew one CSR at a time, 20 times
    each, all at once (what a loaded CA does; index writes can then be shared)."""

    async def caller() -> None:
        for _ in range(20):
            await issuer.sign_x509_svids(agent, [request])

    start = time.process_time()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return (time.process_time() - start) / (20 * CALLERS)


def inprocess_costs(quick: bool, batch: int, etcd: str | None) -> dict[str, float]:
    """Seconds per SVID in this process on CPU ``CA_CPU``: ``sign_csr`` (CPU clock of this
    thread) and ``sign_x509_svids`` for 1 and ``batch`` CSRs, one call at a time (process CPU
    clock: the SQLite store writes from its worker thread), audit lines off."""
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)
    min_time, repeats = (0.05, 3) if quick else (0.3, 5)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, _affinity(CA_CPU):
        loop = asyncio.new_event_loop()
        try:
            store, issuer, agent, entry_id = loop.run_until_complete(
                _inprocess_setup(Path(tmp), etcd)
            )
            csr = build_csr(new_key()).public_bytes(Encoding.DER)
            spiffe_id = SpiffeId.parse(f"spiffe://{agent.spiffe_id.trust_domain}/ns/x/sa/y")
            ttl = dt.timedelta(minutes=5)
            out["sign_csr"] = time_per_op(
                lambda: issuer.sign_csr(csr, spiffe_id=spiffe_id, ttl=ttl),
                min_time=min_time, repeats=repeats, timer=time.thread_time,
            )  # fmt: skip
            for size in (1, batch):
                requests = [CsrRequest(entry_id, csr) for _ in range(size)]

                def call(requests: list[CsrRequest] = requests) -> object:
                    return loop.run_until_complete(issuer.sign_x509_svids(agent, requests))

                per_call = time_per_op(call, min_time=min_time, repeats=repeats,
                                       timer=time.process_time)  # fmt: skip
                out[f"sign_x509_svids/{size}"] = per_call / size
            out[f"sign_x509_svids/1, {CALLERS} callers at once"] = loop.run_until_complete(
                _concurrent_cost(issuer, agent, CsrRequest(entry_id, csr))
            )
            loop.run_until_complete(store.close())
        finally:
            loop.close()
    return out


@dataclass(frozen=True, slots=True)
class Shape:
    agents: int
    per_agent: int  # renewals per agent per round (single forms)
    batch: int
    batches_per_agent: int
    rounds: int


QUICK = Shape(agents=10, per_agent=10, batch=10, batches_per_agent=2, rounds=2)
FULL = Shape(agents=24, per_agent=40, batch=10, batches_per_agent=8, rounds=1)


async def measure_ca(ca: Ca, shape: Shape, profiler: Profiler | None) -> dict[str, float]:
    with _affinity(AGENT_CPU):
        agents = await attest_agents(ca, shape.agents, shape.batch)
        csrs = [build_csr(new_key()) for _ in range(64)]
        try:
            # warm up: connections, caches, the CA's snapshot of every agent and entry
            await renew_round(agents, csrs, per_agent=2, batch=1, fresh_connection=False)
            forms: dict[str, Callable[[], Awaitable[int]]] = {
                "single, kept-alive": lambda: renew_round(
                    agents, csrs, per_agent=shape.per_agent, batch=1, fresh_connection=False),
                "single, new connection": lambda: renew_round(
                    agents, csrs, per_agent=shape.per_agent, batch=1, fresh_connection=True),
                f"batch of {shape.batch}, kept-alive": lambda: renew_round(
                    agents, csrs, per_agent=shape.batches_per_agent, batch=shape.batch,
                    fresh_connection=False),
            }  # fmt: skip
            if profiler is not None:
                for name, work in forms.items():
                    with profiler.attached(ca.process.pid, name):
                        for _ in range(3):
                            await work()
                return {}
            samples: dict[str, list[float]] = {name: [] for name in forms}
            busy_shares: dict[str, list[float]] = {name: [] for name in forms}
            idle = []
            for _ in range(shape.rounds):
                rate = await idle_rate(ca, 1.0)
                idle.append(rate)
                for name, work in forms.items():
                    per_svid, busy = await ca_cost(ca, work, rate)
                    samples[name].append(per_svid)
                    busy_shares[name].append(busy)
            result = {name: statistics.median(v) for name, v in samples.items()}
            result.update({f"{n}: busy": statistics.median(v) for n, v in busy_shares.items()})
            result["idle CPU share"] = statistics.median(idle)
            return result
        finally:
            for agent in agents:
                await agent.client.close()


class Profiler:
    """py-spy attached to the CA for one form at a time: raw collapsed stacks per form, and a
    summary of the functions that hold the most samples (inclusive and self)."""

    def __init__(self, binary: str, out: Path) -> None:
        self.binary = binary
        self.out = out
        self.files: dict[str, Path] = {}

    @contextlib.contextmanager
    def attached(self, pid: int, form: str) -> Iterator[None]:
        path = self.out / (form.replace(" ", "_").replace(",", "") + ".txt")
        argv = [self.binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                "--threads", "--nonblocking", "--output", str(path)]  # fmt: skip
        spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # py-spy attaches before the load starts (a bench, not a test)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            self.files[form] = path

    def summary(self, top: int = 25) -> str:
        lines = []
        for form, path in self.files.items():
            lines.append(f"## {form}")
            lines.extend(summarize_stacks(path.read_text(), top))
        return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """``function (module.py)`` from py-spy's ``function (path/module.py:line)``."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})"


def summarize_stacks(raw: str, top: int) -> list[str]:
    """Top functions of py-spy raw output by inclusive and by self share of CPU samples
    (idle samples, the event loop's wait in epoll, are left out of the total)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if any("select (selectors.py" in f or "epoll" in f for f in frames[-2:]):
            continue  # the event loop waiting: idle
        count = int(count_text)
        total += count
        for name in {_frame_name(f) for f in frames[1:]}:  # frame 0 names the thread
            inclusive[name] = inclusive.get(name, 0) + count
        leaf = _frame_name(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
    out = [f"busy samples: {total}", "inclusive:"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out.append("self:")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return out


def run_store(kind: str, shape: Shape, quick: bool, profiler: Profiler | None) -> dict[str, Any]:
    """The in-process costs and the CA's, on one store kind (etcd: one real member)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        etcd: EtcdServer | None = None
        try:
            store = endpoint = None
            if kind == "etcd":
                etcd = EtcdServer(tmp / "etcd")
                etcd.start()
                store, endpoint = f"{etcd.url}/{TD}", etcd.endpoint
            inproc: dict[str, float] = {}
            if profiler is None:
                runs = [inprocess_costs(quick, shape.batch, endpoint) for _ in range(shape.rounds)]
                inproc = {k: statistics.median(d[k] for d in runs) for k in runs[0]}
            ca = start_ca(tmp, store)
            try:
                return {"inprocess": inproc, "ca": asyncio.run(measure_ca(ca, shape, profiler))}
            finally:
                ca.stop()
        finally:
            if etcd is not None:
                etcd.kill()


def measure(
    quick: bool, stores: tuple[str, ...], agents: int | None, profiler: Profiler | None = None
) -> dict[str, Any]:
    shape = QUICK if quick else FULL
    if agents is not None:
        shape = Shape(agents, shape.per_agent, shape.batch, shape.batches_per_agent, shape.rounds)
    if "etcd" in stores:
        try:
            etcd_binary()
        except EtcdMissing as exc:
            print(f"etcd skipped: {exc}", file=sys.stderr)
            stores = tuple(kind for kind in stores if kind != "etcd")
    return {kind: run_store(kind, shape, quick, profiler) for kind in stores}


def figures(measured: dict[str, Any]) -> list[Figure]:
    """Per store: each form's CA CPU per renewal beside the in-process ``sign_x509_svids`` at
    the same batch size (and the in-process figures beside ``sign_csr``)."""
    out = []
    for kind, parts in measured.items():
        inproc, ca = parts["inprocess"], parts["ca"]
        floor = inproc["sign_csr"] * 1000
        for name, value in inproc.items():
            if name != "sign_csr":
                label = f"{kind}: in-process {name} per SVID"
                out.append(Figure(label, value * 1000, "ms", "in-process sign_csr", floor,
                                  higher_is_better=False))  # fmt: skip
        idle = f"CA idle {ca['idle CPU share']:.1%} of a core removed"
        for name, value in ca.items():
            if name == "idle CPU share" or name.endswith(": busy"):
                continue
            size = name.removeprefix("batch of ").split(",")[0] if name.startswith("batch") else "1"
            base = inproc[f"sign_x509_svids/{size}"] * 1000
            note = f"CA busy {ca[name + ': busy']:.0%} of its core; {idle}"
            out.append(Figure(f"{kind}: CA CPU per renewal, {name}", value * 1000, "ms",
                              f"in-process sign_x509_svids/{size}", base, higher_is_better=False,
                              note=note))  # fmt: skip
    return out


def run(quick: bool) -> list[Figure]:
    return figures(measure(quick, ("sqlite", "etcd"), None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", choices=("sqlite", "etcd", "both"), default="both")
    parser.add_argument("--agents", type=int, default=None)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="instead of figures: py-spy stacks of the CA per form in this dir",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")  # fmt: skip
    args = parser.parse_args(argv)
    stores = ("sqlite", "etcd") if args.store == "both" else (args.store,)
    if args.profile is not None:
        for kind in stores:
            args.profile.joinpath(kind).mkdir(parents=True, exist_ok=True)
            profiler = Profiler(args.py_spy, args.profile / kind)
            measure(args.quick, (kind,), args.agents, profiler)
            print(f"# {kind}")
            print(profiler.summary())
        return 0
    _print(figures(measure(args.quick, stores, args.agents)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
