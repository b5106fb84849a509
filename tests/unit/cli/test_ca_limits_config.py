"""The [limits] table of ca.toml: the listener's timeouts and connection limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.ca.config import ServerLimits
from s2s.cli.ca_process import load_config_file
from s2s.core.errors import InvalidConfig

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "ca.toml"


def test_the_shipped_file_states_the_defaults() -> None:
    flags, _ = load_config_file(DEPLOY)
    assert flags["limits"] == ServerLimits()


def test_limits_are_read_as_durations_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text('[limits]\nheader_timeout = "2s"\nmax_connections_per_ip = 8\n')
    flags, _ = load_config_file(path)
    assert flags["limits"] == ServerLimits(header_timeout=2.0, max_connections_per_ip=8)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('slow = "1s"', "limits.slow"),
        ('header_timeout = "soon"', "limits.header_timeout"),
        ("max_connections = 0", "max_connections"),
        ("max_connections = 10\nmax_connections_per_ip = 20", "max_connections_per_ip"),
        ('max_long_polls = "many"', "max_long_polls"),
    ],
)
def test_bad_limits_are_refused_by_name(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "ca.toml"
    path.write_text(f"[limits]\n{table}\n")
    with pytest.raises(InvalidConfig, match=message):
        load_config_file(path)


def test_limits_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text('limits = "high"\n')
    with pytest.raises(InvalidConfig, match=r"\[limits\] must be a table"):
        load_config_file(path)
