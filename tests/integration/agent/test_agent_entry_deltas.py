"""Entries long-polls that send only what changed: a real CA and a real agent.

The agent asks with ``delta=1`` once it holds a list; the CA answers with the entries changed and
the ids removed since the agent's revision while its change log still covers that revision, and
with the full list otherwise. An agent that does not ask (an older agent) gets the full list.
Twins: a revision older than the CA's log, one it never gave, and a write not yet confirmed by the
store all get the full list; a malformed delta answer is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import s2s.ca.registry_cache as registry_cache
from s2s.agent.ca_wire import EntriesResponse, parse_entries
from s2s.core.errors import InvalidRequest, Unavailable
from s2s.core.spiffe_id import SpiffeId

MY_UID = f"unix:uid:{os.getuid()}"


class Recorded:
    """The answers the running agent's entries loop received (the real client, observed)."""

    def __init__(self, running: Any) -> None:
        self.answers: list[EntriesResponse] = []
        client = running.agent.client
        real = client.entries

        async def entries(**kwargs: Any) -> EntriesResponse:
            answer: EntriesResponse = await real(**kwargs)
            self.answers.append(answer)
            return answer

        client.entries = entries


async def start(harness: Any) -> tuple[Any, SpiffeId, Recorded]:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/first", [MY_UID])
    running = await harness.start_agent(harness.config(token=token))
    return running, agent_id, Recorded(running)


def held(running: Any) -> dict[str, Any]:
    cache = running.agent.cache
    return {item.entry.id: item.entry for item in cache._state.items}


async def ca_list(harness: Any, agent_id: SpiffeId) -> dict[str, Any]:
    snapshot = await harness.ca.server.registry.list_entries(parent_id=agent_id)
    return {e.id: e for e in snapshot.entries}


async def converged(harness: Any, running: Any, agent_id: SpiffeId) -> None:
    want = await ca_list(harness, agent_id)
    await harness.wait_until(lambda: held(running) == want, what="the agent to hold the CA's list")


async def test_the_agent_follows_changes_by_deltas(harness: Any) -> None:
    running, agent_id, recorded = await start(harness)
    registry = harness.ca.server.registry
    other_token, other_agent = await harness.ca.join_token()
    assert other_token
    second = await harness.ca.entry(agent_id, "/second", [MY_UID])
    await converged(harness, running, agent_id)
    first = next(e for e in held(running).values() if e.id != second.id)
    await registry.update_entry(first.id, hint="primary")
    await converged(harness, running, agent_id)
    moved_in = await harness.ca.entry(other_agent, "/moved", [MY_UID])
    await registry.update_entry(moved_in.id, parent_id=agent_id)  # from another agent to ours
    await converged(harness, running, agent_id)
    await registry.update_entry(second.id, parent_id=other_agent)  # from ours to another agent
    await registry.delete_entry(first.id)
    await converged(harness, running, agent_id)
    assert set(held(running)) == {moved_in.id}
    deltas = [a for a in recorded.answers if a.delta]
    assert deltas, "no delta answer was received"
    assert not [a for a in recorded.answers if not a.delta]  # after the first list: only deltas
    assert all(len(a.entries) <= 2 for a in deltas)  # what changed, never the whole list
    removed = {r for a in deltas for r in a.removed}
    assert {second.id, first.id} <= removed
    # Another agent's change is not sent here: its answers moved the revision, nothing else.
    await harness.ca.entry(other_agent, "/elsewhere", [MY_UID])
    await converged(harness, running, agent_id)
    assert all(e.parent_id == agent_id for a in recorded.answers for e in a.entries)


async def test_old_agents_and_unknown_revisions_get_the_full_list(harness: Any) -> None:
    running, agent_id, _ = await start(harness)
    client = running.agent.client
    await harness.ca.entry(agent_id, "/second", [MY_UID])
    await converged(harness, running, agent_id)
    now = (await client.entries(since=-1, wait=0)).revision
    await harness.ca.entry(agent_id, "/third", [MY_UID])
    await converged(harness, running, agent_id)
    asked = await client.entries(since=now, wait=0, delta=True)
    assert asked.delta
    assert [str(e.spiffe_id) for e in asked.entries] == ["spiffe://example.org/third"]
    old_agent = await client.entries(since=now, wait=0)  # no delta=1: today's answer
    assert not old_agent.delta
    assert len(old_agent.entries) == 3
    never_given = await client.entries(since=asked.revision + 1000, wait=0, delta=True)
    assert not never_given.delta
    assert len(never_given.entries) == 3


async def test_a_revision_older_than_the_log_gets_the_full_list(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_cache, "CHANGE_LOG_LENGTH", 2)
    running, agent_id, recorded = await start(harness)
    client = running.agent.client
    before = (await client.entries(since=-1, wait=0)).revision
    for n in range(4):
        await harness.ca.entry(agent_id, f"/more/{n}", [MY_UID])
    await converged(harness, running, agent_id)
    too_old = await client.entries(since=before, wait=0, delta=True)
    assert not too_old.delta
    assert len(too_old.entries) == 5
    # The running agent got there too, with full lists where its revision had left the log.
    assert len(held(running)) == 5
    assert recorded.answers


async def test_a_write_through_not_yet_confirmed_gets_the_full_list(harness: Any) -> None:
    running, agent_id, _ = await start(harness)
    server = harness.ca.server
    cache = server.registry._cache
    now = (await running.agent.client.entries(since=-1, wait=0)).revision
    cache._entries_dirty = True  # as right after an in-process write, before the store's change
    try:
        assert server.registry.entry_delta(agent_id, now, now) is None
    finally:
        cache._entries_dirty = False
    assert server.registry.entry_delta(agent_id, now, now) is not None


def test_malformed_delta_answers_are_refused() -> None:
    base: dict[str, Any] = {"revision": 3, "entries": []}
    ok = parse_entries({**base, "delta": True, "removed": ["a", "b"]})
    assert ok.delta
    assert ok.removed == ("a", "b")
    assert not parse_entries(base).delta  # an older CA: a full list
    for bad in (
        {"delta": "yes"},
        {"delta": True, "removed": "a"},
        {"delta": True, "removed": [1]},
        {"removed": ["a"]},  # removals only in a delta answer
    ):
        with pytest.raises(Unavailable, match="malformed"):
            parse_entries(json.loads(json.dumps({**base, **bad})))


async def test_changes_made_by_another_replica_arrive_as_deltas(harness: Any) -> None:
    running, agent_id, recorded = await start(harness)
    other = await harness.replica("b")  # a second CA on the same store file: its own writes
    cache = harness.ca.server.registry._cache
    floor = cache._log_floor  # moves only with a full listing
    made = await other.entry(agent_id, "/from-b", [MY_UID])
    await converged(harness, running, agent_id)
    await other.server.registry.update_entry(made.id, hint="changed by b")
    await converged(harness, running, agent_id)
    await other.server.registry.delete_entry(made.id)
    await converged(harness, running, agent_id)
    assert made.id not in held(running)
    assert cache._log_floor == floor  # the CA applied b's changes one by one, no full reload
    later = [a for a in recorded.answers if a.entries or a.removed]
    assert later
    assert all(a.delta for a in later)
    assert all(len(a.entries) <= 1 for a in later)


@pytest.mark.parametrize("value", ["2", "yes", "-1", ""])
async def test_a_bad_delta_parameter_is_refused(harness: Any, value: str) -> None:
    running, _, _ = await start(harness)
    client = running.agent.client
    with pytest.raises(InvalidRequest, match="delta"):
        await client._call("GET", "/v1/agent/entries", query={"since": "0", "delta": value})
    for fine in ("0", "1"):  # the twins: both accepted
        await client._call("GET", "/v1/agent/entries", query={"since": "0", "delta": fine})
