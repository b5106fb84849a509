"""open_store: the one place that picks a backend from a URL; sqlite_url names a SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.channel import EtcdTls
from s2s.store.factory import open_store, sqlite_url
from s2s.store.records import Setting


@pytest.mark.parametrize("name", ["s2s.db", "with space.db", "per%cent.db", "ü.db"])
async def test_sqlite_url_opens_that_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    store = await open_store(sqlite_url(path))
    try:
        await store.set_setting(Setting.TRUST_DOMAIN, "example.org")
    finally:
        await store.close()
    assert path.exists()
    again = await open_store(sqlite_url(path), create=False)
    try:
        assert await again.get_setting(Setting.TRUST_DOMAIN) == "example.org"
    finally:
        await again.close()


def test_sqlite_url_of_a_relative_path_is_absolute(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert sqlite_url("x/s2s.db") == "sqlite://" + str(tmp_path / "x" / "s2s.db")
    finally:
        os.chdir(cwd)


async def test_missing_file_is_not_created_without_create(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(Exception) as info:
        await open_store(sqlite_url(path), create=False)
    assert not path.exists()
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s2s.db", "sqlite:///path or etcd://host:port"),
        ("sqlite://relative/s2s.db", "absolute path"),
        ("postgres://db/s2s", "unknown store scheme"),
        ("etcd://127.0.0.1:2379", "needs the trust domain"),
    ],
)
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        await open_store(url)


async def test_tls_is_refused_for_sqlite(tmp_path: Path) -> None:
    tls = EtcdTls(ca_pem=b"-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(InvalidConfig, match="TLS options apply to an etcd store"):
        await open_store(sqlite_url(tmp_path / "s2s.db"), tls=tls)
    assert not (tmp_path / "s2s.db").exists()


async def test_etcd_url_and_argument_must_agree() -> None:
    with pytest.raises(InvalidConfig, match="names trust domain"):
        await open_store("etcd://127.0.0.1:1/a.org", trust_domain=TrustDomain("b.org").name)
