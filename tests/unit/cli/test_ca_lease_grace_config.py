"""``etcd_lease_grace`` in ca.toml: how long the etcd store keeps an expired record.

Parsed by the real loader (``load_config_file``) and the store settings ``serve`` builds from it;
refused below the revocation skew, above 24 h, malformed, or with the SQLite store.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from s2s.ca.config import DEFAULT_BACKDATE
from s2s.ca.store_config import MAX_LEASE_GRACE, MIN_LEASE_GRACE, StoreSettings
from s2s.cli.ca_process import load_config_file, store_settings
from s2s.core.errors import InvalidConfig
from s2s.core.jwtsvid import MAX_LEEWAY

ETCD = 'store = "etcd://127.0.0.1:2379/example.org"\n'


def _load(tmp_path: Path, text: str) -> dict[str, object]:
    path = tmp_path / "ca.toml"
    path.write_text(text)
    flags, _ = load_config_file(path)
    return flags


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"60s"', timedelta(seconds=60)),
        ('"90s"', timedelta(seconds=90)),
        ('"5m"', timedelta(minutes=5)),
        ("120", timedelta(seconds=120)),
        ('"24h"', timedelta(hours=24)),
    ],
)
def test_a_grace_is_read_as_a_duration(tmp_path: Path, value: str, expected: timedelta) -> None:
    flags = _load(tmp_path, f"{ETCD}etcd_lease_grace = {value}\n")
    assert flags["etcd_lease_grace"] == expected
    settings = store_settings(flags)
    assert isinstance(settings, StoreSettings)
    assert settings.lease_grace == expected


def test_without_the_key_the_store_keeps_its_default(tmp_path: Path) -> None:
    flags = _load(tmp_path, ETCD)
    assert "etcd_lease_grace" not in flags
    assert store_settings(flags).lease_grace is None  # EtcdStore.open's 5 minutes


def test_the_minimum_covers_the_revocation_skew() -> None:
    # RevocationService.skew = max(backdate, MAX_LEEWAY); ca.toml keeps the 30 s backdate
    skew = max(DEFAULT_BACKDATE, MAX_LEEWAY)
    assert (MIN_LEASE_GRACE.total_seconds(), MAX_LEASE_GRACE.total_seconds()) == (60, 86400)
    assert max(skew, timedelta(seconds=30)) <= MIN_LEASE_GRACE


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"30s"', "from 60 s .* got 30 s"),  # below the skew
        ('"59s"', "got 59 s"),
        ('"25h"', "to 86400 s, got 90000 s"),
        ('"soon"', "etcd_lease_grace: 'soon' is not a duration"),
        ('"-5m"', "etcd_lease_grace: '-5m' is not a duration"),
        ('"0"', "etcd_lease_grace: '0' is not a duration"),
        ('""', "etcd_lease_grace: '' is not a duration"),
        ("true", "etcd_lease_grace must be a duration"),
        ("1.5", "etcd_lease_grace must be a duration"),
        ('["5m"]', "etcd_lease_grace must be a duration"),
    ],
)
def test_bad_graces_are_refused_by_name(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message) as info:
        _load(tmp_path, f"{ETCD}etcd_lease_grace = {value}\n")
    assert "ca.toml" in str(info.value)


def test_a_grace_with_the_sqlite_store_is_refused(tmp_path: Path) -> None:
    flags = _load(tmp_path, 'etcd_lease_grace = "2m"\n')  # no store: SQLite in the data dir
    with pytest.raises(InvalidConfig, match="etcd_lease_grace applies to an etcd store"):
        StoreSettings(url=None, lease_grace=flags["etcd_lease_grace"])  # type: ignore[arg-type]


def test_store_settings_check_the_bounds_themselves() -> None:
    url = "etcd://127.0.0.1:2379/example.org"
    assert StoreSettings(url=url, lease_grace=MIN_LEASE_GRACE).lease_grace == MIN_LEASE_GRACE
    for bad in (MIN_LEASE_GRACE - timedelta(seconds=1), MAX_LEASE_GRACE + timedelta(seconds=1)):
        with pytest.raises(InvalidConfig, match="etcd_lease_grace must be from"):
            StoreSettings(url=url, lease_grace=bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('etcd_lease_grace = "2m"\n', "etcd_lease_grace applies to an etcd store"),
        (f'{ETCD}etcd_lease_grace = "10s"\n', "etcd_lease_grace must be from 60 s"),
    ],
)
def test_serve_refuses_a_bad_grace_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    from s2s.cli.ca import main  # noqa: PLC0415

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    config = tmp_path / "ca.toml"
    config.write_text(text)
    code = main(["--data-dir", str(data_dir), "serve", "--config", str(config)])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
