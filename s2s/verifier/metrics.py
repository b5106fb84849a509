"""Counters for peer verification: every rejection is counted under its reason.

``s2s_verifier_peer_rejections_total{reason=...}`` and ``s2s_verifier_peers_accepted_total``.
The default instance registers with prometheus-client's global registry on first use; pass
``registry=`` for an isolated one (tests, several verifiers in one process).

:func:`add_process_metrics` puts prometheus-client's process, platform and garbage collector
metrics (``process_*``, ``python_*``) and a ``<program>_build_info{version}`` gauge on a registry of
the program's own (the CA's and the agent's use it).
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.registry import REGISTRY

__all__ = ["PeerMetrics", "add_process_metrics", "build_version", "default_metrics"]


def build_version() -> str:
    """The installed s2s version (``unknown`` when run from a tree that is not installed)."""
    try:
        return version("s2s")
    except PackageNotFoundError:
        return "unknown"


def add_process_metrics(registry: CollectorRegistry, program: str) -> None:
    """Register ``process_*`` (CPU, memory, open descriptors, start time), ``python_info`` and
    ``python_gc_*`` on ``registry``, and ``<program>_build_info{version}`` = 1."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        f"{program}_build_info",
        "Always 1; the version label is the s2s version this process runs",
        ["version"],
        registry=registry,
    )
    info.labels(version=build_version()).set(1)


class PeerMetrics:
    """Accepted peers and rejections by reason."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.registry = reg
        self.rejections = Counter(
            "s2s_verifier_peer_rejections",
            "TLS peers rejected by the s2s verifier, by reason",
            ["reason"],
            registry=reg,
        )
        self.accepted = Counter(
            "s2s_verifier_peers_accepted",
            "TLS peers whose SPIFFE identity verified and was authorized",
            registry=reg,
        )

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def rejection_count(self, reason: str) -> float:
        """The current count for ``reason`` (for tests and diagnostics)."""
        value = self.registry.get_sample_value(
            "s2s_verifier_peer_rejections_total", {"reason": reason}
        )
        return 0.0 if value is None else value

    def rejection_counts(self) -> dict[str, float]:
        """Every reason counted so far, with its count (for tests and diagnostics)."""
        return {
            sample.labels["reason"]: sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == "s2s_verifier_peer_rejections_total"
        }

    def accepted_count(self) -> float:
        value = self.registry.get_sample_value("s2s_verifier_peers_accepted_total")
        return 0.0 if value is None else value


@functools.cache
def default_metrics() -> PeerMetrics:
    """The process-wide instance, registered with the global registry once."""
    return PeerMetrics()
