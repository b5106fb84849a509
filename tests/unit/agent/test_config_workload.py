"""The Workload API limits in the agent's configuration: defaults, the three sources, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.agent.config import AgentConfig, load_config, parse_duration
from s2s.agent.workload_limits import WorkloadLimits
from s2s.core.errors import InvalidConfig

MINIMAL = {
    "trust_domain": "example.org",
    "ca_urls": ("https://ca.example.org:8443",),
    "data_dir": "/var/lib/s2s-agent",
}


def test_defaults_are_the_documented_ones() -> None:
    limits = load_config(flags=MINIMAL, environ={}).workload_limits()
    assert limits == WorkloadLimits()
    assert (limits.max_connections, limits.max_connections_per_uid) == (1024, 64)
    assert limits.idle_timeout == 300.0
    assert (limits.attest_workers, limits.attest_per_uid) == (4, 2)


def test_toml_env_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'trust_domain = "example.org"\nca_url = "https://ca:1"\ndata_dir = "/d"\n'
        "workload_max_connections = 200\nworkload_max_connections_per_uid = 20\n"
        'workload_idle_timeout = "90s"\nworkload_attest_workers = 6\n'
    )
    from_file = load_config(environ={}, config_file=path).workload_limits()
    assert (from_file.max_connections, from_file.max_connections_per_uid) == (200, 20)
    assert (from_file.idle_timeout, from_file.attest_workers, from_file.attest_per_uid) == (
        90.0,
        6,
        3,
    )
    environ = {
        "S2S_AGENT_WORKLOAD_IDLE_TIMEOUT": "2m",
        "S2S_AGENT_WORKLOAD_MAX_CONNECTIONS_PER_UID": "8",
    }
    from_env = load_config(environ=environ, config_file=path).workload_limits()
    assert (from_env.idle_timeout, from_env.max_connections_per_uid) == (120.0, 8)
    flags = {"workload_idle_timeout": "1h", "workload_attest_workers": "1"}
    from_flags = load_config(flags=flags, environ=environ, config_file=path).workload_limits()
    assert (from_flags.idle_timeout, from_flags.attest_workers, from_flags.attest_per_uid) == (
        3600.0,
        1,
        1,
    )


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("workload_max_connections", "0", "at least 1"),
        ("workload_max_connections", "-3", "at least 1"),
        ("workload_max_connections_per_uid", "many", "at least 1"),
        ("workload_attest_workers", "0", "at least 1"),
        ("workload_idle_timeout", "0s", "positive"),
        ("workload_idle_timeout", "5 minutes", "not a duration"),
        ("workload_idle_timeout", "-5", "not a duration"),
    ],
)
def test_bad_values_name_the_setting(setting: str, value: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message) as err:
        load_config(flags={**MINIMAL, setting: value}, environ={})
    assert setting in str(err.value)


def test_per_uid_limit_above_total_is_refused() -> None:
    flags = {**MINIMAL, "workload_max_connections": "10", "workload_max_connections_per_uid": "20"}
    with pytest.raises(InvalidConfig, match="per-uid connection limit"):
        load_config(flags=flags, environ={})


def test_config_value_checks_limits_too() -> None:
    config = load_config(flags=MINIMAL, environ={})
    with pytest.raises(InvalidConfig, match="positive"):
        AgentConfig(
            trust_domain=config.trust_domain,
            ca_urls=config.ca_urls,
            data_dir=config.data_dir,
            workload_idle_timeout=0,
        )


def test_parse_duration() -> None:
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration(" 45 ") == 45.0
    for bad in ("", "h", "1d", True, None, float("inf")):
        with pytest.raises(InvalidConfig):
            parse_duration(bad)
