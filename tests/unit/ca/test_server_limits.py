"""ServerLimits: the listener's limits are checked once, and fit the descriptors the process has."""

from __future__ import annotations

import pytest

from s2s.agent.ca_client import KEEPALIVE
from s2s.ca.config import DEFAULT_MAX_SVID_TTL, ServerLimits
from s2s.core.errors import InvalidConfig


def test_defaults_are_consistent() -> None:
    limits = ServerLimits()
    assert limits.max_connections_per_ip <= limits.max_connections
    assert limits.max_long_polls <= limits.max_connections
    assert limits.keepalive_timeout > 15  # longer than aiohttp clients keep idle connections


def test_agents_keep_a_connection_between_renewals_and_close_it_before_the_ca() -> None:
    # the longest gap between two renewals of one SVID at the largest lifetime the CA grants
    longest_gap = DEFAULT_MAX_SVID_TTL.total_seconds() / 2 * 1.1
    assert longest_gap < KEEPALIVE < ServerLimits().keepalive_timeout


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"header_timeout": 0}, "header_timeout must be a positive number"),
        ({"tls_handshake_timeout": -1.0}, "tls_handshake_timeout"),
        ({"body_timeout": float("nan")}, "body_timeout"),
        ({"keepalive_timeout": True}, "keepalive_timeout"),
        ({"max_connections": 0}, "max_connections must be a positive whole number"),
        ({"max_long_polls": 1.5}, "max_long_polls"),
        ({"max_connections": 10, "max_connections_per_ip": 11}, "at most max_connections"),
        ({"max_connections": 10, "max_connections_per_ip": 5, "max_long_polls": 11},
         "max_long_polls must be at most"),
    ],
)  # fmt: skip
def test_bad_limits_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidConfig, match=words):
        ServerLimits(**change)  # type: ignore[arg-type]


def test_within_keeps_room_for_the_ca_itself() -> None:
    limits = ServerLimits(max_connections=4096, max_connections_per_ip=2048, max_long_polls=3000)
    fitted = limits.within(1024)
    assert (fitted.max_connections, fitted.max_connections_per_ip, fitted.max_long_polls) == (
        896,
        896,
        896,
    )
    assert fitted.header_timeout == limits.header_timeout
    assert limits.within(10_000) is limits  # twin: enough descriptors, unchanged
    assert limits.within(10).max_connections == 1  # never zero
