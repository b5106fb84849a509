"""Prometheus metrics of the CA, on a registry of its own (two CAs in one test process never clash).

Counters and histograms are updated by the HTTP adapter around each service call; gauges that
describe state (authority expiry, entries, agents) are refreshed by ``app.py`` from the services.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE", "CaMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class CaMetrics:
    """The CA metrics. ``kind`` labels: x509, jwt, agent; ``reason`` labels are error codes."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.issued = Counter("s2s_ca_svids_issued", "SVIDs issued, by kind", ["kind"], registry=r)
        self.issue_latency = Histogram(
            "s2s_ca_issue_seconds",
            "Time to serve one issuance request (a batch counts once), by kind",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "s2s_ca_request_errors", "Requests refused or failed, by reason", ["reason"], registry=r
        )
        self.requests = Counter(
            "s2s_ca_http_requests",
            "HTTP requests, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.authority_expiry = Gauge(
            "s2s_ca_authority_not_after_seconds",
            "Expiry (Unix time) of each authority this CA knows, by kind and id",
            ["kind", "authority_id"],
            registry=r,
        )
        self.entries = Gauge("s2s_ca_registration_entries", "Registration entries", registry=r)
        self.agents = Gauge("s2s_ca_agents", "Attested agents", ["state"], registry=r)
        self.long_polls = Gauge(
            "s2s_ca_entry_long_polls", "Agents waiting in GET /v1/agent/entries", registry=r
        )
        self.ready = Gauge("s2s_ca_ready", "1 when the CA can issue", registry=r)

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

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
