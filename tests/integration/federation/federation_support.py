"""Helpers for the federation tests: a real agent of any trust domain in this event loop (the
shared fixtures' helpers assume example.org), and polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.agent.config import AgentConfig

FAST = AgentTuning(
    entries_wait=2.0,
    bundle_interval=5.0,
    backoff_initial=0.05,
    backoff_cap=0.5,
    health_interval=0.1,
    first_sync_timeout=5.0,
)


class CaHandle(Protocol):
    """What these helpers need of the shared ``live_ca``/``foreign_ca`` handles."""

    server: Any

    @property
    def url(self) -> str: ...
    def bundle_pem(self) -> bytes: ...


@dataclass
class RunningAgent:
    agent: Agent
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)


def agent_config(ca: CaHandle, base: Path, sockets: Path, *, token: str, **kw: Any) -> AgentConfig:
    """An agent of ``ca`` whose files live under ``base`` (its trust domain in ``kw``)."""
    bundle = base / "bootstrap.pem"
    bundle.write_bytes(ca.bundle_pem())
    values: dict[str, Any] = {
        "ca_urls": (ca.url,),
        "data_dir": base / "agent",
        "trust_bundle": bundle,
        "join_token": token,
        "log_format": "text",
        **kw,
    }
    return AgentConfig(**values)


async def start_agent(config: AgentConfig) -> RunningAgent:
    """Run an agent in a task; return once its Workload API serves (or raise its error)."""
    agent = Agent(config, tuning=FAST)
    stop = asyncio.Event()
    running = RunningAgent(agent, asyncio.create_task(run_agent(agent, stop)), stop)
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait(
        {ready, running.task}, timeout=20, return_when=asyncio.FIRST_COMPLETED
    )
    if running.task in done:
        ready.cancel()
        running.task.result()
        raise AssertionError("the agent stopped before it was ready")
    assert ready in done, "the agent did not become ready within 20 s"
    return running


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate()`` every 20 ms until true, or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
