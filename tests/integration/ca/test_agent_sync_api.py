"""The authority side of ``GET /v1/agent/entries`` on a running CA: the agent's bundle sequence is
recorded, the answer carries the CA's sequence and tainted key ids, and the long-poll ends when
authorities change (or at once when the agent saw an older authorities revision)."""

from __future__ import annotations

import asyncio
from typing import Any

from ca_harness import Agent, RunningCa


async def entries(agent: Agent, **query: Any) -> dict[str, Any]:
    status, body = await agent.call(
        "GET", "/v1/agent/entries", params={k: str(v) for k, v in query.items()}
    )
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def parked(ca: RunningCa, poll: asyncio.Task[Any]) -> None:
    """Until the CA counts the poll as waiting (it must not have answered)."""
    registry = ca.server.metrics.registry
    deadline = asyncio.get_running_loop().time() + 5
    while not registry.get_sample_value("s2s_ca_entry_long_polls"):
        assert not poll.done(), "the long-poll answered before anything changed"
        assert asyncio.get_running_loop().time() < deadline, "the long-poll never parked"
        await asyncio.sleep(0.01)


async def test_the_reported_bundle_sequence_is_recorded(ca: RunningCa, agent: Agent) -> None:
    answer = await entries(agent, bundle_sequence=1)
    assert answer["bundle_sequence"] == ca.server.authority.bundle.sequence
    assert answer["tainted"] == {"x509": [], "jwt": []}
    shown = await ca.admin_call("GET", "/v1/agents/show", spiffe_id=agent.spiffe_id)
    assert shown["bundle_sequence"] == 1
    await entries(agent)  # no report: nothing changes
    shown = await ca.admin_call("GET", "/v1/agents/show", spiffe_id=agent.spiffe_id)
    assert shown["bundle_sequence"] == 1


async def test_bad_report_values_are_refused(agent: Agent) -> None:
    for bad in ("-1", "abc", "nan"):
        status, body = await agent.call("GET", "/v1/agent/entries", params={"bundle_sequence": bad})
        assert status == 400, body
        assert body["error"] == "invalid_request"


async def test_the_long_poll_ends_when_authorities_change(ca: RunningCa, agent: Agent) -> None:
    first = await entries(agent)
    revision, seen = first["revision"], first["authorities_revision"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(entries(agent, since=revision, wait=20, authorities=seen))
    await parked(ca, poll)
    await ca.admin_call("POST", "/v1/authorities/prepare", {"kind": "jwt"})
    answer = await asyncio.wait_for(poll, 10)
    assert loop.time() - started < 5
    assert answer["authorities_revision"] != seen
    assert answer["bundle_sequence"] > first["bundle_sequence"]  # the prepared key joined
    # An agent that saw an older authorities revision is answered at once.
    started = loop.time()
    again = await entries(agent, since=revision, wait=20, authorities=seen)
    assert loop.time() - started < 2
    assert again["authorities_revision"] == answer["authorities_revision"]
    # Twin: without authorities= the poll keeps waiting for entries only.
    quiet = asyncio.create_task(entries(agent, since=revision, wait=1))
    await ca.admin_call("POST", "/v1/authorities/activate", {"kind": "jwt"})
    assert (await quiet)["revision"] == revision


async def test_tainted_key_ids_reach_the_agent(ca: RunningCa, agent: Agent) -> None:
    first = ca.server.authority.x509_signer.authority_id
    kid = ca.server.authority.jwt_signer.kid
    for kind in ("x509", "jwt"):
        await ca.admin_call("POST", "/v1/authorities/prepare", {"kind": kind})
        await ca.admin_call("POST", "/v1/authorities/activate", {"kind": kind})
    await ca.admin_call("POST", "/v1/authorities/taint", {"kind": "x509", "id": first})
    await ca.admin_call("POST", "/v1/authorities/taint", {"kind": "jwt"})
    answer = await entries(agent)
    assert answer["tainted"] == {"x509": [first], "jwt": [kid]}
    status, body = await agent.call(
        "POST", "/v1/agent/x509", json={"requests": []}
    )  # the agent API still answers (400 for the empty batch, not a crash)
    assert status == 400, body
