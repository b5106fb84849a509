"""Fixtures: a real CA (``CaServer``, what ``s2s-ca serve`` runs) on 127.0.0.1:0 per test, and an
attested agent. Helpers live in ``ca_harness.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ca_harness import TRUST_DOMAIN, Agent, RunningCa, ca_client, start_ca, stop_ca
from etcd_replicas import Replicas

from s2s.ca.bootstrap import init_trust_domain
from s2s.testing_etcd import EtcdCluster


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    await init_trust_domain(directory, TRUST_DOMAIN)
    return directory


@pytest.fixture
async def ca(data_dir: Path) -> AsyncIterator[RunningCa]:
    server, task, stop = await start_ca(data_dir)
    try:
        async with ca_client(server) as running:
            yield running
    finally:
        await stop_ca(server, task, stop)


@pytest.fixture
async def agent(ca: RunningCa) -> Agent:
    return await ca.attest()


@pytest.fixture
async def etcd_fleet(short_dir: Path) -> AsyncIterator[Replicas]:
    """``s2s-ca serve`` replicas of a fresh trust domain on a real 3-member etcd (started by the
    test through ``Replicas.start``), all stopped after it."""
    with EtcdCluster(short_dir / "etcd") as cluster:
        replicas = Replicas(short_dir, cluster, f"t{uuid.uuid4().hex[:10]}.example.org")
        await replicas.init()
        try:
            yield replicas
        finally:
            await replicas.close()
