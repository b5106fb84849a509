"""Fixtures for tests against a real etcd (``s2s.testing_etcd``), loaded as a pytest plugin.

A test module that needs them says ``pytest_plugins = ("etcd_fixtures",)``: ``etcd_server`` is
one etcd per test module; ``etcd`` is that etcd, running again after each test whatever the test
did to it; ``trust_domain`` a fresh trust domain name (its own prefix in the shared etcd); ``raw`` a
plain etcd client, to look at (and tamper with) what a store wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from s2s.etcd.client import EtcdClient
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


@pytest.fixture
def trust_domain() -> str:
    """A trust domain of its own for each test: its own prefix in the module's etcd."""
    return f"t{uuid.uuid4().hex[:12]}.example"


@pytest.fixture
async def raw(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    """A plain etcd client, to look at (and tamper with) what the store wrote."""
    client = await EtcdClient.connect(etcd_server.endpoint)
    yield client
    await client.close()
