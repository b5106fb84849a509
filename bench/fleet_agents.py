"""Simulated agents for the fleet benchmark: one process runs many of them on one event loop.

Each simulated agent is a real client of the CA's agent API (``s2s.agent.ca_client.CaClient``:
its own aiohttp session and connection pool, mTLS with its own agent SVID, fail-over across the
CA URLs, which each agent gets in a rotated order so the replicas share the fleet). It attests
with a join token, long-polls its entries, keeps an X509-SVID per entry (a fresh key and CSR each
time, renewed at half-life +-10%, due renewals sent as one batch), mints a JWT-SVID now and then,
and long-polls the CA's revocations. It holds no Workload API and no workloads: what a real agent
does for its workloads costs the CA nothing.

Started by ``bench.fleet`` with a JSON spec on stdin (first line); writes JSON lines to stdout:
``ready`` once every agent holds its SVIDs, ``entry`` the first time an agent sees an entry id,
``revoked`` the first time it sees a revoked SPIFFE ID, ``stats`` every second (counters since
the start). A ``stop`` line on stdin ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from s2s.agent.ca_client import CaClient
from s2s.agent.issuance import build_csr, new_key
from s2s.core.bundle import Bundle
from s2s.core.clock import SystemClock
from s2s.core.errors import S2SError
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import X509Svid

BATCH_WINDOW = 0.5  # renewals due within this many seconds go in one batch
MAX_BATCH = 64


@dataclass(slots=True)
class Counters:
    renewals: int = 0  # SVIDs received
    batches: int = 0
    renew_failures: int = 0
    jwts: int = 0
    jwt_failures: int = 0
    entry_answers: int = 0  # entries long-poll answers (wake-ups)
    revocation_answers: int = 0
    expired: int = 0  # SVIDs that reached notAfter before their replacement arrived
    ready: int = 0
    crashed: int = 0  # simulated agents that stopped on an unexpected error
    jwt_on: bool = False  # minting JWT-SVIDs (``jwt on`` / ``jwt off`` on stdin)


@dataclass(slots=True)
class SimAgent:
    index: int
    client: CaClient
    out: Writer
    counters: Counters
    jwt_interval: float
    marker: str
    due: dict[str, float] = field(default_factory=dict)  # entry id -> monotonic due time
    expires: dict[str, float] = field(default_factory=dict)  # entry id -> wall notAfter
    counted: set[str] = field(default_factory=set)  # entries whose expiry was counted
    revoked: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, token: str, bundle: Bundle, started: asyncio.Event) -> None:
        key = new_key()
        self.client.set_trust(bundle, None)
        answer = await _retry(lambda: self.client.attest(token, build_csr(key)))
        svid = X509Svid(
            spiffe_id=answer.svid.spiffe_id, cert_chain=answer.svid.cert_chain, private_key=key
        )
        self.client.set_trust(answer.bundle, svid)
        first = await _retry(lambda: self.client.entries(since=-1, wait=0))
        for entry in first.entries:
            self.due[entry.id] = 0.0
        await self._renew_due()
        self.counters.ready += 1
        started.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_entries(first.revision))
            group.create_task(self._renewals())
            group.create_task(self._jwts())
            group.create_task(self._follow_revocations())

    async def _follow_entries(self, revision: int) -> None:
        while True:
            try:
                answer = await self.client.entries(since=revision, wait=30)
            except S2SError:
                await asyncio.sleep(random.uniform(0.25, 1.0))
                continue
            now = time.time()
            self.counters.entry_answers += 1
            revision = answer.revision
            for entry in answer.entries:
                if entry.id not in self.due:
                    self.due[entry.id] = 0.0
                    self.out.emit({"k": "entry", "a": self.index, "id": entry.id, "t": now})
                    self.wake.set()

    async def _renewals(self) -> None:
        while True:
            self._count_expired()
            await self._renew_due()
            nearest = min(self.due.values(), default=time.monotonic() + 5)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, nearest - time.monotonic())):
                    await self.wake.wait()

    async def _renew_due(self) -> None:
        now = time.monotonic()
        due = [eid for eid, at in self.due.items() if at <= now + BATCH_WINDOW][:MAX_BATCH]
        if not due:
            return
        requests = [(eid, build_csr(new_key())) for eid in due]
        try:
            results, _sequence = await self.client.sign_x509(requests)
        except S2SError:
            self.counters.renew_failures += len(due)
            for eid in due:  # retry soon, jittered
                self.due[eid] = time.monotonic() + random.uniform(0.5, 2.0)
            return
        self.counters.batches += 1
        received = time.monotonic()
        for result in results:
            if result.svid is None:
                self.counters.renew_failures += 1
                self.due[result.entry_id] = received + random.uniform(1.0, 3.0)
                continue
            self.counters.renewals += 1
            life = (result.svid.not_after - datetime.now(UTC)).total_seconds()
            self.due[result.entry_id] = received + life / 2 * random.uniform(0.9, 1.1)
            self.expires[result.entry_id] = result.svid.not_after.timestamp()
            self.counted.discard(result.entry_id)

    def _count_expired(self) -> None:
        now = time.time()
        for eid, not_after in self.expires.items():
            if not_after <= now and eid not in self.counted:
                self.counted.add(eid)
                self.counters.expired += 1

    async def _jwts(self) -> None:
        while True:
            await asyncio.sleep(self.jwt_interval * random.uniform(0.5, 1.5))
            if not self.due or not self.counters.jwt_on:
                continue
            try:
                await self.client.mint_jwt(random.choice(list(self.due)), ["spiffe://fleet/api"])
                self.counters.jwts += 1
            except S2SError:
                self.counters.jwt_failures += 1

    async def _follow_revocations(self) -> None:
        revision = -1
        while True:
            try:
                page = await self.client.fetch_revocations(since=revision, wait=30)
            except S2SError:
                await asyncio.sleep(random.uniform(0.25, 1.0))
                continue
            now = time.time()
            self.counters.revocation_answers += 1
            first = revision < 0
            revision = page.revision
            for record in page.records:
                if record.value.startswith(self.marker) and record.value not in self.revoked:
                    self.revoked.add(record.value)
                    if not first:
                        self.out.emit({"k": "revoked", "a": self.index, "v": record.value,
                                       "t": now})  # fmt: skip


async def _retry(call: Any) -> Any:
    for attempt in range(40):
        try:
            return await call()
        except S2SError:
            if attempt == 39:
                raise
            await asyncio.sleep(random.uniform(0.2, 1.0))
    raise AssertionError("unreachable")


class Writer:
    def emit(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


async def main() -> None:
    spec = json.loads(sys.stdin.readline())
    td = TrustDomain.parse(spec["trust_domain"])
    bundle = Bundle.decode(td, spec["bundle"])
    urls: list[str] = spec["ca_urls"]
    out, counters = Writer(), Counters()
    agents: list[SimAgent] = []
    runs = []
    for index, token in spec["agents"]:
        k = index % len(urls)
        client = CaClient(urls=urls[k:] + urls[:k], trust_domain=td, clock=SystemClock())
        agent = SimAgent(index, client, out, counters, spec["jwt_interval"], spec["marker"])
        agents.append(agent)
        started = asyncio.Event()
        runs.append((agent, token, started))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            command = line.strip()
            if command == b"stop":
                break
            counters.jwt_on = {b"jwt on": True, b"jwt off": False}.get(command, counters.jwt_on)
        stop.set()

    async def stats() -> None:
        while True:
            out.emit({"k": "stats", "t": time.time(), **vars_of(counters)})
            sys.stdout.flush()
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(commands()), asyncio.create_task(stats())]
    gate = asyncio.Semaphore(spec.get("attest_concurrency", 16))

    async def one(agent: SimAgent, token: str, started: asyncio.Event) -> None:
        async with gate:
            inner = asyncio.create_task(agent.run(token, bundle, started))
            await asyncio.wait([inner, asyncio.create_task(started.wait())],
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        try:
            await inner
        except Exception:  # an agent that stops is a finding: say why, on stderr
            traceback.print_exc()
            counters.crashed += 1

    for agent, token, started in runs:
        tasks.append(asyncio.create_task(one(agent, token, started)))

    async def announce() -> None:
        await asyncio.gather(*(started.wait() for _a, _t, started in runs))
        out.emit({"k": "ready", "t": time.time(), "agents": len(runs)})
        sys.stdout.flush()

    tasks.append(asyncio.create_task(announce()))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.emit({"k": "stats", "t": time.time(), **vars_of(counters)})
    sys.stdout.flush()
    for agent in agents:
        await agent.client.close()


def vars_of(counters: Counters) -> dict[str, int]:
    return {name: int(getattr(counters, name)) for name in Counters.__dataclass_fields__}


if __name__ == "__main__":
    asyncio.run(main())
