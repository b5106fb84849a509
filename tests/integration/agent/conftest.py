"""Fixtures for the Workload API tests: a real server on a real Unix socket.

``socket_dir``, ``provider`` and ``server`` are shared with the verifier tests and live in
``tests/integration/conftest.py`` (the socket directory is made under /tmp with mode 0755:
pytest's own tmp dirs are 0700, which would keep the uid-65534 workloads of these tests out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from s2s.agent.ca_client import CaClient, RetryDelays
from s2s.agent.node import NodeAttestor
from s2s.core.backoff import Backoff
from s2s.core.clock import SystemClock

MakeNode = Callable[[Any], NodeAttestor]


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """A node attestor for a config, on the system clock with fast retries; every client made
    is closed after."""
    made: list[NodeAttestor] = []

    def make(config: Any) -> NodeAttestor:
        clock = SystemClock()
        client = CaClient(urls=config.ca_urls, trust_domain=config.trust_domain, clock=clock)
        node = NodeAttestor(
            config=config,
            client=client,
            clock=clock,
            backoff=RetryDelays(Backoff.full_jitter(initial=0.02, cap=0.1)),
        )
        made.append(node)
        return node

    yield make
    for node in made:
        await node._client.close()
