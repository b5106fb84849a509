"""Prometheus metrics of the CA's OAuth 2.0 token service (``s2s_ca_oauth_*``), on the CA registry.

The token service's HTTP adapter (``oauth_http``) counts each request once it is answered: its
endpoint, the client authentication method it used and its result (``ok``, ``active`` or
``inactive`` for introspection, else the RFC 6749 / 7009 / 7662 ``error`` code).
``deploy/monitoring/README.md`` says what each metric means and which alert uses it.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["NO_METHOD", "OAuthMetrics"]

NO_METHOD: Final = "none"  # the method label of a request refused before its method was known
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class OAuthMetrics:
    """Counters and the token-endpoint latency histogram of the token service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.token_requests = Counter(
            "s2s_ca_oauth_token_requests",
            "Token endpoint requests (client-credentials grant), by client authentication method "
            "(private_key_jwt, tls_client_auth, client_secret_basic, client_secret_post, none) "
            "and result: ok (a token was issued) or the RFC 6749 error code",
            ["method", "result"],
            registry=registry,
        )
        self.token_latency = Histogram(
            "s2s_ca_oauth_token_seconds",
            "Time to answer one token endpoint request, by client authentication method",
            ["method"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.introspections = Counter(
            "s2s_ca_oauth_introspections",
            "Introspection requests (RFC 7662), by result: active, inactive, or the error code "
            "of a refused request (invalid_client: the caller did not authenticate)",
            ["result"],
            registry=registry,
        )
        self.revocations = Counter(
            "s2s_ca_oauth_revocations",
            "Revocation requests (RFC 7009), by result: ok (also for an unknown or expired "
            "token, as the RFC answers) or the error code",
            ["result"],
            registry=registry,
        )
        self.assertion_replays = Counter(
            "s2s_ca_oauth_assertion_replays",
            "JWT-SVID client assertions refused because their jti was already used (on this "
            "replica or, through the store, on another)",
            registry=registry,
        )

    def observe(
        self, endpoint: str, *, method: str, result: str, seconds: float, replay: bool
    ) -> None:
        """Count one answered request of ``endpoint`` (token, introspect or revoke)."""
        if replay:
            self.assertion_replays.inc()
        if endpoint == "token":
            self.token_requests.labels(method=method, result=result).inc()
            self.token_latency.labels(method=method).observe(seconds)
        elif endpoint == "introspect":
            self.introspections.labels(result=result).inc()
        elif endpoint == "revoke":
            self.revocations.labels(result=result).inc()
