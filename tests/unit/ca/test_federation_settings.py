"""deploy/ca.toml's commented [federation] block: uncommented, it loads through serve's loader
into the settings it documents; a twin with a misspelt key is refused naming it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from s2s.ca.federation_config import federation_settings
from s2s.cli.ca_process import load_config_file
from s2s.core.errors import InvalidConfig
from s2s.core.federation import EndpointProfile

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
_KEYS = ("[federation]", "bundle_endpoint = ", "bundle_endpoint_profile", "refresh_hint",
         "refresh_min", "refresh_max", "bundle_endpoint_spiffe_id")  # fmt: skip


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _uncommented(tmp_path: Path, typo: str = "") -> Path:
    text = (DEPLOY / "ca.toml").read_text()
    for key in _KEYS:
        text = text.replace(f"\n# {key}", f"\n{key}")
    if typo:
        text = text.replace("\nrefresh_min", f"\n{typo}")
    path = tmp_path / "ca.toml"
    path.write_text(text)
    return path


def test_the_documented_federation_block_loads(tmp_path: Path) -> None:
    path = _uncommented(tmp_path)
    flags, _ = load_config_file(path)
    settings = federation_settings(flags["federation"], where=str(path), seconds=_seconds)
    endpoint = settings.bundle_endpoint
    assert endpoint is not None
    assert endpoint.address == "0.0.0.0:8444"
    assert endpoint.profile is EndpointProfile.HTTPS_SPIFFE
    assert endpoint.refresh_hint == dt.timedelta(minutes=5)
    assert settings.refresh.minimum == dt.timedelta(seconds=30)
    assert settings.refresh.maximum == dt.timedelta(hours=1)


def test_the_federation_block_with_a_typo_is_refused(tmp_path: Path) -> None:
    path = _uncommented(tmp_path, typo="refresh_minimum")
    flags, _ = load_config_file(path)
    with pytest.raises(InvalidConfig, match=r"federation\.refresh_minimum"):
        federation_settings(flags["federation"], where=str(path), seconds=_seconds)


def test_the_shipped_file_has_no_federation_table() -> None:
    flags, _ = load_config_file(DEPLOY / "ca.toml")
    assert "federation" not in flags  # off by default
