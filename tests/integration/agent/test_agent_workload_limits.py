"""The agent's Workload API limits come from its settings and show in its metrics."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import aiohttp

from s2s.verifier.workload_client import WorkloadApiClient

MY_UID = f"unix:uid:{os.getuid()}"


async def test_agent_applies_its_connection_settings_and_counts_refusals(harness: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID])
    config = harness.config(
        token=token, metrics_listen=("127.0.0.1", 0), workload_max_connections_per_uid=1
    )
    running = await harness.start_agent(config)
    agent = running.agent
    path = str(agent.config.socket)
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.connect(path)
    try:
        await harness.wait_until(
            lambda: agent.server.open_connections == 1, what="the held connection"
        )
        refused = await fetch_status(path)
        assert refused.startswith("error"), refused  # our uid holds its one connection
        text = await metrics(agent.metrics_port)
        assert 's2s_agent_workload_api_connections_refused_total{reason="uid_limit"}' in text
        assert "s2s_agent_workload_api_connections 1.0" in text
    finally:
        held.close()
    await harness.wait_until(lambda: agent.server.open_connections == 0, what="the close")
    # Twin: served again (polled: grpc backs off before it reconnects after the refusal).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (status := await fetch_status(path)) != "spiffe://example.org/billing":
        assert loop.time() < deadline, status
        await asyncio.sleep(0.1)


async def fetch_status(path: str) -> str:
    try:
        async with WorkloadApiClient(path) as client:
            svids = await asyncio.wait_for(client.fetch_x509_context(), 20)
    except Exception as exc:  # the test reports what the client saw
        return f"error: {exc}"
    return str(svids.svids[0].spiffe_id)


async def metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text: str = await response.text()
    return text
