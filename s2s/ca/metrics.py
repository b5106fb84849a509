"""Prometheus metrics of the CA, on a registry of its own (two CAs in one test process never clash).

Counters and histograms are updated by the HTTP adapters around each service call (the public
HTTPS API and the admin socket count into separate families), and by the store wrapper
(``store_metrics``) around each store call; gauges that describe state (authority expiry, entries,
agents, root rotation) are refreshed by ``app.py`` from the services; the CRL gauges are read from
the publisher at scrape time. The process's own metrics (``process_*``, ``python_*``) and
``s2s_ca_build_info`` are on the same registry. ``deploy/monitoring/README.md`` says what each
metric means and which alert uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from s2s.ca.crl_values import CrlSet
from s2s.ca.oauth_metrics import OAuthMetrics
from s2s.verifier.metrics import add_process_metrics

__all__ = ["CONTENT_TYPE", "ROTATION_PHASES", "CaMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROTATION_PHASES = ("idle", "prepared", "activated", "done")


@dataclass
class CaMetrics:
    """The CA metrics. ``kind`` labels: x509, jwt, agent; ``reason`` labels are error codes."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        add_process_metrics(r, "s2s_ca")
        self.issued = Counter(
            "s2s_ca_svids_issued",
            "SVIDs signed by this replica, by kind (x509: workload X509-SVIDs, jwt: JWT-SVIDs, "
            "agent: agent SVIDs at attestation or renewal)",
            ["kind"],
            registry=r,
        )
        self.issue_latency = Histogram(
            "s2s_ca_issue_seconds",
            "Time to serve one issuance request over HTTPS (a batch counts once), by kind",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "s2s_ca_request_errors",
            "HTTPS API requests (and items of batch requests) refused or failed, by error code",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "s2s_ca_http_requests",
            "HTTPS API requests (agents, workloads, bundle and CRL readers), by route and status",
            ["route", "status"],
            registry=r,
        )
        self.admin_requests = Counter(
            "s2s_ca_admin_requests",
            "Admin socket requests (s2s-ca commands), by route, status and error code "
            "(empty when it succeeded)",
            ["route", "status", "error"],
            registry=r,
        )
        self.attestations = Counter(
            "s2s_ca_agent_attestations",
            "Join-token attestations of agents, by result: ok or the error code "
            "(attestation_failed: unknown, used or expired token)",
            ["result"],
            registry=r,
        )
        self.authority_expiry = Gauge(
            "s2s_ca_authority_not_after_timestamp_seconds",
            "Expiry (Unix time) of each authority this CA knows, by kind and id",
            ["kind", "authority_id"],
            registry=r,
        )
        self.entries = Gauge(
            "s2s_ca_registration_entries", "Registration entries in the store", registry=r
        )
        self.agents = Gauge(
            "s2s_ca_agents", "Attested agents in the store, by state (active, banned)", ["state"],
            registry=r,
        )  # fmt: skip
        self.long_polls = Gauge(
            "s2s_ca_entry_long_polls", "Agents waiting in GET /v1/agent/entries", registry=r
        )
        self.ready = Gauge(
            "s2s_ca_ready",
            "1 while this replica serves (its authority can sign, its HTTPS certificate is "
            "current and it reaches its store: what /readyz says), 0 otherwise",
            registry=r,
        )
        self.rotation_phase = Gauge(
            "s2s_ca_root_rotation_phase",
            "1 for the phase the root rotation is in (idle: never ran; prepared: new root "
            "published, waiting for agents; activated: signing under the new root, old root held; "
            "done), 0 for the others",
            ["phase"],
            registry=r,
        )
        self.rotation_since = Gauge(
            "s2s_ca_root_rotation_phase_start_timestamp_seconds",
            "When (Unix time) the root rotation entered its current phase (0 when idle)",
            registry=r,
        )
        self.rotation_hold = Gauge(
            "s2s_ca_root_rotation_hold_seconds",
            "How long an activated rotation keeps the old root after the last replica switched "
            "(the longest SVID lifetime plus the clock-skew backdate)",
            registry=r,
        )
        self.store_latency = Histogram(
            "s2s_ca_store_operation_seconds",
            "Time of one store call (SQLite or etcd), by backend and operation; "
            "change waits (wait_for_change) are not timed",
            ["backend", "operation"],
            buckets=_STORE_BUCKETS,
            registry=r,
        )
        self.oauth = OAuthMetrics(r)  # s2s_ca_oauth_*, counted by the token service's routes
        self.store_errors = Counter(
            "s2s_ca_store_errors",
            "Store calls that failed because the backend did (unreachable, timed out, "
            "internal error), by backend, operation and error code; not-found and conflict "
            "answers are not errors",
            ["backend", "operation", "code"],
            registry=r,
        )

    @contextmanager
    def time_issue(self, kind: str) -> Iterator[None]:
        """Observe the latency of one issuance request of ``kind``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.issue_latency.labels(kind=kind).observe(time.perf_counter() - start)

    def count_issued(self, kind: str, n: int = 1) -> None:
        self.issued.labels(kind=kind).inc(n)

    def count_error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def count_attestation(self, result: str) -> None:
        self.attestations.labels(result=result).inc()

    def set_authorities(self, expiries: Mapping[tuple[str, str], float]) -> None:
        """Replace the authority expiry gauges: ``{(kind, id): not_after_unix}``."""
        self.authority_expiry.clear()
        for (kind, authority_id), not_after in expiries.items():
            self.authority_expiry.labels(kind=kind, authority_id=authority_id).set(not_after)

    def set_counts(self, *, entries: int, agents: Mapping[str, int]) -> None:
        self.entries.set(entries)
        self.agents.clear()
        for state, n in agents.items():
            self.agents.labels(state=state).set(n)

    def set_rotation(self, phase: str, since: datetime | None, hold_seconds: float) -> None:
        """The root rotation's phase (one of :data:`ROTATION_PHASES`) and when it began."""
        for name in ROTATION_PHASES:
            self.rotation_phase.labels(phase=name).set(1 if name == phase else 0)
        self.rotation_since.set(0 if since is None else since.timestamp())
        self.rotation_hold.set(hold_seconds)

    def track_crls(self, current: Callable[[], CrlSet], now: Callable[[], datetime]) -> None:
        """Export the CRLs ``current()`` returns at scrape time, per issuer, aged by ``now()``."""
        self.registry.register(_CrlCollector(current, now))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _CrlCollector(Collector):
    """``s2s_ca_crl_*{issuer}``, read from the publisher's current set at scrape time."""

    def __init__(self, current: Callable[[], CrlSet], now: Callable[[], datetime]) -> None:
        self._current = current
        self._now = now

    def describe(self) -> Iterable[Metric]:
        return self._families(CrlSet(), 0.0)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._current(), self._now().timestamp())

    @staticmethod
    def _families(crls: CrlSet, now: float) -> list[Metric]:
        age = GaugeMetricFamily(
            "s2s_ca_crl_age_seconds",
            "Seconds since the thisUpdate of the CRL this CA publishes for each issuer "
            "(thisUpdate is backdated by the clock-skew allowance); grows past half the CRL "
            "validity only when rebuilding fails",
            labels=["issuer"],
        )
        next_update = GaugeMetricFamily(
            "s2s_ca_crl_next_update_timestamp_seconds",
            "nextUpdate (Unix time) of each issuer's CRL: verifiers that require a fresh CRL "
            "refuse that issuer's certificates after it",
            labels=["issuer"],
        )
        entries = GaugeMetricFamily(
            "s2s_ca_crl_entries", "Revoked serials listed in each issuer's CRL", labels=["issuer"]
        )
        for crl in crls.crls:
            issuer = [crl.authority_id]
            age.add_metric(issuer, now - crl.this_update.timestamp())
            next_update.add_metric(issuer, crl.next_update.timestamp())
            entries.add_metric(issuer, crl.entries)
        return [age, next_update, entries]
