"""The etcd issued-serial index by SPIFFE ID and agent (``issued-ids/``, ``issued-agents/``), and
the schema 1 -> 2 upgrade that writes those keys for records an older s2s wrote.

A real etcd (one per module); each test has its own trust domain prefix. SQLite answers the same
queries as the reference.
"""

from __future__ import annotations

import asyncio
import doctest
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from contract import AGENT_A, AGENT_B, issued, sid

from s2s.core.errors import Conflict
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.client import EtcdClient
from s2s.store import etcd_issued
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import doc
from s2s.store.records import IssuedSerial
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdServer, OpenEtcd, etcd_store_opener

pytest_plugins = ("etcd_fixtures",)

AGENT_AB = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a/b")  # A's path + "/b"
PATHS = ("/a", "/a/b", "/ab", "/a/b/c")  # each a prefix of another's text


@pytest.fixture
async def open_etcd(etcd_server: EtcdServer, trust_domain: str) -> AsyncIterator[OpenEtcd]:
    async with etcd_store_opener(etcd_server.endpoint, trust_domain=trust_domain) as opener:
        yield opener


def _hash(spiffe_id: SpiffeId) -> str:
    return hashlib.sha256(str(spiffe_id).encode()).hexdigest()


async def _keys(raw: EtcdClient, td: str, name: str) -> list[str]:
    prefix = f"/s2s/{td}/{name}/".encode()
    kvs, _ = await raw.get_prefix(prefix)
    return [kv.key[len(prefix) :].decode() for kv in kvs]


def _table() -> list[IssuedSerial]:
    combos = itertools.product(PATHS, (AGENT_A, AGENT_AB, None), ("int-1", "int-2"))
    return [
        issued(serial, path, agent_id=agent, issuer=issuer)
        for serial, (path, agent, issuer) in enumerate(combos, start=1)
    ]


async def test_queries_by_id_agent_and_issuer_match_sqlite(
    open_etcd: OpenEtcd, open_sqlite: Callable[..., Awaitable[SqliteStore]]
) -> None:
    etcd, sqlite = await open_etcd(max_txn_ops=16), await open_sqlite()
    records = _table()
    for store in (etcd, sqlite):
        await store.add_issued(records[::-1])  # several chunks on etcd (16 ops, 2 or 3 each)
    ids = (None, *(sid(p) for p in PATHS), sid("/absent"), AGENT_A)
    agents = (None, AGENT_A, AGENT_AB, AGENT_B)
    for spiffe_id, agent_id, issuer_id in itertools.product(ids, agents, (None, "int-1", "x")):
        query: dict[str, Any] = {"spiffe_id": spiffe_id, "agent_id": agent_id}
        query["issuer_id"] = issuer_id
        want = await sqlite.list_issued(**query)
        assert await etcd.list_issued(**query) == want, query
    assert [r.serial for r in await etcd.list_issued(spiffe_id=sid("/a"))] == [1, 2, 3, 4, 5, 6]
    assert len(await etcd.list_issued(agent_id=AGENT_A)) == 8


async def test_every_record_has_its_keys_by_id_on_its_own_lease(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    await store.add_issued([issued(1, "/a"), issued(2, "/a/b", agent_id=None, minutes=600)])
    assert await _keys(raw, trust_domain, "issued-ids") == sorted(
        [f"{_hash(sid('/a'))}/{1:040x}", f"{_hash(sid('/a/b'))}/{2:040x}"]
    )
    assert await _keys(raw, trust_domain, "issued-agents") == [f"{_hash(AGENT_A)}/{1:040x}"]
    prefix = f"/s2s/{trust_domain}"
    agent_key = f"{prefix}/issued-agents/{_hash(AGENT_A)}/{1:040x}"
    for serial, secondary in (
        (1, f"{prefix}/issued-ids/{_hash(sid('/a'))}/{1:040x}"),
        (1, agent_key),
        (2, f"{prefix}/issued-ids/{_hash(sid('/a/b'))}/{2:040x}"),
    ):
        primary = await raw.get(f"{prefix}/issued/{serial:040x}".encode())
        by_id = await raw.get(secondary.encode())
        assert primary is not None
        assert by_id is not None
        assert by_id.lease == primary.lease != 0
        assert by_id.mod_revision == primary.mod_revision  # one transaction


async def test_the_keys_by_id_end_with_the_records_lease(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    """Expired records leave with their lease (prune leaves them: test_etcd_prune.py); the
    keys by ID ride on the same lease and go in the same instant."""
    store = await open_etcd()
    gone = [issued(i, f"/p{i % 3}", minutes=5) for i in range(1, 201)]
    await store.add_issued([*gone, issued(500, "/p1", minutes=60)])
    kv = await raw.get(f"/s2s/{trust_domain}/issued/{1:040x}".encode())
    assert kv is not None
    await raw.revoke_lease(kv.lease)  # as etcd does when the lease's TTL runs out
    assert await _keys(raw, trust_domain, "issued-ids") == [f"{_hash(sid('/p1'))}/{500:040x}"]
    assert await _keys(raw, trust_domain, "issued-agents") == [f"{_hash(AGENT_A)}/{500:040x}"]
    assert [r.serial for r in await store.list_issued(spiffe_id=sid("/p1"))] == [500]


async def test_a_failed_batch_leaves_no_key_by_id(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd(max_txn_ops=16)
    await store.add_issued([issued(150, "/taken", agent_id=AGENT_B)])
    with pytest.raises(Conflict, match="serial 96"):  # 150 = 0x96, in a late chunk
        await store.add_issued([issued(i, f"/p{i}") for i in range(1, 201)])
    assert await _keys(raw, trust_domain, "issued-ids") == [f"{_hash(sid('/taken'))}/{150:040x}"]
    assert await _keys(raw, trust_domain, "issued-agents") == [f"{_hash(AGENT_B)}/{150:040x}"]
    assert await store.list_issued(agent_id=AGENT_A) == ()


async def test_a_batch_larger_than_one_transaction_is_written_whole(open_etcd: OpenEtcd) -> None:
    store = await open_etcd()  # 128 ops per transaction; 300 records need 900 puts
    await store.add_issued([issued(i, "/many") for i in range(1, 301)])
    assert len(await store.list_issued(spiffe_id=sid("/many"))) == 300
    assert len(await store.list_issued(agent_id=AGENT_A)) == 300


async def test_a_key_by_id_is_only_a_pointer(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    """A key under the ID's hash that names another ID's serial, or a serial that is gone
    (expired between the two reads), adds nothing."""
    store = await open_etcd()
    await store.add_issued([issued(1, "/a"), issued(2, "/other", agent_id=AGENT_B)])
    under_a = f"/s2s/{trust_domain}/issued-ids/{_hash(sid('/a'))}/"
    await raw.put(f"{under_a}{2:040x}".encode(), b"")  # another ID's record
    await raw.put(f"{under_a}{3:040x}".encode(), b"")  # no record
    await raw.put(f"/s2s/{trust_domain}/issued-agents/{_hash(AGENT_A)}/{2:040x}".encode(), b"")
    assert await store.list_issued(spiffe_id=sid("/a")) == (issued(1, "/a"),)
    assert await store.list_issued(agent_id=AGENT_A) == (issued(1, "/a"),)
    assert await store.list_issued(agent_id=AGENT_B) == (issued(2, "/other", agent_id=AGENT_B),)


def test_doctests_of_the_index_module() -> None:
    result = doctest.testmod(etcd_issued)
    assert (result.failed, result.attempted > 0) == (0, True)


# -- schema 1 -> 2 --


async def _schema_1_prefix(raw: EtcdClient, td: str, records: list[IssuedSerial]) -> int:
    """What an s2s of schema 1 left: ``meta`` schema 1, ``issued/<serial>`` alone, on a lease."""
    meta = {"app": "s2s-ca-store", "schema": 1}
    await raw.put(f"/s2s/{td}/meta".encode(), json.dumps(meta, sort_keys=True).encode())
    lease = await raw.grant_lease(3600)
    for r in records:
        await raw.put(f"/s2s/{td}/issued/{r.serial:040x}".encode(), doc(r), lease=lease)
    return lease


async def _schema(raw: EtcdClient, td: str) -> int:
    kv = await raw.get(f"/s2s/{td}/meta".encode())
    assert kv is not None
    return int(json.loads(kv.value)["schema"])


async def test_a_schema_1_prefix_is_indexed_on_open(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    old = [issued(i, PATHS[i % 4], agent_id=(AGENT_A, None)[i % 2]) for i in range(1, 301)]
    lease = await _schema_1_prefix(raw, trust_domain, old)
    assert await _keys(raw, trust_domain, "issued-ids") == []

    store = await open_etcd(max_txn_ops=16)

    assert await _schema(raw, trust_domain) == 2
    assert len(await _keys(raw, trust_domain, "issued-ids")) == 300
    assert len(await _keys(raw, trust_domain, "issued-agents")) == 150
    kvs, _ = await raw.get_prefix(f"/s2s/{trust_domain}/issued-ids/".encode())
    assert {kv.lease for kv in kvs} == {lease}  # the record's own lease
    for path in PATHS:
        want = tuple(r for r in old if r.spiffe_id == sid(path))
        assert await store.list_issued(spiffe_id=sid(path)) == want
    assert await store.list_issued(agent_id=AGENT_A) == tuple(old[1::2])


async def test_a_record_an_old_replica_writes_after_the_upgrade_is_not_found_by_id(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    """Why every replica must run schema 2 before revoking by ID: a schema 1 replica still
    running writes ``issued/`` alone, which only the full listing sees."""
    await _schema_1_prefix(raw, trust_domain, [issued(1, "/a")])
    store = await open_etcd()
    late = issued(2, "/a")
    await raw.put(f"/s2s/{trust_domain}/issued/{2:040x}".encode(), doc(late))
    assert await store.list_issued(spiffe_id=sid("/a")) == (issued(1, "/a"),)
    assert await store.list_issued() == (issued(1, "/a"), late)
    # the remedy once the last old replica has stopped: meta back to schema 1, open once more
    await _schema_1_prefix(raw, trust_domain, [])
    await open_etcd()
    assert await _schema(raw, trust_domain) == 2
    assert await store.list_issued(spiffe_id=sid("/a")) == (issued(1, "/a"), late)


async def test_two_replicas_upgrading_at_once(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    old = [issued(i, PATHS[i % 4]) for i in range(1, 401)]
    await _schema_1_prefix(raw, trust_domain, old)
    one, two = await asyncio.gather(open_etcd(max_txn_ops=16), open_etcd(max_txn_ops=16))
    assert await _schema(raw, trust_domain) == 2
    assert len(await _keys(raw, trust_domain, "issued-ids")) == 400
    for store in (one, two):
        assert len(await store.list_issued(agent_id=AGENT_A)) == 400
        assert len(await store.list_issued(spiffe_id=sid("/a"))) == 100


async def test_an_upgrade_that_loses_the_meta_swap_checks_again(
    etcd_server: EtcdServer, raw: EtcdClient, trust_domain: str
) -> None:
    """``meta`` changed during the backfill: the upgrade reads it again (here: still schema 1,
    so it backfills again and then wins) instead of writing over it."""
    await _schema_1_prefix(raw, trust_domain, [issued(1, "/a")])
    meta = f"/s2s/{trust_domain}/meta".encode()
    backfills = []

    class Racing(EtcdStore):
        async def _backfill_issued_index(self) -> int:
            backfills.append(await super()._backfill_issued_index())
            if len(backfills) == 1:  # another replica touched meta meanwhile
                await raw.put(meta, json.dumps({"app": "s2s-ca-store", "schema": 1}).encode())
            return backfills[-1]

    async with await Racing.open(etcd_server.endpoint, trust_domain=trust_domain) as store:
        assert backfills == [1, 1]
        assert await _schema(raw, trust_domain) == 2
        assert await store.list_issued(spiffe_id=sid("/a")) == (issued(1, "/a"),)


async def test_an_upgraded_prefix_is_not_backfilled_again(
    etcd_server: EtcdServer, raw: EtcdClient, trust_domain: str
) -> None:
    await _schema_1_prefix(raw, trust_domain, [issued(1, "/a")])
    backfills = []

    class Counting(EtcdStore):
        async def _backfill_issued_index(self) -> int:
            backfills.append(await super()._backfill_issued_index())
            return backfills[-1]

    for _ in range(2):
        async with await Counting.open(etcd_server.endpoint, trust_domain=trust_domain):
            pass
    assert backfills == [1]
