"""Helpers shared by the agent's JWT revocation tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.config import AgentConfig

MY_UID = f"unix:uid:{os.getuid()}"


def jti_of(token: str) -> str:
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    jti = claims["jti"]
    assert isinstance(jti, str)
    assert jti
    return jti


async def two_ids(harness: Any) -> tuple[AgentConfig, Any, Any]:
    """An agent config and entries for /billing and /api, both for this process's uid."""
    token, agent_id = await harness.ca.join_token()
    billing = await harness.ca.entry(agent_id, "/billing", [MY_UID])
    api = await harness.ca.entry(agent_id, "/api", [MY_UID])
    return harness.config(token=token), billing.spiffe_id, api.spiffe_id


@contextlib.asynccontextmanager
async def running(
    config: AgentConfig, tuning: AgentTuning
) -> AsyncIterator[tuple[Agent, asyncio.Event]]:
    """An agent with ``tuning`` in this event loop, ready; stopped on exit or when the event
    is set."""
    agent = Agent(config, tuning=tuning)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(agent, stop))
    ready = asyncio.create_task(agent.ready.wait())
    try:
        await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the agent's own error
        assert ready.done(), "the agent did not become ready within 20 s"
        yield agent, stop
    finally:
        ready.cancel()
        stop.set()
        await asyncio.wait_for(task, 10)
