"""Counters for peer verification: every rejection is counted under its reason.

``s2s_verifier_peer_rejections_total{reason=...}`` and ``s2s_verifier_peers_accepted_total``.
The default instance registers with prometheus-client's global registry on first use; pass
``registry=`` for an isolated one (tests, several verifiers in one process).
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import REGISTRY

__all__ = ["PeerMetrics", "default_metrics"]


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
