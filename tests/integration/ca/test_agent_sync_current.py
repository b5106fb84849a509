"""An entries answer is never older than a revision of this store the agent already holds.

An agent that moves from a replica further ahead to one whose snapshot lags (its watch still
reconnecting after a partition) would be sent back in time; the lagging replica answers 503 until
it has caught up. A revision the store itself has not reached (an agent that comes from another
store, after a restore) is not "ahead": it still gets the full list. A real CA on a real store.
"""

from __future__ import annotations

import pytest
from ca_harness import RunningCa

from s2s.core.errors import StoreError
from s2s.store.records import Topic


async def test_a_snapshot_behind_a_revision_the_agent_holds_is_refused(ca: RunningCa) -> None:
    agent = await ca.attest()
    await ca.entry(agent, "/first")
    await ca.entry(agent, "/second")
    sync = ca.server.services.agent_sync
    assert sync is not None
    stored = await ca.server.registry._store.revision(Topic.ENTRIES)
    with pytest.raises(StoreError, match="behind the store") as refused:
        await sync.check_current(stored - 1, stored)  # this replica lags the agent
    assert "use another CA replica" in str(refused.value)
    # twins: caught up, the agent behind, or a revision this store never reached
    await sync.check_current(stored, stored)
    await sync.check_current(stored, stored - 1)
    await sync.check_current(stored - 1, stored - 1)
    await sync.check_current(stored, stored + 1000)


async def test_an_agent_from_another_store_gets_the_full_list(ca: RunningCa) -> None:
    agent = await ca.attest()
    await ca.entry(agent, "/first")
    status, body = await agent.call("GET", "/v1/agent/entries?since=1000000&delta=1")
    assert status == 200, body
    assert not body.get("delta")
    assert [e["spiffe_id"] for e in body["entries"]] == ["spiffe://example.org/first"]
