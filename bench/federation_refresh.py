"""Federation through bundle endpoints: what a refresh costs, and how long a remote bundle change
takes to reach a connected workload stream of the other trust domain.

Two CAs run in this process (a.test serving an https_spiffe bundle endpoint with a 1 s refresh
hint; b.test with a relationship to it, refresh bounds 0.2-1 s) and an agent of b.test whose entry
federates with a.test.

* **refresh** (ms): ``FederationRefresher.refresh`` of a.test at b.test: a new TLS session to the
  endpoint checked in the handshake (SPIFFE ID, chain to the bundle held), the GET, the document
  checks and the store writes (bundle record, status). Baseline: the fetch alone
  (``BundleFetcher.fetch``: handshake + GET).
* **remote change -> stream** (ms): a.test prepares a JWT key (its bundle changes and its sequence
  grows, as a root prepare does) and the clock runs until b.test's workload JWT bundles stream
  (FetchJWTBundles) carries the new key: the
  refresher's next poll (at the hint), the checks, the entries long-poll woken, the agent, the
  stream. Baseline: the refresh hint, the bound the poll puts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench._harness import Figure, percentiles
from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.config import AgentConfig
from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.federation_config import BundleEndpointSettings, FederationSettings
from s2s.ca.lifecycle import LifecycleKind
from s2s.core.bundle import BundleSet
from s2s.core.federation import EndpointProfile, RefreshPolicy
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import TrustDomain
from s2s.verifier.workload_client import WorkloadApiClient

A, B = TrustDomain("a.test"), TrustDomain("b.test")
HINT = dt.timedelta(seconds=1)
FEDERATION = FederationSettings(
    bundle_endpoint=BundleEndpointSettings(address="127.0.0.1:0", refresh_hint=HINT),
    refresh=RefreshPolicy(minimum=dt.timedelta(seconds=0.2), maximum=HINT),
)


@contextlib.asynccontextmanager
async def _ca(base: Path, td: TrustDomain) -> AsyncIterator[CaServer]:
    data_dir = base / str(td)
    await init_trust_domain(data_dir, str(td))
    options = ServeOptions(
        data_dir=data_dir, listen="127.0.0.1:0", json_logs=False, log_level="ERROR",
        socket_path=data_dir / "admin.sock", federation=FEDERATION,
    )  # fmt: skip
    server = await CaServer.open(options)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield server
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await server.close()


async def _measure(tmp: Path, n_refresh: int, n_changes: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"refresh": [], "fetch": [], "stream": []}
    async with _ca(tmp, A) as ca_a, _ca(tmp, B) as ca_b:
        endpoint = ca_a.bundle_endpoint
        assert endpoint is not None
        relationships = ca_b.federation.relationships
        rel = await relationships.create(
            A, url=f"https://127.0.0.1:{endpoint.port}/", profile=EndpointProfile.HTTPS_SPIFFE,
            endpoint_spiffe_id=A.id("/s2s/bundle-endpoint"), bundle=ca_a.authority.bundle,
        )  # fmt: skip
        fetcher = ca_b.federation._fetcher  # the fetch alone, for the baseline
        for _ in range(n_refresh):
            start = time.perf_counter()
            await ca_b.federation.refresh(A)
            out["refresh"].append(time.perf_counter() - start)
            trust = BundleSet.of((await ca_b.federated_bundles.get(A)).bundle)  # type: ignore[union-attr]
            start = time.perf_counter()
            await fetcher.fetch(rel, trust)
            out["fetch"].append(time.perf_counter() - start)

        token = await ca_b.registry.generate_join_token()
        await ca_b.registry.create_entry(
            spiffe_id=B.id("/fed"), parent_id=token.agent_id,
            selectors=[Selector.parse(f"unix:uid:{os.getuid()}")], federates_with=[A],
        )  # fmt: skip
        bundle = tmp / "b-bundle.pem"
        bundle.write_bytes(ca_b.authority.bundle.x509_pem())
        config = AgentConfig(
            trust_domain=B, ca_urls=(f"https://127.0.0.1:{ca_b.port}",), data_dir=tmp / "agent",
            trust_bundle=bundle, join_token=token.token, socket=tmp / "b.sock", log_level="ERROR",
        )  # fmt: skip
        agent = Agent(config, tuning=AgentTuning(first_sync_timeout=10))
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(agent, stop))
        await asyncio.wait_for(agent.ready.wait(), 30)
        lifecycle = ca_a.services.lifecycle
        assert lifecycle is not None
        try:
            async with WorkloadApiClient(str(config.socket)) as client:
                stream = client.watch_jwt_bundles()
                await anext(stream)
                for _ in range(n_changes):
                    await asyncio.sleep(0.3)
                    start = time.perf_counter()
                    await lifecycle.prepare(LifecycleKind.JWT)
                    kids = {a.kid for a in ca_a.authority.bundle.jwt_authorities}
                    while True:
                        bundles = await asyncio.wait_for(anext(stream), 10)
                        held = bundles.get(A)
                        if held is not None and {a.kid for a in held.jwt_authorities} >= kids:
                            break
                    out["stream"].append(time.perf_counter() - start)
                    await lifecycle.activate(LifecycleKind.JWT, None)  # room for the next one
                await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        finally:
            stop.set()
            await task
    return out


def run(quick: bool) -> list[Figure]:
    n_refresh, n_changes = (20, 5) if quick else (200, 30)
    with tempfile.TemporaryDirectory(prefix="s2s-bench-fedref-", dir="/tmp") as name:
        samples = asyncio.run(_measure(Path(name), n_refresh, n_changes))
    r50, r99 = percentiles(samples["refresh"], 50, 99)
    f50, f99 = percentiles(samples["fetch"], 50, 99)
    s50, s99 = percentiles(samples["stream"], 50, 99)
    hint_ms = HINT.total_seconds() * 1e3
    return [
        Figure("federation refresh (https_spiffe) p50", r50 * 1e3, "ms",
               "the fetch alone (handshake + GET) p50", f50 * 1e3, higher_is_better=False,
               note=f"p99 {r99 * 1e3:.1f} vs {f99 * 1e3:.1f} ms, {n_refresh} each"),
        Figure("remote bundle change -> other TD's stream p50", s50 * 1e3, "ms",
               "the refresh hint", hint_ms, higher_is_better=False,
               note=f"p99 {s99 * 1e3:.0f} ms, {n_changes} changes, bounds 0.2-1 s"),
    ]  # fmt: skip
