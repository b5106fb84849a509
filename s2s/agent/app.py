"""The agent's composition root: config -> node attestation -> SVID cache -> Workload API.

:class:`Agent` builds every object once and runs the loops (agent SVID renewal, entry sync,
rotation, bundle, health) under one ``asyncio.TaskGroup``; a loop that crashes stops the process
with a clear log line. :func:`run_agent` runs it until an event is set and :func:`serve_forever`
adds JSON logs and SIGTERM/SIGINT handling (``s2s-agent run``). Nothing else in ``s2s.agent``
constructs its collaborators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from s2s.agent.attestors.base import AttestorOptions
from s2s.agent.attestors.registry import build_attestor
from s2s.agent.ca_client import CaClient, RetryDelays
from s2s.agent.cache import SvidCache
from s2s.agent.config import AgentConfig
from s2s.agent.metrics import CONTENT_TYPE, AgentMetrics
from s2s.agent.node import AgentIdentity, NodeAttestor
from s2s.agent.revocations import RevocationFollower
from s2s.agent.revocations_api import DEFAULT_HEARTBEAT, RevocationsService
from s2s.agent.workload_api import WorkloadApiServer
from s2s.agent.workload_health import HealthService
from s2s.aio import within
from s2s.core.backoff import Backoff
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, S2SError
from s2s.etcd.channel import EtcdTls
from s2s.fd_limit import AcceptFailures, log_fd_limit, raise_fd_limit
from s2s.log import F, configure_logging
from s2s.verifier.feeds import DEFAULT_MAX_STALENESS, FeedMetrics, RevocationFeed
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.feeds_etcd import EtcdRevocationFeed

__all__ = ["Agent", "AgentTuning", "run_agent", "serve_forever"]

log = logging.getLogger(__name__)

FIRST_SYNC_TIMEOUT: Final = 10.0
FEED_SYNC_POLL: Final = 0.02  # seconds between looks at a feed that has not synced at start


@dataclass(frozen=True, slots=True)
class AgentTuning:
    """Loop timings (not user settings; tests shorten them)."""

    entries_wait: float = 30.0  # long-poll length
    bundle_interval: float = 30.0
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0
    health_interval: float = 1.0
    first_sync_timeout: float = FIRST_SYNC_TIMEOUT
    revocations_max_staleness: float = DEFAULT_MAX_STALENESS  # then ValidateJWTSVID fails closed
    revocations_heartbeat: float = DEFAULT_HEARTBEAT  # s2s.agent.v1.Revocations quiet-stream beat


class Agent:
    """One running agent. ``ready`` is set once the Workload API is serving."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        tuning: AgentTuning | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.tuning = tuning or AgentTuning()
        self.metrics = metrics or AgentMetrics()
        self.client = CaClient(
            urls=config.ca_urls, trust_domain=config.trust_domain, clock=self.clock
        )
        self.node = NodeAttestor(
            config=config, client=self.client, clock=self.clock, backoff=self._backoff()
        )
        self.cache: SvidCache | None = None
        self.revocations: RevocationFollower | None = None
        self.server: WorkloadApiServer | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port = 0
        self.ready = asyncio.Event()
        self._healthy: bool | None = None

    def _backoff(self) -> RetryDelays:
        policy = Backoff.full_jitter(
            initial=self.tuning.backoff_initial, cap=self.tuning.backoff_cap
        )
        return RetryDelays(policy)

    async def run(self) -> None:
        """Attest, start serving, then run every loop until cancelled."""
        identity = await self.node.start()
        self._on_identity(identity)
        feed = await self._revocation_feed()
        FeedMetrics(self.metrics.registry).track(feed, "agent")  # s2s_verifier_revocations_*
        cache = SvidCache(
            client=self.client,
            bundle=identity.bundle,
            clock=self.clock,
            on_unknown=self._recover,
            on_bundle=self.node.update_bundle,
            on_tainted=self.node.renew_if_signed_by,  # agent SVID under a tainted CA: renew now
            metrics=self.metrics,
            entries_wait=self.tuning.entries_wait,
            bundle_interval=self.tuning.bundle_interval,
            revocations=feed,  # ValidateJWTSVID refuses revoked tokens, fails closed when stale
        )
        self.cache = cache
        self.node.subscribe(self._on_identity)
        self.revocations = RevocationFollower(
            feed=feed, cache=cache, client=self.client, backoff=self._backoff()
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.node.run(), name="agent-svid")
            group.create_task(cache.run(), name="cache")
            group.create_task(self.revocations.run(), name="revocations")
            await self._first_sync(cache, feed)
            heartbeat = self.tuning.revocations_heartbeat
            await self._serve(cache, RevocationsService(feed, heartbeat=heartbeat))
            group.create_task(self._health_loop(cache), name="health")

    async def _revocation_feed(self) -> RevocationFeed:
        """etcd when ``revocations_etcd`` is set, else the CA long-poll over our own client."""
        config = self.config
        staleness = self.tuning.revocations_max_staleness
        if config.revocations_etcd:
            tls = None
            if config.revocations_etcd_ca is not None:
                tls = EtcdTls.from_files(
                    config.revocations_etcd_ca,
                    config.revocations_etcd_cert,
                    config.revocations_etcd_key,
                )
            return await EtcdRevocationFeed.connect(
                config.revocations_etcd,
                config.trust_domain,
                tls=tls,
                max_staleness=staleness,
                clock=self.clock,
            )
        return CaRevocationFeed(
            self.client, wait=self.tuning.entries_wait, max_staleness=staleness, clock=self.clock
        )

    async def _first_sync(self, cache: SvidCache, feed: RevocationFeed) -> None:
        """Give the cache a moment to fetch entries and SVIDs, and the revocation feed its first
        set (ValidateJWTSVID fails closed without one), so first callers are not refused. A feed
        that has already reported an error is not waited for: it keeps retrying on its own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.first_sync_timeout
        with contextlib.suppress(TimeoutError):
            await within(cache.synced.wait(), self.tuning.first_sync_timeout)
            while not cache.health()[0] and loop.time() < deadline:
                await within(
                    cache.wait_for_update(cache.version), max(deadline - loop.time(), 0.001)
                )
        while not feed.synced.is_set() and feed.last_error is None and loop.time() < deadline:
            await asyncio.sleep(FEED_SYNC_POLL)

    async def _serve(self, cache: SvidCache, revocations_api: RevocationsService) -> None:
        options = AttestorOptions(sha256_max_bytes=self.config.sha256_max_bytes)
        attestor = build_attestor(self.config.attestors, options)
        server = WorkloadApiServer(
            provider=cache,
            attestor=attestor,
            socket_path=str(self.config.socket),
            observe=self.metrics.observe_call,
            observe_connection=self.metrics.observe_connection,
            limits=self.config.workload_limits(),
            extensions=(  # the agent's revocations, for JWT-SVID verifiers; gRPC health
                revocations_api,
                HealthService(self.metrics.count_health_check),
            ),
        )
        await server.start()
        self.server = server
        self.metrics.workload_connections.set_function(lambda: server.open_connections)
        if self.config.metrics_listen is not None:
            await self._start_metrics(cache)
        self.ready.set()
        log.info(
            "agent.started",
            extra={
                F.SPIFFE_ID: str(self.node.identity.svid.spiffe_id),
                F.SOCKET: str(self.config.socket),
                F.COUNT: len(cache.state.items),
            },
        )

    async def _start_metrics(self, cache: SvidCache) -> None:
        assert self.config.metrics_listen is not None
        host, port = self.config.metrics_listen
        app = web.Application()

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_request: web.Request) -> web.Response:
            ok, why = cache.health()
            return web.json_response({"ready": ok, "message": why}, status=200 if ok else 503)

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        self._metrics_runner = runner
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise InvalidConfig(
                f"cannot listen on {host}:{port} for metrics: {exc.strerror}"
            ) from exc
        self.metrics_port = int(runner.addresses[0][1])

    async def _health_loop(self, cache: SvidCache) -> None:
        while True:
            ok, why = cache.health()
            agent_ok = self.node.identity.svid.not_after > self.clock.now()
            healthy = ok and agent_ok
            if healthy != self._healthy:
                level = logging.INFO if healthy else logging.WARNING
                reason = why or ("" if agent_ok else "the agent SVID has expired")
                log.log(level, "agent.health", extra={F.STATE: healthy, F.REASON: reason})
                self._healthy = healthy
            self.metrics.healthy.set(1 if healthy else 0)
            await asyncio.sleep(self.tuning.health_interval)

    async def _recover(self) -> None:
        await self.node.recover(self.node.identity.svid.serial)

    def _on_identity(self, identity: AgentIdentity) -> None:
        self.metrics.agent_svid_expiry.set(identity.svid.not_after.timestamp())
        if self.cache is not None:
            self.cache.set_bundle(identity.bundle)

    async def close(self) -> None:
        """Stop serving and close connections (the socket file is removed)."""
        self.ready.clear()
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        await self.client.close()


class _Shutdown(Exception):
    """Raised inside the TaskGroup to stop every loop."""


async def _raise_when(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Shutdown


def _first(group: BaseExceptionGroup[S2SError]) -> S2SError:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def run_agent(agent: Agent, stop: asyncio.Event) -> None:
    """Run ``agent`` until ``stop`` is set; its first ``S2SError`` (bad config, refused join
    token) is raised as itself, not as an exception group."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(agent.run(), name="agent")
            group.create_task(_raise_when(stop), name="stop")
    except* _Shutdown:
        pass
    except* S2SError as group:
        raise _first(group) from None
    finally:
        await agent.close()
        log.info("agent.stopped")


def serve_forever(config: AgentConfig) -> None:
    """``s2s-agent run``: logs as configured, SIGTERM/SIGINT stop the agent cleanly."""
    configure_logging(level=config.log_level, json_format=config.log_format == "json")
    for name, value, source in config.settings():  # the join token only as set/unset
        log.info("agent.setting", extra={F.SETTING: name, F.VALUE: value, F.SOURCE: source})
    log_fd_limit(log, "agent.fd_limit", raise_fd_limit())  # a few fds per workload connection

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.set_exception_handler(AcceptFailures(log, "agent.accept_failed"))
        await run_agent(Agent(config), stop)

    try:
        asyncio.run(main())
    except (S2SError, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.critical("agent.crashed", exc_info=exc)
        raise SystemExit(1) from None
