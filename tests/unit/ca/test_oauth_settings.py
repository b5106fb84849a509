"""The issuer and access-token settings: CaConfig checks them, ca.toml and flags carry them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from s2s.ca.config import CaConfig
from s2s.cli.ca_process import load_config_file
from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import TrustDomain

TD = TrustDomain.parse("example.org")


def test_issuers_and_the_token_service_default() -> None:
    cfg = CaConfig(trust_domain=TD, data_dir=Path("/d"), jwt_issuer="https://ca.example.org/")
    assert cfg.jwt_issuer == "https://ca.example.org"
    assert cfg.token_service_issuer == "https://ca.example.org"
    both = CaConfig(
        trust_domain=TD, data_dir=Path("/d"), jwt_issuer="https://a", oauth_issuer="https://b"
    )
    assert both.token_service_issuer == "https://b"
    assert CaConfig(trust_domain=TD, data_dir=Path("/d")).token_service_issuer is None


def test_bad_issuer_and_access_token_ttl_are_refused() -> None:
    with pytest.raises(InvalidConfig, match="jwt_issuer"):
        CaConfig(trust_domain=TD, data_dir=Path("/d"), jwt_issuer="http://ca")
    with pytest.raises(InvalidConfig, match="access_token_ttl"):
        CaConfig(trust_domain=TD, data_dir=Path("/d"), access_token_ttl=dt.timedelta(minutes=6))
    low_cap = CaConfig(
        trust_domain=TD,
        data_dir=Path("/d"),
        max_svid_ttl=dt.timedelta(minutes=2),
        x509_svid_ttl=dt.timedelta(minutes=1),
        jwt_svid_ttl=dt.timedelta(minutes=1),
    )
    assert low_cap.access_token_lifetime == dt.timedelta(minutes=2)


def test_config_file_carries_issuers_and_the_access_token_ttl(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text('jwt_issuer = "https://ca.example.org"\n[ttl]\naccess_token = "2m"\n')
    flags, ttls = load_config_file(path)
    assert flags["jwt_issuer"] == "https://ca.example.org"
    assert ttls == {"access_token_ttl": dt.timedelta(minutes=2)}
    path.write_text('jwt_issuer = ""\n')
    with pytest.raises(InvalidConfig):
        load_config_file(path)


def _example_with(tmp_path: Path, *names: str) -> Path:
    """deploy/ca.toml with the commented lines of ``names`` switched on."""
    example = Path(__file__).parents[3] / "deploy" / "ca.toml"
    lines = [
        line.removeprefix("# ") if line.removeprefix("# ").startswith(names) else line
        for line in example.read_text().splitlines()
    ]
    path = tmp_path / "ca.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_example_config_issuer_lines_load_when_uncommented(tmp_path: Path) -> None:
    path = _example_with(tmp_path, "jwt_issuer =", "oauth_issuer =", "access_token =")
    flags, ttls = load_config_file(path)
    assert flags["jwt_issuer"] == flags["oauth_issuer"] == "https://ca.example.org:8443"
    assert ttls["access_token_ttl"] == dt.timedelta(minutes=5)
    cfg = CaConfig(trust_domain=TD, data_dir=Path("/d"), jwt_issuer=flags["jwt_issuer"],
                   oauth_issuer=flags["oauth_issuer"])  # fmt: skip
    assert cfg.token_service_issuer == "https://ca.example.org:8443"
    # the twin: as shipped, the lines are comments and the token service stays off
    flags, ttls = load_config_file(_example_with(tmp_path))
    assert "jwt_issuer" not in flags
    assert "oauth_issuer" not in flags
    assert "access_token_ttl" not in ttls
