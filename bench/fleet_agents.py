"""Simulated agents for the fleet benchmark: one process runs many of them on one event loop.

Each simulated agent is the real agent's CA side, built as ``s2s.agent.app`` builds it: a
``CaClient`` (its own aiohttp session and connection pool, mTLS with its own agent SVID,
fail-over across the CA URLs, which each agent gets in a rotated order so the replicas share the
fleet), an ``SvidCache`` (entries long-poll asking for deltas once synced, a fresh key and CSR per
entry, renewal at half-life +-10% in batches, the agent's capped jittered backoff when the CA is
away), and a ``CaRevocationFeed`` over the same client (revocation long-poll asking for deltas)
under a ``RevocationFollower`` (drops revoked SVIDs, re-fetches the CRLs after each change). It
also mints a JWT-SVID now and then. It holds no Workload API and no workloads: what a real agent
does for its workloads costs the CA nothing. The client is subclassed only to count and time its
calls (:class:`CountingClient`); every request goes through the real code.

Started by ``bench.fleet`` with a JSON spec on stdin (first line); writes JSON lines to stdout:
``ready`` once every agent holds its SVIDs and its revocation set, ``entry`` the first time an
agent holds an entry id, ``revoked`` the first time an agent's revocation set holds a SPIFFE ID it
was told to expect, ``x509`` per renewal call (latency), ``back`` the first successful call of an
agent after a ``mark``, ``stats`` every second (counters since the start). Commands on stdin:
``jwt on`` / ``jwt off``, ``expect <SPIFFE ID>``, ``mark``, ``dump`` (on stderr: each agent not back
since the mark and the last call it failed), ``burst <seconds> <agents>`` (each of
that many agents signs one CSR after another, for issuance throughput), ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from s2s.agent.ca_client import CaClient
from s2s.agent.ca_wire import AgentSvidResponse, EntriesResponse, X509Result
from s2s.agent.cache import SvidCache
from s2s.agent.issuance import build_csr, new_key
from s2s.agent.metrics import AgentMetrics
from s2s.agent.revocations import RevocationFollower
from s2s.aio import within
from s2s.core.bundle import Bundle
from s2s.core.clock import SystemClock
from s2s.core.errors import S2SError, Unavailable
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.verifier.feeds_ca import CaRevocationFeed, RevocationPage


@dataclass(slots=True)
class Counters:
    renewals: int = 0  # SVIDs received
    batches: int = 0
    renew_failures: int = 0  # SVIDs asked for and not received (call failed or item refused)
    jwts: int = 0
    jwt_failures: int = 0
    entry_answers: int = 0  # entries long-poll answers (wake-ups)
    entry_deltas: int = 0  # of which deltas
    entry_failures: int = 0
    revocation_answers: int = 0
    revocation_deltas: int = 0
    revocation_failures: int = 0
    crl_fetches: int = 0
    expired: int = 0  # SVIDs that reached notAfter before their replacement arrived
    ready: int = 0
    unattested: int = 0  # agents whose attestation was refused (their join token was spent)
    crashed: int = 0  # simulated agents that stopped on an unexpected error
    jwt_on: bool = False  # minting JWT-SVIDs (``jwt on`` / ``jwt off`` on stdin)


class Writer:
    def emit(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


class CountingClient(CaClient):
    """The agent's CA client, counting and timing what it asks (the requests are the real
    client's: only the bookkeeping is added)."""

    def __init__(self, *, index: int, counters: Counters, out: Writer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.counters = counters
        self.out = out
        self.mark = 0.0  # wall time of the last ``mark``; 0: none pending
        self.timed = True  # emit the latency of each renewal call
        self.last_error = ""  # the last failed call, for ``dump``

    def _failed(self, op: str, exc: S2SError) -> None:
        self.last_error = f"{op}: {exc.code}: {str(exc)[:300]}"

    def _ok(self) -> None:
        if self.mark:
            self.mark = 0.0
            self.out.emit({"k": "back", "a": self.index, "t": time.time()})

    async def entries(self, **kwargs: Any) -> EntriesResponse:
        try:
            answer = await super().entries(**kwargs)
        except S2SError as exc:
            self.counters.entry_failures += 1
            self._failed("entries", exc)
            raise
        self.counters.entry_answers += 1
        self.counters.entry_deltas += answer.delta
        self._ok()
        return answer

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        try:
            page = await super().fetch_revocations(since=since, wait=wait)
        except S2SError as exc:
            self.counters.revocation_failures += 1
            self._failed("revocations", exc)
            raise
        self.counters.revocation_answers += 1
        self.counters.revocation_deltas += page.delta
        self._ok()
        return page

    async def fetch_crls(self) -> tuple[bytes, ...]:
        crls = await super().fetch_crls()
        self.counters.crl_fetches += 1
        return crls

    async def sign_x509(
        self, requests: Sequence[tuple[str, x509.CertificateSigningRequest]]
    ) -> tuple[tuple[X509Result, ...], int | None]:
        started = time.monotonic()
        try:
            results, sequence = await super().sign_x509(requests)
        except S2SError as exc:
            self.counters.renew_failures += len(requests)
            self._failed("x509", exc)
            raise
        took = time.monotonic() - started
        got = sum(1 for r in results if r.svid is not None)
        self.counters.batches += 1
        self.counters.renewals += got
        self.counters.renew_failures += len(results) - got
        if self.timed:
            self.out.emit({"k": "x509", "t": time.time(), "d": round(took, 5), "n": len(results)})
        self._ok()
        return results, sequence


@dataclass(slots=True)
class SimAgent:
    index: int
    client: CountingClient
    out: Writer
    counters: Counters
    jwt_interval: float
    metrics: AgentMetrics
    cache: SvidCache | None = None
    feed: CaRevocationFeed | None = None
    expected: set[str] = field(default_factory=set)  # SPIFFE IDs to report when revoked
    held: set[str] = field(default_factory=set)  # entry ids seen
    counted: set[int] = field(default_factory=set)  # serials whose expiry was counted

    async def run(self, token: str, bundle: Bundle, started: asyncio.Event) -> None:
        key = new_key()
        self.client.set_trust(bundle, None)
        try:
            answer: AgentSvidResponse = await _retry(
                lambda: self.client.attest(token, build_csr(key))
            )
        except S2SError as exc:  # e.g. the token was used by an attempt whose answer was lost
            self.counters.unattested += 1
            self.out.emit({"k": "unattested", "a": self.index, "error": f"{exc.code}: {exc}"})
            started.set()
            return
        svid = X509Svid(
            spiffe_id=answer.svid.spiffe_id, cert_chain=answer.svid.cert_chain, private_key=key
        )
        self.client.set_trust(answer.bundle, svid)
        clock = SystemClock()
        feed = CaRevocationFeed(self.client, wait=30.0, clock=clock)
        cache = SvidCache(
            client=self.client, bundle=answer.bundle, clock=clock, metrics=self.metrics,
            revocations=feed,
        )  # fmt: skip
        follower = RevocationFollower(feed=feed, cache=cache, client=self.client)
        self.cache, self.feed = cache, feed
        feed.subscribe(self._revoked)
        async with asyncio.TaskGroup() as group:
            group.create_task(cache.run())
            group.create_task(follower.run())
            group.create_task(self._jwts())
            await cache.synced.wait()
            while not cache.health()[0] or not feed.synced.is_set():
                await _update_or(cache, 0.2)
            self.held = {item.entry.id for item in cache.state.items}
            self.counters.ready += 1
            started.set()
            group.create_task(self._watch(cache))

    async def _watch(self, cache: SvidCache) -> None:
        """Report new entries; count SVIDs that expired before their replacement came."""
        while True:
            version = cache.version
            now = time.time()
            nearest = now + 5.0
            for item in cache.state.items:
                if item.entry.id not in self.held:
                    self.held.add(item.entry.id)
                    self.out.emit({"k": "entry", "a": self.index, "id": item.entry.id, "t": now})
                svid = item.svid
                if svid is None:
                    continue
                ends = svid.not_after.timestamp()
                serial = svid.leaf.serial_number
                if ends <= now and serial not in self.counted:
                    self.counted.add(serial)
                    self.counters.expired += 1
                elif ends > now:
                    nearest = min(nearest, ends)
            await _update_or(cache, max(0.01, nearest - time.time()), version)

    def _revoked(self, revoked: RevocationSet) -> None:
        now = time.time()
        for value in [v for v in self.expected if revoked.revoked_at(v) is not None]:
            self.expected.discard(value)
            self.out.emit({"k": "revoked", "a": self.index, "v": value, "t": now})

    def expect(self, value: str) -> None:
        self.expected.add(value)
        if self.feed is not None:
            self._revoked(self.feed.snapshot())

    async def _jwts(self) -> None:
        while True:
            await asyncio.sleep(self.jwt_interval * random.uniform(0.5, 1.5))
            if self.cache is None or not self.counters.jwt_on:
                continue
            items = self.cache.state.items
            if not items:
                continue
            try:
                await self.client.mint_jwt(random.choice(items).entry.id, ["spiffe://fleet/api"])
                self.counters.jwts += 1
            except S2SError:
                self.counters.jwt_failures += 1

    async def burst(self, seconds: float, done: list[int]) -> None:
        """Sign one CSR after another for ``seconds`` (issuance throughput, real client)."""
        if self.cache is None or not self.cache.state.items:
            return
        entry = self.cache.state.items[0].entry.id
        csr = build_csr(new_key())
        self.client.timed = False
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    results, _ = await self.client.sign_x509([(entry, csr)])
                except S2SError:
                    continue
                done[0] += sum(1 for r in results if r.svid is not None)
        finally:
            self.client.timed = True


async def _update_or(cache: SvidCache, timeout: float, version: int | None = None) -> None:
    with contextlib.suppress(TimeoutError):
        await within(cache.wait_for_update(cache.version if version is None else version), timeout)


async def _retry(call: Any) -> Any:
    """Retry while no CA answers (an answer that refuses is final)."""
    for attempt in range(40):
        try:
            return await call()
        except Unavailable:
            if attempt == 39:
                raise
            await asyncio.sleep(random.uniform(0.2, 1.0))
    raise AssertionError("unreachable")


async def main() -> None:
    logging.getLogger("s2s").setLevel(logging.ERROR)  # a CA restart would flood stderr
    spec = json.loads(sys.stdin.readline())
    td = TrustDomain.parse(spec["trust_domain"])
    bundle = Bundle.decode(td, spec["bundle"])
    urls: list[str] = spec["ca_urls"]
    out, counters = Writer(), Counters()
    metrics = AgentMetrics()  # one registry for the process: the cache reports into it
    agents: list[SimAgent] = []
    runs = []
    for index, token in spec["agents"]:
        k = index % len(urls)
        client = CountingClient(
            index=index, counters=counters, out=out, urls=urls[k:] + urls[:k], trust_domain=td,
            clock=SystemClock(),
        )  # fmt: skip
        agent = SimAgent(index, client, out, counters, spec["jwt_interval"], metrics)
        agents.append(agent)
        runs.append((agent, token, asyncio.Event()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: list[asyncio.Task[Any]] = []

    async def burst(seconds: float, count: int) -> None:
        done = [0]
        started = time.monotonic()
        await asyncio.gather(*(a.burst(seconds, done) for a in agents[:count]))
        took = time.monotonic() - started
        out.emit({"k": "burst", "t": time.time(), "svids": done[0], "seconds": took})
        sys.stdout.flush()

    async def commands() -> None:
        while line := await reader.readline():
            command = line.decode().strip()
            word, _, rest = command.partition(" ")
            if command == "stop":
                break
            if word == "jwt":
                counters.jwt_on = rest == "on"
            elif word == "expect":
                for agent in agents:
                    agent.expect(rest)
            elif word == "dump":  # agents not back since the mark: what they last failed on
                for agent in agents:
                    if agent.client.mark:
                        print(f"agent {agent.index} not back: {agent.client.last_error}",
                              file=sys.stderr, flush=True)  # fmt: skip
            elif word == "mark":
                now = time.time()
                for agent in agents:
                    agent.client.mark = now
            elif word == "burst":
                seconds, count = rest.split()
                tasks.append(asyncio.create_task(burst(float(seconds), int(count))))
        stop.set()

    async def stats() -> None:
        while True:
            out.emit({"k": "stats", "t": time.time(), **vars_of(counters)})
            sys.stdout.flush()
            await asyncio.sleep(1.0)

    tasks += [asyncio.create_task(commands()), asyncio.create_task(stats())]
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
