"""Prometheus metrics of the agent, on a registry of its own (two agents in one test process
never clash). The cache, node and Workload API server report through the small methods below;
``app.py`` serves :meth:`AgentMetrics.render` on ``/metrics``, with the process's own metrics
(``process_*``, ``python_*``), ``s2s_agent_build_info`` and the revocation feed's
``s2s_verifier_revocations_*{feed="agent"}`` on the same registry. ``deploy/monitoring/README.md``
says what each metric means and which alert uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from s2s.verifier.metrics import add_process_metrics

__all__ = ["CONTENT_TYPE", "AgentMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class AgentMetrics:
    """The agent metrics. ``kind`` labels: x509, jwt, agent; ``op`` labels are CA API calls."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        add_process_metrics(r, "s2s_agent")
        self.svids_held = Gauge(
            "s2s_agent_svids_held",
            "Unexpired X509-SVIDs held for workloads (one per entry when all is well)",
            registry=r,
        )
        self.entries = Gauge(
            "s2s_agent_registration_entries",
            "Registration entries this agent serves (parented by it)",
            registry=r,
        )
        self.federated_bundles = Gauge(
            "s2s_agent_federated_bundles",
            "Federated trust domains whose bundles this agent holds (those its entries federate "
            "with and the CA has a bundle for)",
            registry=r,
        )
        self.workload_svid_expiry = Gauge(
            "s2s_agent_workload_svid_earliest_not_after_timestamp_seconds",
            "Expiry (Unix time) of the workload X509-SVID that expires first (0: none held); "
            "the agent renews each at half its lifetime, so this stays far ahead of now",
            registry=r,
        )
        self.rotations = Counter(
            "s2s_agent_rotations",
            "SVIDs obtained (first issue or renewal), by kind",
            ["kind"],
            registry=r,
        )
        self.workload_calls = Counter(
            "s2s_agent_workload_api_calls",
            "Workload API calls, by method and gRPC code (PERMISSION_DENIED: the caller has "
            "no identity; health checks are not counted here)",
            ["method", "code"],
            registry=r,
        )
        self.workload_connections = Gauge(
            "s2s_agent_workload_api_connections", "Workload API connections open", registry=r
        )
        self.workload_connections_refused = Counter(
            "s2s_agent_workload_api_connections_refused",
            "Workload API connections refused, by reason (uid_limit, total_limit)",
            ["reason"],
            registry=r,
        )
        self.workload_connections_closed = Counter(
            "s2s_agent_workload_api_connections_closed",
            "Workload API connections closed or cut off by the agent, by reason "
            "(idle; caller_changed: its process is no longer the one that connected)",
            ["reason"],
            registry=r,
        )
        self.ca_errors = Counter(
            "s2s_agent_ca_errors",
            "Failed CA calls, by operation and error code",
            ["op", "code"],
            registry=r,
        )
        self.healthy = Gauge(
            "s2s_agent_healthy",
            "1 while every entry has a valid SVID and the agent SVID is valid",
            registry=r,
        )
        self.agent_svid_expiry = Gauge(
            "s2s_agent_svid_not_after_timestamp_seconds",
            "Expiry (Unix time) of the agent's own SVID (renewed at half its lifetime)",
            registry=r,
        )
        self.health_checks = Counter(
            "s2s_agent_health_checks",
            "gRPC health checks answered on the Workload API socket (s2s-agent healthcheck, "
            "probes), by status",
            ["status"],
            registry=r,
        )

    def observe_call(self, method: str, code: str) -> None:
        """The Workload API server's ``observe`` hook."""
        self.workload_calls.labels(method=method, code=code).inc()

    def observe_connection(self, event: str, reason: str) -> None:
        """The Workload API server's ``observe_connection`` hook."""
        counter = {
            "refused": self.workload_connections_refused,
            "closed": self.workload_connections_closed,
        }.get(event)
        if counter is not None:
            counter.labels(reason=reason).inc()

    def count_health_check(self, status: str) -> None:
        """The health service's ``observe`` hook."""
        self.health_checks.labels(status=status).inc()

    def count_rotation(self, kind: str, n: int = 1) -> None:
        if n:
            self.rotations.labels(kind=kind).inc(n)

    def count_ca_error(self, op: str, code: str) -> None:
        self.ca_errors.labels(op=op, code=code).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
