"""The CA's composition root: builds every object once and runs the process.

``s2s-ca init`` is ``bootstrap.init_data_dir``. ``CaServer.open``
builds config, store, KEK, authority, registry, issuer, attestor and both servers (HTTPS with the
CA's own SVID, ``server_tls``; the admin Unix socket); ``CaServer.run`` runs the loops (authority
rotation and TLS reload, pruning on the replica holding the housekeeping lease (``housekeeping``),
metrics) under one ``asyncio.TaskGroup`` (``loops``) until
``stop`` is set. ``serve_forever`` adds logging and signals.
Nothing else in ``s2s.ca`` constructs its collaborators.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from s2s.ca.admin import admin_app, bind_admin_socket, ensure_admin_socket_free
from s2s.ca.agent_sync import AgentSync
from s2s.ca.attestation import AgentAttestor
from s2s.ca.audit import AUDIT_FIELDS, AuditLog
from s2s.ca.authority import Authority
from s2s.ca.bundle_endpoint import BundleEndpoint
from s2s.ca.client import ADMIN_SOCKET_NAME
from s2s.ca.config import CaConfig, ServerLimits
from s2s.ca.crl import CrlPublisher
from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.federation import FederationRelationships
from s2s.ca.federation_config import FederationSettings
from s2s.ca.federation_fetch import BundleFetcher
from s2s.ca.federation_refresher import FederationRefresher
from s2s.ca.housekeeping import Housekeeping, HousekeepingSettings, Leadership, SoleReplica
from s2s.ca.http import public_app
from s2s.ca.http_guard import ConnectionGuard, GuardedSite, LongPollSlots
from s2s.ca.http_services import ApiServices
from s2s.ca.issuance import Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.lifecycle import AuthorityLifecycle
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.loops import every, retrying, run_loops
from s2s.ca.metrics import CaMetrics
from s2s.ca.oauth_clients import ClientRegistry
from s2s.ca.oauth_keys import TokenKeyRing
from s2s.ca.oauth_service import TokenService
from s2s.ca.registry import Registry
from s2s.ca.revocations import RevocationService
from s2s.ca.root_rotation import STATE_KEY, Phase, RootRotation, RotationState
from s2s.ca.server_tls import ServerTls
from s2s.ca.store_config import StoreSettings, open_ca_store
from s2s.ca.store_health import StoreHealth
from s2s.ca.store_metrics import MeteredStore
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, S2SError, Unavailable
from s2s.core.x509svid import X509Svid
from s2s.fd_limit import AcceptFailures, log_fd_limit, raise_fd_limit
from s2s.log import F, configure_logging
from s2s.store.base import Store
from s2s.store.etcd_election import etcd_election
from s2s.store.records import Topic

__all__ = [
    "CaServer",
    "ServeOptions",
    "fit_descriptors",
    "issuer_hosts",
    "run",
    "serve_forever",
]

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT: Final = 5.0
LINGERING_TIME: Final = 1.0  # reading the rest of a refused body (aiohttp's default: 10 s)
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``s2s-ca serve`` was asked to do (flags and environment, parsed at the edge)."""

    data_dir: Path
    listen: str = "127.0.0.1:8443"
    replica_name: str = "ca-0"
    socket_path: Path | None = None
    log_level: str = "INFO"
    json_logs: bool = True
    tick: float = 5.0  # longest sleep of the authority loop (seconds)
    prune_interval: float = 60.0
    metrics_interval: float = 15.0
    config_overrides: dict[str, Any] = field(default_factory=dict)
    store: StoreSettings = field(default_factory=StoreSettings)  # default: SQLite in data_dir
    limits: ServerLimits = field(default_factory=ServerLimits)  # what one HTTPS client may hold
    federation: FederationSettings = field(default_factory=FederationSettings)  # [federation]
    housekeeping: HousekeepingSettings | None = None  # [housekeeping]; None: prune_interval
    # (setting, value, source: "flag --x", "env S2S_CA_X", "file PATH", "default"), logged at start
    settings: tuple[tuple[str, str, str], ...] = ()

    @property
    def admin_socket(self) -> Path:
        return self.socket_path or self.data_dir / ADMIN_SOCKET_NAME

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host or int(port) > 65535:
            raise InvalidConfig(f"--listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)


# ---- s2s-ca serve -------------------------------------------------------------------------


def fit_descriptors(limits: ServerLimits) -> ServerLimits:
    """``limits`` within this process's descriptor limit, first raised towards its hard limit
    (``raise_fd_limit``, logged as ``ca.fd_limit``; ``ServerLimits.within``): past it the CA
    could not even accept its operator."""
    raised = raise_fd_limit()
    log_fd_limit(log, "ca.fd_limit", raised)
    soft = raised.after
    if soft == resource.RLIM_INFINITY:
        return limits
    fitted = limits.within(soft)
    if fitted != limits:
        log.warning("ca.http.limits_lowered", extra={F.COUNT: fitted.max_connections})
    return fitted


class CaServer:
    """One running CA replica: the objects, the servers and the loops."""

    def __init__(self, options: ServeOptions, *, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.metrics = CaMetrics()
        self._store: Store | None = None
        self._runners: list[web.AppRunner] = []
        self._tls = ServerTls(clock=clock)
        self.ssl_context = self._tls.context
        self.port = 0
        self._closing = asyncio.Event()
        self._admin_bound = False
        self.guard = ConnectionGuard(fit_descriptors(options.limits))
        self._issuer_hosts: tuple[str, ...] = ()
        self.bundle_endpoint: BundleEndpoint | None = None
        self.housekeeping: Housekeeping | None = None
        self.store_health: StoreHealth | None = None

    @classmethod
    async def open(cls, options: ServeOptions, *, clock: Clock | None = None) -> CaServer:
        """Build everything and start listening; raises ``S2SError`` on a bad data dir."""
        server = cls(options, clock=clock or SystemClock())
        try:
            await server._build()
            await server._listen()
        except BaseException:
            await server.close()
            raise
        return server

    async def _build(self) -> None:
        ensure_admin_socket_free(self.options.admin_socket)
        opened, kek, td = await open_ca_store(self.options.data_dir, self.options.store)
        backend = "etcd" if self.options.store.is_etcd else "sqlite"
        store = MeteredStore(opened, self.metrics, backend=backend)  # s2s_ca_store_*
        self._store = store
        self.store_health = StoreHealth(
            store=store, clock=self.clock, registry=self.metrics.registry
        )
        self.housekeeping = self._housekeeping(opened)
        config = CaConfig(
            trust_domain=td,
            data_dir=self.options.data_dir,
            replica_name=self.options.replica_name,
            **self.options.config_overrides,
        )
        self._issuer_hosts = issuer_hosts(config.jwt_issuer, config.oauth_issuer)
        audit = AuditLog()
        self.authority = Authority(config=config, store=store, kek=kek, clock=self.clock)
        await self.authority.start()
        self.live_revocations = LiveRevocations(store=store)  # registry + issuer refuse revoked
        await self.live_revocations.refresh()
        self.registry = Registry(
            config=config, store=store, clock=self.clock, audit=audit,
            revocations=self.live_revocations,
        )  # fmt: skip
        self.issuer = Issuer(
            config=config,
            authority=self.authority,
            registry=self.registry,
            store=store,
            clock=self.clock,
            audit=audit,
            revocations=self.live_revocations,
        )
        self.crls = CrlPublisher(
            config=config, store=store, kek=kek, clock=self.clock,
            revocations=self.live_revocations,
        )  # fmt: skip
        await self.crls.refresh()
        self.metrics.track_crls(lambda: self.crls.current, self.clock.now)  # s2s_ca_crl_*
        self.revocations = RevocationService(
            config=config, store=store, registry=self.registry, live=self.live_revocations,
            clock=self.clock, audit=audit, on_change=self.crls.refresh,
            on_authority_revoked=self._authority_step,  # sign with a fresh intermediate at once
        )  # fmt: skip
        self.attestor = AgentAttestor(
            authority=self.authority, registry=self.registry, issuer=self.issuer, audit=audit
        )
        self.oauth = await self._token_service(config, store, kek, audit)
        self.federated_bundles = FederatedBundles(
            store=store, clock=self.clock, trust_domain=td, audit=audit
        )
        self.federation = self._federation(config, store, audit)
        self.services = ApiServices(
            authority=self.authority,
            registry=self.registry,
            attestor=self.attestor,
            issuer=self.issuer,
            metrics=self.metrics,
            readiness=self.readiness,
            closing=self._closing,
            revocations=self.revocations,
            crls=self.crls,
            long_polls=LongPollSlots(self.guard.limits.max_long_polls),
            jwt_issuer=config.jwt_issuer,
            oauth=self.oauth,
            federation=self.federation,
            federated_bundles=self.federated_bundles,
            store_health=self.store_health,
            **self._authority_services(config, store, audit),
        )
        await self.reload_tls(force=True)

    def _housekeeping(self, opened: Store) -> Housekeeping:
        """The once-per-cluster jobs (pruning), under an etcd lease when the store is etcd."""
        settings = self.options.housekeeping or HousekeepingSettings(
            interval=self.options.prune_interval
        )
        name = self.options.replica_name
        election = etcd_election(opened, "housekeeping", holder=name, ttl=settings.lease_ttl)
        leadership: Leadership = election if election is not None else SoleReplica(name)
        return Housekeeping(
            leadership=leadership, replica=name, jobs={"prune": self._prune_job},
            interval=settings.interval, registry=self.metrics.registry,
        )  # fmt: skip

    def _federation(self, config: CaConfig, store: Store, audit: AuditLog) -> FederationRefresher:
        """Federation relationships and their refresher; the bundle endpoint when configured."""
        settings = self.options.federation
        td = config.trust_domain
        bundles = self.federated_bundles  # the same object the agents' long-poll reads
        if settings.bundle_endpoint is not None:
            self.bundle_endpoint = BundleEndpoint(
                settings=settings.bundle_endpoint, bundle=lambda: self.authority.bundle,
                issue=lambda sid: self.issuer.issue_server_svid(spiffe_id=sid),
                signer=lambda: self.authority.x509_signer.certificate,
                spiffe_id=settings.bundle_endpoint.endpoint_id(td), clock=self.clock,
            )  # fmt: skip
        return FederationRefresher(
            relationships=FederationRelationships(
                store=store, clock=self.clock, trust_domain=td, bundles=bundles, audit=audit
            ),
            bundles=bundles,
            fetcher=BundleFetcher(clock=self.clock, web_ca_file=settings.web_ca_file),
            own_bundle=lambda: self.authority.bundle, clock=self.clock, policy=settings.refresh,
            registry=self.metrics.registry,
        )  # fmt: skip

    async def _token_service(
        self, config: CaConfig, store: Store, kek: KeyEncryptionKey, audit: AuditLog
    ) -> TokenService | None:
        """The OAuth token service, when an issuer is configured (oauth_issuer or jwt_issuer)."""
        issuer = config.token_service_issuer
        if issuer is None:
            return None
        keys = TokenKeyRing(store=store, kek=kek, clock=self.clock, ttl=config.jwt_key_ttl)
        await keys.start()
        return TokenService(
            issuer=issuer,
            clients=ClientRegistry(
                store=store, clock=self.clock, trust_domain=config.trust_domain, audit=audit
            ),
            keys=keys, bundle=lambda: self.authority.bundle, revocations=self.live_revocations,
            revocation_service=self.revocations, clock=self.clock, ttl=config.access_token_lifetime,
            used_marks=store,
        )  # fmt: skip

    def _authority_services(
        self, config: CaConfig, store: Store, audit: AuditLog
    ) -> dict[str, Any]:
        """Authority lifecycle, root rotation and the agents' view of both (ApiServices fields)."""
        lifecycle = AuthorityLifecycle(
            authority=self.authority, store=store, clock=self.clock,
            replica_name=config.replica_name, revocations=self.revocations, audit=audit,
        )  # fmt: skip
        return {
            "lifecycle": lifecycle,
            "agent_sync": AgentSync(
                store=store,
                authority=self.authority,
                registry=self.registry,
                lifecycle=lifecycle,
                federated=self.federated_bundles,
                health=self.store_health,
            ),
            "root_rotation": RootRotation(
                config=config,
                store=store,
                authority=self.authority,
                clock=self.clock,
                audit=audit,
                federation_lead=self._federation_lead(),
            ),
        }

    async def _listen(self) -> None:
        host, port = self.options.host_port()
        public = web.AppRunner(
            public_app(self.services, guard=self.guard),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=self.guard.limits.keepalive_timeout,
            lingering_time=LINGERING_TIME,
        )
        await public.setup()
        self._runners.append(public)
        site = GuardedSite(public, host, port, ssl_context=self.ssl_context, guard=self.guard)
        try:
            await site.start()
        except OSError as exc:
            raise InvalidConfig(f"cannot listen on {self.options.listen}: {exc.strerror}") from exc
        self.port = site.port
        if self.bundle_endpoint is not None:
            await self.bundle_endpoint.start()
        admin = web.AppRunner(
            admin_app(self.services),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await admin.setup()
        self._runners.append(admin)
        sock = bind_admin_socket(self.options.admin_socket)
        self._admin_bound = True
        await web.SockSite(admin, sock).start()
        # s2s_ca_ready says what /readyz says, at every scrape (a store lost, a shutdown)
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        log.info(
            "ca.started",
            extra={
                F.TRUST_DOMAIN: str(self.authority.trust_domain),
                F.ADDRESS: f"{host}:{self.port}",
                F.SOCKET: str(self.options.admin_socket),
            },
        )

    @property
    def server_svid(self) -> X509Svid:
        """The SVID the HTTPS listener presents now."""
        svid = self._tls.svid
        if svid is None:
            raise Unavailable("the CA has no server certificate yet")
        return svid

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the authority can sign and the HTTPS certificate is current."""
        if self._closing.is_set():
            return False, "shutting down"
        if not self.authority.ready:
            return False, "authority not started"
        if self.store_health is not None and not self.store_health.up:
            return False, self.store_health.problem()
        svid = self._tls.svid
        if svid is None or svid.not_after <= self.clock.now():
            return False, "no current server certificate"
        return True, ""

    async def reload_tls(self, *, force: bool = False) -> bool:
        """Follow the bundle's roots (added and removed) for client certificates, and reissue
        the server SVID at half-life or under a new intermediate; new handshakes see both."""
        return await self._tls.reload(self.authority, self._issue_server_svid, force=force)

    async def _issue_server_svid(self) -> X509Svid:
        return await self.issuer.issue_server_svid(dns_names=self._dns_names())

    def _dns_names(self) -> tuple[str, ...]:
        """DNS names of the HTTPS certificate: the issuers' hosts (so OAuth and OIDC clients,
        which check a host name, can verify the CA with the bundle) and localhost on loopback."""
        host, _port = self.options.host_port()
        names = list(self._issuer_hosts)
        if host in _LOOPBACK and "localhost" not in names:
            names.append("localhost")
        return tuple(names)

    # -- loops --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop under one TaskGroup until ``stop`` is set or a loop crashes."""
        loops = {
            "authority": self._authority_loop(),
            **self._housekeeping_loops(),
            "revocations": self._revocation_loop(),
            "store_health": self._store_health_loop(),
            "metrics": every(self.options.metrics_interval, self.refresh_gauges),
            "registry": retrying("registry", self._follow_registry),
            "federation": retrying("federation", self.federation.run),
            **self._endpoint_loop(),
        }
        if self.oauth is not None:  # the OAuth client set in memory, following the store
            loops["oauth_clients"] = retrying("oauth_clients", self.oauth.clients.follow)
        await run_loops(loops, stop)

    async def _store_health_loop(self) -> None:
        assert self.store_health is not None
        await self.store_health.run()

    def _housekeeping_loops(self) -> dict[str, Any]:
        assert self.housekeeping is not None
        return self.housekeeping.loops()

    def _federation_lead(self) -> timedelta:
        """How long a root rotation waits after prepare when a bundle endpoint is served: three
        refresh hints, so federated trust domains hold the new root before anything chains to
        it (SPIFFE_Federation.md 4.1 recommends 3-5)."""
        endpoint = self.options.federation.bundle_endpoint
        return timedelta(0) if endpoint is None else 3 * endpoint.refresh_hint

    def _endpoint_loop(self) -> dict[str, Any]:
        """The bundle endpoint's credential renewal (its SVID, or its changed files)."""
        endpoint = self.bundle_endpoint
        if endpoint is None:
            return {}

        async def reload() -> None:
            await endpoint.reload()

        return {"bundle_endpoint": every(self.options.tick, reload)}

    async def _authority_loop(self) -> None:
        assert self._store is not None
        revision = await self._store.revision(Topic.AUTHORITIES)
        while True:
            await retrying("authority", self._authority_step)
            wait = (self.authority.next_rotation_check() - self.clock.now()).total_seconds()
            revision = await self._store.wait_for_change(
                Topic.AUTHORITIES, revision, min(max(wait, 0.05), self.options.tick)
            )

    async def _follow_registry(self) -> None:
        """Keep the registry's in-memory agent and entry snapshots current (agent calls then
        need no store round trip); a store outage is retried like the other loops."""
        try:
            await self.registry.follow()
        except ExceptionGroup as group:
            first = group.exceptions[0]
            if isinstance(first, Unavailable):
                raise first from None
            raise

    async def _authority_step(self) -> None:
        changed = await self.authority.rotate_if_due()
        if self.oauth is not None:
            await self.oauth.keys.rotate_if_due()
        await self.authority.refresh_bundle()
        await self.reload_tls(force=changed)

    async def _revocation_loop(self) -> None:
        """Follow the store's revocations (admin API, other replicas) and keep the CRLs fresh:
        rebuilt on every change, for new issuers (checked every tick) and before nextUpdate."""
        while True:
            await retrying("crl", self.refresh_crls)
            wait = (self.crls.next_refresh() - self.clock.now()).total_seconds()
            version = self.live_revocations.current().version
            timeout = min(max(wait, 0.05), self.options.tick)

            async def follow(version: int = version, timeout: float = timeout) -> None:
                await self.live_revocations.wait(version, timeout)

            await retrying("revocations", follow)

    async def refresh_crls(self) -> None:
        await self.crls.refresh()

    async def _prune_job(self) -> None:
        await self.prune()  # looked up at each run, so a test may replace ``prune``

    async def prune(self) -> None:
        assert self._store is not None
        result = await self._store.prune(self.clock.now())
        if result.total:
            log.info("ca.pruned", extra={F.COUNT: result.total})

    async def refresh_gauges(self) -> None:
        authorities = await self.authority.list_authorities()
        self.metrics.set_authorities(
            {(str(a.kind), a.id): a.not_after.timestamp() for a in authorities}
        )
        entries = await self.registry.count_entries()  # the snapshot's size: no store listing
        agents = await self.registry.list_agents()
        banned = sum(1 for a in agents if a.banned)
        self.metrics.set_counts(
            entries=entries, agents={"active": len(agents) - banned, "banned": banned}
        )
        await self._rotation_gauges()

    async def _rotation_gauges(self) -> None:
        assert self._store is not None
        raw = await self._store.get_state(STATE_KEY)
        try:
            state = None if raw is None else RotationState.decode(raw)
        except InvalidConfig as exc:  # said by rotate-root; the gauges must not stop the CA
            log.warning("ca.metrics.rotation_unreadable", extra={F.ERROR: str(exc)})
            return
        since = None
        if state is not None:
            since = {
                Phase.PREPARED: state.started_at,
                Phase.ACTIVATED: state.activated_at,
                Phase.DONE: state.finished_at,
            }[state.phase]
        phase = "idle" if state is None else state.phase.value
        rotation = self.services.root_rotation
        hold = 0.0 if rotation is None else rotation.hold.total_seconds()
        self.metrics.set_rotation(phase, since, hold)

    async def close(self) -> None:
        """Stop the servers (in-flight requests get ``SHUTDOWN_TIMEOUT``) and close the store."""
        self.metrics.ready.set(0)
        self._closing.set()
        if self.housekeeping is not None:  # hand the lease over now, not at its expiry
            await self.housekeeping.resign()
        if self.bundle_endpoint is not None:
            await self.bundle_endpoint.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._admin_bound:  # never remove the socket of another CA we refused to replace
            with contextlib.suppress(FileNotFoundError):
                self.options.admin_socket.unlink()
        if self._store is not None:
            await self._store.close()
            self._store = None


async def run(options: ServeOptions, stop: asyncio.Event, *, clock: Clock | None = None) -> None:
    """Open the CA, run it until ``stop`` is set, close it."""
    server = await CaServer.open(options, clock=clock)
    try:
        await server.run(stop)
    finally:
        await server.close()
        log.info("ca.stopped")


def serve_forever(options: ServeOptions) -> None:
    """``s2s-ca serve``: JSON logs, SIGTERM/SIGINT stop the CA cleanly."""
    configure_logging(
        level=options.log_level, json_format=options.json_logs, extra_fields=AUDIT_FIELDS
    )
    for name, value, source in options.settings:
        log.info("ca.setting", extra={F.SETTING: name, F.VALUE: value, F.SOURCE: source})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.set_exception_handler(AcceptFailures(log, "ca.accept_failed"))  # the admin socket
        await run(options, stop)

    try:
        asyncio.run(main())
    except* S2SError as group:
        raise group.exceptions[0] from None
    except* Exception as group:
        log.critical("ca.crashed", exc_info=group.exceptions[0])
        raise SystemExit(1) from None


def issuer_hosts(*issuers: str | None) -> tuple[str, ...]:
    """The host names of the configured issuer URLs, once each; IP literals are left out (a DNS
    name SAN cannot hold them)."""
    hosts: list[str] = []
    for issuer in issuers:
        host = urlsplit(issuer).hostname if issuer else None
        if host is None or host in hosts:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            hosts.append(host)
    return tuple(hosts)
