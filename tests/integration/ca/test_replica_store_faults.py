"""CA replicas on a real 3-member etcd when a replica loses etcd, with real ``s2s-ca serve``
processes and a real agent given two CA URLs.

A replica partitioned from etcd (TCP links to every member reset, or silently dropping every
packet, so that only the replica's own probe notices): within a probe it says so
(``/readyz`` 503 naming the store, ``s2s_ca_store_up`` and ``s2s_ca_ready`` 0, ``/healthz``
still 200) and answers the
agent API and the revocations long-poll with 503 ``store_error`` and ``Retry-After`` (twins: the
same calls on the healthy replica succeed); the entries and revocations long-polls it was holding
are answered so at once, not at the end of their wait. It serves no entries while cut. The real
agent fails over to the other replica, follows the entry changes made there, renews there, and no
SVID expires. Healed, the replica is ready again and serves the store's current entries.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ca_harness import Agent, csr_pem, new_key
from etcd_replicas import Replica, Replicas, until
from etcd_replicas import start_agent as start_real_agent

from s2s.ca.store_health import PROBE_INTERVAL, PROBE_TIMEOUT
from s2s.etcd.client import EtcdClient
from s2s.testing_etcd import EtcdCluster

TTL = 10  # seconds: the agent renews at about half of it, several times while the link is cut


async def create_entry(replica: Replica, parent: str, path: str, **extra: Any) -> dict[str, Any]:
    assert replica.ca is not None
    td = parent.split("/")[2]  # spiffe://<td>/s2s/agent/...
    body = {
        "spiffe_id": f"spiffe://{td}{path}",
        "parent_id": parent,
        "selectors": ["unix:uid:1000"],
        "x509_svid_ttl": TTL,
        **extra,
    }
    result: dict[str, Any] = await replica.ca.admin_call("POST", "/v1/entries", body)
    return result


async def agent_call(
    agent: Agent, method: str, path: str, body: Any = None
) -> tuple[int, Any, Any]:
    """An agent API call over mTLS: (status, JSON body, headers)."""
    async with agent.session().request(method, agent.ca.url + path, json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def wait_ready(replica: Replica, want: bool, deadline: float) -> float:
    start = time.monotonic()
    while await replica.ready() != want:
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{replica.name} not {'ready' if want else 'unready'} in time")
    return time.monotonic() - start


def agent_calls(entry_id: str, key_csr: str, agent_csr: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/v1/agent/entries", None),
        ("GET", "/v1/agent/entries?since=0&wait=5&delta=1", None),
        ("POST", "/v1/agent/x509", {"requests": [{"entry_id": entry_id, "csr": key_csr}]}),
        ("POST", "/v1/agent/jwt", {"entry_id": entry_id, "audience": ["billing"]}),
        ("POST", "/v1/agent/renew", {"csr": agent_csr}),
    ]


@pytest.mark.parametrize("silent", [False, True], ids=["reset", "silent"])
async def test_a_replica_cut_off_from_etcd_stops_and_agents_fail_over(
    etcd_fleet: Replicas, short_dir: Path, silent: bool
) -> None:
    a = await etcd_fleet.start("ca-0", through_links=True)
    b = await etcd_fleet.start("ca-1")
    assert a.ca is not None
    assert b.ca is not None
    raw = await a.ca.attest()  # an agent whose every answer the test sees
    raw_b = Agent(raw.spiffe_id, raw.key, raw.chain_pem, raw.bundle, b.ca)
    b.ca.agents.append(raw_b)
    raw_entry = await create_entry(b, raw.spiffe_id, "/raw")
    token = await a.ca.token()
    first = await create_entry(b, token["agent_id"], "/first")
    gone = await create_entry(b, token["agent_id"], "/gone")
    agent = await start_real_agent(etcd_fleet, [a.url, b.url], token["token"], short_dir, short_dir)
    try:
        await until(
            lambda: set(agent.held()) == {first["id"], gone["id"]} and all(agent.svids()),
            "the agent to hold both entries with SVIDs",
        )
        assert agent.agent.client.urls[agent.agent.client._preferred] == a.url  # served by a
        status, current, _ = await agent_call(raw, "GET", "/v1/agent/entries")
        assert status == 200
        holding = f"/v1/agent/entries?since={current['revision']}&wait=30&delta=1"
        held = asyncio.create_task(agent_call(raw, "GET", holding))
        revoked = (await a.get("/v1/revocations"))[1]["revision"]
        held_feed = asyncio.create_task(a.get(f"/v1/revocations?since={revoked}&wait=30&delta=1"))
        deadline = time.monotonic() + 10
        # held: these two and the real agent's own entries long-poll (one gauge for them all)
        while await a.metric("s2s_ca_entry_long_polls") < 3:
            assert time.monotonic() < deadline, "the long-polls were not held"

        a.cut(silent=silent)
        cut_at = time.monotonic()
        detected = await wait_ready(a, False, PROBE_INTERVAL + PROBE_TIMEOUT + 3)
        status, answer, headers = await held  # woken when the store went down, not after 30 s
        woken = time.monotonic() - cut_at
        assert status == 503, answer
        assert answer["error"] == "store_error"
        assert headers["Retry-After"] == "1"
        assert woken < PROBE_INTERVAL + PROBE_TIMEOUT + 3
        status, answer, headers = await held_feed  # the revocations long-poll likewise
        assert status == 503, answer
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - cut_at < PROBE_INTERVAL + PROBE_TIMEOUT + 3
        status, body, _ = await a.get("/readyz")
        assert status == 503
        assert "cannot reach its store" in body["message"]
        assert (await a.get("/healthz"))[0] == 200  # alive: a restart would not bring etcd back
        assert await a.metric("s2s_ca_store_up") == 0
        assert await a.metric("s2s_ca_ready") == 0  # what /readyz says, for the alert
        assert await b.metric("s2s_ca_store_up") == 1
        served = await a.metric(
            "s2s_ca_http_requests_total", route="/v1/agent/entries", status="200"
        )

        csr = csr_pem(new_key())
        for method, path, call_body in agent_calls(raw_entry["id"], csr, csr_pem(raw.key)):
            status, answer, headers = await agent_call(raw, method, path, call_body)
            assert status == 503, (path, answer)
            assert answer["error"] == "store_error"
            assert "another CA replica" in answer["message"]
            assert headers["Retry-After"] == "1"
            status, answer, _ = await agent_call(
                raw_b, method, path.replace("wait=5", "wait=0"), call_body
            )
            assert status == 200, (path, answer)  # twin: the replica that reaches etcd serves it
        status, answer, headers = await a.get("/v1/revocations?delta=1")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert (await b.get("/v1/revocations?delta=1"))[0] == 200
        assert (await a.get("/v1/bundle"))[0] == 200  # public data with its own validity

        # Changes made through b while a is cut reach the agent through b.
        added = await create_entry(b, token["agent_id"], "/added")
        assert b.ca is not None
        await b.ca.admin_call("DELETE", f"/v1/entries/{gone['id']}")
        want = {first["id"], added["id"]}
        followed = await until(
            lambda: set(agent.held()) == want and all(agent.svids()), "the agent to follow b", 20
        )
        assert agent.agent.client.urls[agent.agent.client._preferred] == b.url

        # Renewals go to b; no SVID expires while a is cut.
        before = {s.serial for s in agent.svids() if s is not None}
        renewing = time.monotonic()
        renewed_by = renewing + 2 * TTL
        while not (before.isdisjoint({s.serial for s in agent.svids() if s is not None})):
            assert time.monotonic() < renewed_by, "the agent did not renew through b"
            now = datetime.now(UTC)
            state = [(i.entry.spiffe_id, i.svid and i.svid.not_after) for i in agent.items()]
            assert all(s is not None and s.not_after > now for s in agent.svids()), (now, state)
            await asyncio.sleep(0.1)  # sampling the SVIDs' expiry while polling
        renewed = time.monotonic() - renewing
        after = await a.metric(
            "s2s_ca_http_requests_total", route="/v1/agent/entries", status="200"
        )
        assert after == served, "the cut replica answered an entries request"

        # Healed: a is ready again and serves what b serves.
        a.heal()
        back = await wait_ready(a, True, 20)
        assert await a.metric("s2s_ca_ready") == 1
        assert await a.metric("s2s_ca_store_up") == 1
        status, on_b, _ = await agent_call(raw_b, "GET", "/v1/agent/entries")
        assert status == 200
        deadline = time.monotonic() + 20
        while True:
            status, on_a, _ = await agent_call(raw, "GET", "/v1/agent/entries")
            if status == 200 and on_a["revision"] >= on_b["revision"]:
                break
            assert time.monotonic() < deadline, (status, on_a)
        assert [e["id"] for e in on_a["entries"]] == [e["id"] for e in on_b["entries"]]
        print(
            f"\ncut noticed in {detected:.2f} s (held long-poll answered 503 after {woken:.2f} s);"
            f" ready again {back:.2f} s after the heal; agent followed b in {followed:.2f} s,"
            f" renewed every SVID through b in {renewed:.2f} s"
        )
    finally:
        await agent.stop()


def by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["kind"], r["value"], r.get("issuer", "")): r for r in records}


def applied(held: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The entries (by id) an agent holding ``held`` has after ``answer`` (a delta or a list)."""
    if not answer.get("delta"):
        return {e["id"]: e for e in answer["entries"]}
    after = {k: v for k, v in held.items() if k not in set(answer["removed"])}
    return after | {e["id"]: e for e in answer["entries"]}


async def compact(cluster: EtcdCluster) -> int:
    """Compact etcd at its current revision (history before it is gone); that revision."""
    client = await EtcdClient.connect(cluster.endpoints)
    try:
        _, revision = await client.get_prefix(b"/")
        await client.compact(revision)
        return revision
    finally:
        await client.close()


async def test_a_watch_cut_past_a_compaction_relists_and_old_revisions_get_full_answers(
    etcd_fleet: Replicas, short_dir: Path
) -> None:
    """Item 1: a replica whose etcd watch was cut while etcd compacted past it re-lists and
    serves the store's entries and revocations; an agent (the real one, and one whose answers the
    test reads) long-polling from a revision older than the compaction gets a full answer from it
    (the other replica, whose own change log still covers that revision, a correct delta)."""
    a = await etcd_fleet.start("ca-0", through_links=True)
    b = await etcd_fleet.start("ca-1")
    assert a.ca is not None
    assert b.ca is not None
    raw = await b.ca.attest()
    raw_a = Agent(raw.spiffe_id, raw.key, raw.chain_pem, raw.bundle, a.ca)
    a.ca.agents.append(raw_a)
    e1, e2 = [await create_entry(b, raw.spiffe_id, f"/e{n}") for n in (1, 2)]
    token = await b.ca.token()
    g1, g2 = [await create_entry(b, token["agent_id"], f"/g{n}") for n in (1, 2)]
    await b.ca.admin_call("POST", "/v1/revocations", {"spiffe_id": e1["spiffe_id"]})
    agent = await start_real_agent(etcd_fleet, [a.url], token["token"], short_dir, short_dir)
    try:
        await until(lambda: set(agent.held()) == {g1["id"], g2["id"]}, "the agent's entries")
        status, before, _ = await agent_call(raw_a, "GET", "/v1/agent/entries")
        assert status == 200
        held = applied({}, before)
        assert set(held) == {e1["id"], e2["id"]}
        status, revoked_before, _ = await a.get("/v1/revocations")
        assert status == 200

        a.cut()
        await wait_ready(a, False, PROBE_INTERVAL + PROBE_TIMEOUT + 3)
        await b.ca.admin_call("DELETE", f"/v1/entries/{e1['id']}")
        await b.ca.admin_call("PATCH", f"/v1/entries/{e2['id']}", {"hint": "changed"})
        e3 = await create_entry(b, raw.spiffe_id, "/e3")
        await b.ca.admin_call("DELETE", f"/v1/entries/{g1['id']}")
        g3 = await create_entry(b, token["agent_id"], "/g3")
        await b.ca.admin_call("POST", "/v1/revocations", {"spiffe_id": e3["spiffe_id"]})
        compacted = await compact(etcd_fleet.cluster)
        assert compacted > before["revision"]
        status, on_b, _ = await agent_call(raw, "GET", "/v1/agent/entries")
        assert status == 200
        _, revoked_on_b, _ = await b.get("/v1/revocations")

        a.heal()
        await wait_ready(a, True, 20)
        deadline = time.monotonic() + 20
        since = f"/v1/agent/entries?since={before['revision']}&delta=1"
        while True:  # a may take a moment to re-list after the heal
            status, answer, _ = await agent_call(raw_a, "GET", since)
            if status == 200 and answer["revision"] >= on_b["revision"]:
                break
            assert time.monotonic() < deadline, (status, answer)
            await asyncio.sleep(0.1)
        assert not answer.get("delta")  # a's re-list forgot what changed before it: full list
        want = {e["id"]: e for e in on_b["entries"]}
        assert applied(held, answer) == want
        assert set(want) == {e2["id"], e3["id"]}
        assert want[e2["id"]]["hint"] == "changed"
        assert a.logged("etcd.watch_compacted"), "a did not see its watch compacted"
        status, from_b, _ = await agent_call(raw, "GET", since)  # twin: b's log still covers it
        assert status == 200
        assert from_b.get("delta")
        assert applied(held, from_b) == want

        # the real agent, which only knows a, ends with exactly its entries
        await until(lambda: set(agent.held()) == {g2["id"], g3["id"]}, "the agent to follow", 20)

        # revocations: from the revision held before the cut, a answers the store's set
        deadline = time.monotonic() + 20
        while True:
            path = f"/v1/revocations?since={revoked_before['revision']}&delta=1"
            status, answer, _ = await a.get(path)
            if status == 200 and answer["revision"] >= revoked_on_b["revision"]:
                break
            assert time.monotonic() < deadline, (status, answer)
            await asyncio.sleep(0.1)
        records = by_key(revoked_before["records"])
        if answer.get("delta"):
            assert answer["base"] == revoked_before["revision"]
            for gone in answer["removed"]:
                records.pop((gone["kind"], gone["value"], gone.get("issuer", "")), None)
            records |= by_key(answer["added"])
        else:
            records = by_key(answer["records"])
        assert records == by_key(revoked_on_b["records"])
        assert any(r["value"] == e3["spiffe_id"] for r in records.values())
        kind = "a delta" if answer.get("delta") else "the full set"
        print(f"\nrevocations since a revision before the compaction: {kind}")
    finally:
        await agent.stop()


async def test_a_slow_etcd_is_not_called_down(etcd_fleet: Replicas) -> None:
    """etcd slow (every chunk on the replica's links held 1.2 s each way: a read takes about
    2.5 s): the replica stays ready and issues, slower. A probe deadline shorter than the store's
    own would call every replica down at once and turn slowness into an outage."""
    a = await etcd_fleet.start("ca-0", through_links=True)
    assert a.ca is not None
    raw = await a.ca.attest()
    entry = await create_entry(a, raw.spiffe_id, "/slow")
    request = {"requests": [{"entry_id": entry["id"], "csr": csr_pem(new_key())}]}
    status, _, _ = await agent_call(raw, "POST", "/v1/agent/x509", request)
    assert status == 200
    for link in a.cuts:
        link.delay = 1.2
    start = time.monotonic()
    status, answer, _ = await agent_call(raw, "POST", "/v1/agent/x509", request)
    issued_in = time.monotonic() - start
    assert status == 200, answer
    assert "svid_chain" in answer["results"][0], answer
    sampled_until = time.monotonic() + 2 * PROBE_INTERVAL + PROBE_TIMEOUT
    while time.monotonic() < sampled_until:
        assert await a.ready(), (await a.get("/readyz"))[1]
        await asyncio.sleep(0.2)  # sampling readiness over two probes and more
    assert not a.logged("ca.store_down")
    print(f"\nX509-SVID issued through a slow etcd link in {issued_in:.1f} s")
