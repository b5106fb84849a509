"""Federation: a federated bundle change reaching a workload stream, and the cost of a handshake
with a peer of a federated trust domain.

* **federated bundle -> stream** (ms): the CA runs as its own process (``s2s-ca serve``); an agent
  in this process serves one entry that federates with ``other.test``. Each sample sets a new
  bundle of other.test through the admin API (``s2s-ca bundle set``'s route; a new sequence, as a
  refresh after a remote root rotation stores it) and times until a connected FetchX509SVID
  stream carries it (CA store -> entries long-poll woken -> agent -> stream). Baseline: the same
  path for an entry change (a new hint), which is what the long-poll was built for.
* **handshakes with a federated peer** (hs/s, server CPU): in-memory TLS 1.3 mTLS handshakes, the
  server's ``server_context`` holding its own bundle and the federated one; the client is a
  workload of other.test. Baseline: the same server with a client of its own trust domain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._harness import Figure, percentiles
from bench.agent import TD, _start_ca, _stop
from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.config import AgentConfig
from s2s.ca.client import AdminClient
from s2s.core.bundle import BundleSet
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.workload_client import WorkloadApiClient
from s2s.verifier.x509context import X509Context

OTHER = "other.test"
RUNS = 3


# ---- federated bundle -> stream --------------------------------------------------------------


async def _stream_latencies(
    tmp: Path, port: int, admin: AdminClient, n: int
) -> tuple[list[float], list[float]]:
    foreign = TestAuthority(OTHER).bundle()
    set_bundle = "/v1/federation/bundles"
    admin.post(set_bundle, {"trust_domain": OTHER, "bundle": foreign.encode().decode()})
    # each change adds a new root beside the current one, as a remote root rotation does
    new_roots = [TestAuthority(OTHER).root for _ in range(n)]
    token = admin.post("/v1/tokens", {})
    entry = admin.post("/v1/entries", {"spiffe_id": f"spiffe://{TD}/fed",
                                       "parent_id": token["agent_id"], "federates_with": [OTHER],
                                       "selectors": [f"unix:uid:{os.getuid()}"]})  # fmt: skip
    bundle = tmp / "fed-bundle.pem"
    bundle.write_text(admin.get("/v1/bundle", format="pem"))
    config = AgentConfig(trust_domain=TrustDomain(TD), ca_urls=(f"https://127.0.0.1:{port}",),
                         data_dir=tmp / "fed-agent", trust_bundle=bundle,
                         join_token=token["token"], socket=tmp / "fed.sock",
                         log_level="ERROR")  # fmt: skip
    agent = Agent(config, tuning=AgentTuning(first_sync_timeout=10))
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(agent, stop))
    await asyncio.wait_for(agent.ready.wait(), 30)
    federated: list[float] = []
    entries: list[float] = []
    other = TrustDomain(OTHER)
    try:
        async with WorkloadApiClient(str(config.socket)) as client:
            stream = client.watch_x509_context()
            await anext(stream)
            for i in range(n):
                await asyncio.sleep(0.05)
                grown = dataclasses.replace(
                    foreign,
                    x509_authorities=(*foreign.x509_authorities, new_roots[i]),
                    sequence=foreign.sequence + 1 + i,
                )
                body = {"trust_domain": OTHER, "bundle": grown.encode().decode()}
                start = time.perf_counter()
                await asyncio.to_thread(admin.post, set_bundle, body)
                while True:
                    context = await asyncio.wait_for(anext(stream), 10)
                    held = context.bundles.get(other)
                    if held is not None and held.x509_authorities == grown.x509_authorities:
                        break
                federated.append(time.perf_counter() - start)
                # the baseline: an entry change on the same path (its hint relabels the SVID)
                await asyncio.sleep(0.05)
                patch = {"hint": f"h{i}"}
                start = time.perf_counter()
                await asyncio.to_thread(admin.call, "PATCH", f"/v1/entries/{entry['id']}",
                                        body=patch)  # fmt: skip
                while (await asyncio.wait_for(anext(stream), 10)).default_svid.hint != f"h{i}":
                    pass
                entries.append(time.perf_counter() - start)
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    finally:
        stop.set()
        await task
    return federated, entries


# ---- handshakes -------------------------------------------------------------------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> float:
    """One in-memory handshake; the CPU seconds spent in the server's do_handshake."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    spent, c_done, s_done = 0.0, False, False
    while not (c_done and s_done):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            start = time.thread_time()
            try:
                server.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - start
        c_in.write(s_out.read())
    return spent


def _source(authority: TestAuthority, sid: str, bundles: BundleSet) -> StaticX509Source:
    svid = authority.issue_x509_svid(sid, ttl=dt.timedelta(hours=1))
    return StaticX509Source(X509Context((svid,), bundles))


def _handshake_rates(quick: bool) -> tuple[float, float]:
    own, other = TestAuthority(TD), TestAuthority(OTHER)
    both = BundleSet.of(own.bundle(), other.bundle())
    server = server_context(
        _source(own, f"spiffe://{TD}/server", both),
        authorize=authorize_any(), revocations=InMemoryRevocations(),
    )  # fmt: skip
    clients: dict[str, Any] = {
        name: client_context(
            _source(authority, f"spiffe://{authority.trust_domain}/c", both),
            authorize=authorize_any(),
            revocations=no_revocation_check(),
        )
        for name, authority in (("federated", other), ("local", own))
    }
    n = 60 if quick else 400
    for ctx in clients.values():  # warm the chain caches
        for _ in range(20):
            _handshake(server, ctx)
    runs: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(RUNS):
        for name, ctx in clients.items():
            runs[name].append(n / sum(_handshake(server, ctx) for _ in range(n)))
    return statistics.median(runs["federated"]), statistics.median(runs["local"])


def run(quick: bool) -> list[Figure]:
    n = 5 if quick else 30
    with tempfile.TemporaryDirectory(prefix="s2s-bench-fed-", dir="/tmp") as name:
        tmp = Path(name)
        ca, port, admin = _start_ca(tmp)
        try:
            federated, entries = asyncio.run(_stream_latencies(tmp, port, admin, n))
        finally:
            _stop(ca)
    f50, f99 = percentiles(federated, 50, 99)
    e50, e99 = percentiles(entries, 50, 99)
    fed_hs, local_hs = _handshake_rates(quick)
    return [
        Figure("federated bundle set -> connected stream p50", f50 * 1e3, "ms",
               "entry change -> stream p50", e50 * 1e3, higher_is_better=False,
               note=f"p99 {f99 * 1e3:.1f} vs {e99 * 1e3:.1f} ms, {n} changes each"),
        Figure("mTLS handshakes/s, federated peer (server CPU)", fed_hs, "hs/s",
               "same server, peer of its own trust domain", local_hs),
    ]  # fmt: skip
