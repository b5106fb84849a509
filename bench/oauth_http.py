"""The token service over HTTPS: a real ``s2s-ca serve --oauth-issuer`` process pinned to one core.

The CA runs as its own process pinned to CPU 0 (SQLite store, audit log on); this process, the
client, runs on CPU 1. Rates are counted per CA CPU-second (user + system time of the CA process
over the timed window, from ``/proc``), so they read as "per CA core" whether or not the client
saturates the CA; the note says how busy the CA core was. Figures, each beside baselines
measured in this run:

* access tokens/s through ``POST /oauth/token`` (client credentials, 8 keep-alive connections,
  closed loop) with a JWT-SVID ``client_assertion`` (each request a fresh assertion, minted
  before the timed window) and with ``tls_client_auth`` (the token is certificate-bound), beside
  in-process minting (the same ``AccessTokenSigner``, grant decision and claims, no HTTP) and
  beside JWT-SVIDs/s through the CA's ``POST /v1/agent/jwt`` (mTLS, agent SVID);
* introspection (``POST /oauth/introspect``, the resource server authenticated by its X.509-SVID
  over mTLS) p50/p99 at a paced 1,000 requests/s, open loop: request *i* is sent at
  ``t0 + i / rate`` whatever the earlier ones do, and its latency runs from that planned time (a
  server that falls behind is charged for the queue it builds), beside ``GET /healthz`` of the
  same CA at the same pace over the same kind of connections; three rounds of each, interleaved,
  each percentile the median of the rounds'.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from bench._harness import Figure, percentiles, pinned, time_per_op
from bench.ca_http import _Agent, _start_ca
from s2s.ca.oauth_keys import AccessTokenSigner
from s2s.core.b64 import b64url_encode
from s2s.core.oauth import ClientRecord, access_token_claims, decide_grant
from s2s.core.spiffe_id import SpiffeId

ISSUER = "https://ca.bench.test"
TOKEN_AUDIENCE = ISSUER + "/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT = "spiffe://example.org/bench/client"
RESOURCE = "spiffe://example.org/bench/api"
API = "https://api.bench.test"
PACE = 1000.0  # introspection requests/s offered
CONNECTIONS = 8
# Bodies are encoded once, beforehand: the client's own cost is not what is measured.
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_ASSERTION_FORM = (
    f"&client_assertion_type={quote(ASSERTION_TYPE, safe='')}&client_assertion=".encode()
)

_One = Callable[[aiohttp.ClientSession], Awaitable[int]]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/PID/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runqueue_seconds(pid: int) -> float:
    """Time the process's threads were runnable but waited for a CPU (``schedstat``, field 2):
    on a shared machine, what other processes took from the CA core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


@dataclass(frozen=True, slots=True)
class Rate:
    per_cpu_s: float  # items per CA CPU-second
    wall: float  # items per wall second
    busy: float  # CA CPU-seconds per wall second (1.0: one core saturated)


async def _rate(pid: int, sessions: list[aiohttp.ClientSession], count: int, one: _One) -> Rate:
    """``count`` calls of ``one(session)``, closed loop, one worker per session."""
    per_worker = max(1, count // len(sessions))

    async def worker(session: aiohttp.ClientSession) -> int:
        return sum([await one(session) for _ in range(per_worker)])

    cpu0, start = _cpu_seconds(pid), time.perf_counter()
    done = sum(await asyncio.gather(*(worker(s) for s in sessions)))
    wall, cpu = time.perf_counter() - start, _cpu_seconds(pid) - cpu0
    return Rate(done / max(cpu, 1e-9), done / wall, cpu / wall)


@dataclass(frozen=True, slots=True)
class Paced:
    latencies: list[float]  # seconds, from each request's planned send time
    sent: int
    achieved: float  # requests/s actually sent (first to last send)
    late_p99: float  # seconds a send started after its planned time, p99
    busy: float  # CA CPU-seconds per wall second during the run
    starved: float  # seconds the CA waited for a CPU, per wall second


async def _paced(
    pid: int, sessions: list[aiohttp.ClientSession], n: int, rate: float, one: _One
) -> Paced:
    """Open loop: request i starts at t0 + i/rate on an idle connection."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[aiohttp.ClientSession] = asyncio.Queue()
    for s in sessions:
        idle.put_nowait(s)
    latencies: list[float] = []
    late: list[float] = []
    sends: list[float] = []

    async def fire(planned: float) -> None:
        session = await idle.get()
        sends.append(loop.time())
        try:
            await one(session)
        finally:
            idle.put_nowait(session)
        latencies.append(loop.time() - planned)

    cpu0, wait0, t0 = _cpu_seconds(pid), _runqueue_seconds(pid), loop.time() + 0.05
    tasks = []
    for i in range(n):
        planned = t0 + i / rate
        delay = planned - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(loop.time() - planned)
        tasks.append(asyncio.create_task(fire(planned)))
    await asyncio.gather(*tasks)
    wall = loop.time() - t0
    busy, starved = (_cpu_seconds(pid) - cpu0) / wall, (_runqueue_seconds(pid) - wait0) / wall
    span = max(sends) - min(sends)
    return Paced(latencies, n, (n - 1) / span if span else float("nan"),
                 percentiles(late, 99)[0], busy, starved)  # fmt: skip


async def _ok(resp: aiohttp.ClientResponse) -> Any:
    if resp.status != 200:
        raise RuntimeError(f"{resp.url}: HTTP {resp.status} {await resp.text()}")
    return await resp.json()


class _Bench:
    def __init__(self, agent: _Agent, pid: int) -> None:
        self.agent = agent
        self.pid = pid

    def _client_context(self, spiffe_id: str) -> Any:
        minted = self.agent.admin.post("/v1/x509/mint", {"spiffe_id": spiffe_id})
        return self.agent.context(minted["chain_pem"], minted["key_pem"].encode())

    def _assertions(self, n: int) -> list[str]:
        body = {"spiffe_id": CLIENT, "audience": [TOKEN_AUDIENCE]}
        return [self.agent.admin.post("/v1/jwt/mint", body)["token"] for _ in range(n)]

    async def measure(self, quick: bool) -> dict[str, Any]:
        admin = self.agent.admin
        admin.post("/v1/oauth/clients", {"spiffe_id": CLIENT, "scopes": ["read"],
                                         "audiences": [API]})  # fmt: skip
        admin.post("/v1/oauth/clients", {"spiffe_id": RESOURCE, "scopes": ["introspect"],
                                         "audiences": [API]})  # fmt: skip
        agent_ctx, entry_id = await self.agent.attest()
        client_ctx = self._client_context(CLIENT)
        resource_ctx = self._client_context(RESOURCE)
        url = self.agent.url

        def sessions(ctx: Any, n: int = CONNECTIONS) -> list[aiohttp.ClientSession]:
            return [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=1))
                    for _ in range(n)]  # fmt: skip

        agents, clients, resources = (
            sessions(agent_ctx),
            sessions(client_ctx),
            sessions(resource_ctx, 16),
        )
        try:
            rounds, count, n_paced, paced_rounds = (1, 300, 500, 1) if quick else (5, 2400, 3000, 3)
            pending: list[str] = []
            grant = b"grant_type=client_credentials"

            async def one_jwt_svid(session: aiohttp.ClientSession) -> int:
                body = {"entry_id": entry_id, "audience": ["bench"]}
                async with session.post(url + "/v1/agent/jwt", json=body) as resp:
                    await _ok(resp)
                return 1

            async def one_by_assertion(session: aiohttp.ClientSession) -> int:
                form = grant + _ASSERTION_FORM + pending.pop().encode()
                async with session.post(url + "/oauth/token", data=form, headers=FORM) as resp:
                    await _ok(resp)
                return 1

            async def one_by_mtls(session: aiohttp.ClientSession) -> int:
                async with session.post(url + "/oauth/token", data=grant, headers=FORM) as resp:
                    await _ok(resp)
                return 1

            for s in agents:  # warm up: handshakes, caches
                await one_jwt_svid(s)
            for s in clients:
                await one_by_mtls(s)
            pending.extend(await asyncio.to_thread(self._assertions, len(clients)))
            for s in clients:
                await one_by_assertion(s)
            results: dict[str, list[Rate]] = {"jwt_svid": [], "assertion": [], "mtls": []}
            for _ in range(rounds):
                results["jwt_svid"].append(await _rate(self.pid, agents, count, one_jwt_svid))
                pending.extend(await asyncio.to_thread(self._assertions, count))
                results["assertion"].append(await _rate(self.pid, clients, count, one_by_assertion))
                results["mtls"].append(await _rate(self.pid, clients, count, one_by_mtls))

            async with clients[0].post(url + "/oauth/token", data=grant, headers=FORM) as resp:
                token = (await _ok(resp))["access_token"]
            asked = f"token={token}".encode()

            async def one_introspect(session: aiohttp.ClientSession) -> int:
                introspect_url = url + "/oauth/introspect"
                async with session.post(introspect_url, data=asked, headers=FORM) as resp:
                    if not (await _ok(resp))["active"]:
                        raise RuntimeError("introspection: the token is not active")
                return 1

            async def one_healthz(session: aiohttp.ClientSession) -> int:
                async with session.get(url + "/healthz") as resp:
                    await _ok(resp)
                return 1

            for s in resources:
                await one_introspect(s)
            for one in (one_healthz, one_introspect):  # warm up the paced path, not recorded
                await _paced(self.pid, resources, n_paced // 10, PACE, one)
            healthz, introspect = [], []
            for _ in range(paced_rounds):  # interleaved: a noisy moment hits both alike
                healthz.append(await _paced(self.pid, resources, n_paced, PACE, one_healthz))
                introspect.append(await _paced(self.pid, resources, n_paced, PACE, one_introspect))
            return {**results, "healthz": healthz, "introspect": introspect}
        finally:
            for s in [*agents, *clients, *resources]:
                await s.close()


def _in_process_rate(min_time: float) -> float:
    """Access tokens minted per CPU-second with the token endpoint's own steps, no HTTP."""
    now = dt.datetime.now(dt.UTC)
    signer = AccessTokenSigner(kid="bench", private_key=ec.generate_private_key(ec.SECP256R1()),
                               not_after=now + dt.timedelta(hours=1))  # fmt: skip
    record = ClientRecord(client_id=CLIENT, scopes=frozenset({"read"}), audiences=(API,),
                          created_at=now, updated_at=now,
                          spiffe_id=SpiffeId.parse(CLIENT))  # fmt: skip

    def mint() -> str:
        grant = decide_grant(record, scope=None, audience=())
        claims = access_token_claims(issuer=ISSUER, client=record, grant=grant,
                                     now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(minutes=5),
                                     jti=b64url_encode(os.urandom(16)))  # fmt: skip
        return signer.sign(claims)

    return 1 / time_per_op(mint, min_time=min_time, timer=time.thread_time)


def _pooled(runs: list[Paced]) -> Paced:
    """The pace figures of several paced runs: all sent, the worst pace."""
    return Paced([], sum(r.sent for r in runs), min(r.achieved for r in runs),
                 max(r.late_p99 for r in runs), max(r.busy for r in runs),
                 max(r.starved for r in runs))  # fmt: skip


def _p50_p99(runs: list[Paced]) -> tuple[float, float, float]:
    """p50 and p99 in ms, each the median over the runs (a moment when another process holds
    the core hits one run, not the figure), and the worst run's p99."""
    each = [percentiles(r.latencies, 50, 99) for r in runs]
    p50, p99 = (statistics.median(e[i] for e in each) * 1000 for i in (0, 1))
    return p50, p99, max(e[1] for e in each) * 1000


def _median(rates: list[Rate]) -> Rate:
    return Rate(*(statistics.median(getattr(r, f) for r in rates)
                  for f in ("per_cpu_s", "wall", "busy")))  # fmt: skip


def run(quick: bool) -> list[Figure]:
    cpus = sorted(os.sched_getaffinity(0))
    ca_cpu, client_cpu = (cpus[0], cpus[-1]) if len(cpus) > 1 else (None, cpus[0])
    with pinned(cpus[0]):
        in_process = _in_process_rate(0.05 if quick else 0.4)
    with tempfile.TemporaryDirectory() as tmp:
        process, port = _start_ca(Path(tmp), extra=("--oauth-issuer", ISSUER), cpu=ca_cpu)
        try:
            with pinned(client_cpu):
                bench = _Bench(_Agent(Path(tmp) / "ca", port), process.pid)
                m = asyncio.run(bench.measure(quick))
        except Exception:
            errors = [ln for ln in (Path(tmp) / "serve.log").read_text().splitlines()
                      if '"level": "info"' not in ln]  # fmt: skip
            print("\n".join(errors[-40:]), file=sys.stderr)
            raise
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    jwt_svid, assertion, mtls = (_median(m[k]) for k in ("jwt_svid", "assertion", "mtls"))
    healthz, introspect = _pooled(m["healthz"]), _pooled(m["introspect"])

    def note(r: Rate) -> str:
        return f"{r.wall:,.0f}/s wall, CA core {r.busy:.0%} busy"

    def pace(p: Paced) -> str:
        late = p.late_p99 * 1000
        return (f"{p.sent} sent at {PACE:,.0f}/s offered, {p.achieved:,.0f}/s achieved, "
                f"send lateness p99 {late:.2f} ms, CA core {p.busy:.0%} busy, "
                f"CA waiting for a CPU {p.starved:.0%} of the time")  # fmt: skip

    in_name = "access tokens minted in-process (CPU-s)"
    svid_name = "JWT-SVIDs via /v1/agent/jwt per CA CPU-s"
    h50, h99, h_worst = _p50_p99(m["healthz"])
    i50, i99, i_worst = _p50_p99(m["introspect"])
    return [
        Figure(svid_name, jwt_svid.per_cpu_s, "tokens/s", in_name, in_process,
               note=note(jwt_svid)),
        Figure("tokens via /oauth/token, JWT-SVID assertion", assertion.per_cpu_s, "tokens/s",
               in_name, in_process, note=note(assertion)),
        Figure("tokens via /oauth/token, JWT-SVID assertion", assertion.per_cpu_s, "tokens/s",
               svid_name, jwt_svid.per_cpu_s),
        Figure("tokens via /oauth/token, tls_client_auth", mtls.per_cpu_s, "tokens/s",
               in_name, in_process, note=note(mtls)),
        Figure("tokens via /oauth/token, tls_client_auth", mtls.per_cpu_s, "tokens/s",
               svid_name, jwt_svid.per_cpu_s),
        Figure("introspection at 1,000/s (mTLS), p50", i50, "ms", "GET /healthz, same pace",
               h50, higher_is_better=False, note=pace(introspect)),
        Figure("introspection at 1,000/s (mTLS), p99", i99, "ms", "GET /healthz, same pace",
               h99, higher_is_better=False,
               note=f"worst round p99 {i_worst:.1f} ms (baseline {h_worst:.1f}); baseline "
                    + pace(healthz)),
    ]  # fmt: skip
