"""Fixtures: a real CA (``CaServer``, what ``s2s-ca serve`` runs) on 127.0.0.1:0 per test, and an
attested agent. Helpers live in ``ca_harness.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from ca_harness import TRUST_DOMAIN, Agent, RunningCa, start_ca, stop_ca

from s2s.ca.app import init_trust_domain
from s2s.ca.client import AdminClient


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    await init_trust_domain(directory, TRUST_DOMAIN)
    return directory


@pytest.fixture
async def ca(data_dir: Path) -> AsyncIterator[RunningCa]:
    server, task, stop = await start_ca(data_dir)
    admin = AdminClient(server.options.admin_socket)
    bundle_pem = await asyncio.to_thread(admin.call, "GET", "/v1/bundle", query={"format": "pem"})
    ctx = ssl.create_default_context(cadata=bundle_pem)
    ctx.check_hostname = False
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    running = RunningCa(
        server, data_dir, f"https://127.0.0.1:{server.port}", admin, bundle_pem.encode(), session
    )
    try:
        yield running
    finally:
        for agent in running.agents:
            await agent.close()
        await session.close()
        await stop_ca(server, task, stop)


@pytest.fixture
async def agent(ca: RunningCa) -> Agent:
    return await ca.attest()
