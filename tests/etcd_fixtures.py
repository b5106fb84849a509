"""Fixtures for tests against a real etcd (``s2s.testing_etcd``), loaded as a pytest plugin.

A test module that needs them says ``pytest_plugins = ("etcd_fixtures",)``: ``etcd_server`` is
one etcd per test module; ``etcd`` is that etcd, running again after each test whatever the test
did to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s2s.testing_etcd import EtcdServer


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    """The module's etcd, running again after each test whatever the test did to it."""
    etcd_server.start()
    yield etcd_server
    etcd_server.start()
