"""The etcd backend: the shared contract against a real etcd, plus what only etcd can get wrong.

One etcd per module (``s2s.testing_etcd``); each test gets its own trust domain, hence its own
``/s2s/<td>/`` prefix. A machine without etcd fails these tests, saying to run ``make test``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from contract import T0, StoreContract, entry, issued, revocation, token

from s2s.core.errors import Conflict, InvalidConfig, NotFound, StoreError
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.etcd.client import EtcdClient
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_keys import SCHEMA_VERSION
from s2s.store.factory import open_store
from s2s.store.records import JoinTokenRecord, Topic
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdMissing, EtcdServer, OpenEtcd, etcd_store_opener

pytest_plugins = ("etcd_fixtures",)


@pytest.fixture
async def open_etcd(etcd_server: EtcdServer, trust_domain: str) -> AsyncIterator[OpenEtcd]:
    """Open handles on one trust domain's prefix (keyword arguments go to ``EtcdStore.open``)."""
    endpoint = etcd_server.endpoint
    async with etcd_store_opener(endpoint, trust_domain=trust_domain, poll_interval=0.05) as opener:
        yield opener


class TestEtcdContract(StoreContract):
    LEFT_TO_LEASES = True  # issued serials and used marks: see test_etcd_prune.py

    @pytest.fixture
    def open_store(self, open_etcd: OpenEtcd) -> OpenEtcd:
        return open_etcd


# -- the key layout (docs/internal-contracts.md, "etcd key layout") --


async def test_revocations_live_under_the_revoked_prefix(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    record = revocation(0xABC, reason="key leaked")
    await store.add_revocation(record)
    kv = await raw.get(f"/s2s/{trust_domain}/revoked/serial/abc".encode())
    assert kv is not None
    assert RevocationRecord.from_json(json.loads(kv.value)) == record
    assert kv.lease != 0  # rides on a lease


async def test_a_used_join_token_moves_to_its_own_prefix(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    """A CA that predates retries reads join-tokens/ only: a used token is not there, so it
    refuses the token whatever the key."""
    store = await open_etcd()
    token_hash, record = token("t1")
    await store.create_join_token(record)
    key = bytes(range(32))
    await store.consume_join_token(token_hash, now=T0, key_hash=key)
    prefix = f"/s2s/{trust_domain}/"
    assert await raw.get(f"{prefix}join-tokens/{token_hash.hex()}".encode()) is None
    kv = await raw.get(f"{prefix}join-tokens-used/{token_hash.hex()}".encode())
    assert kv is not None
    assert kv.lease != 0  # rides on a lease
    assert JoinTokenRecord.from_json(json.loads(kv.value)).used_by == key
    assert await raw.get(f"{prefix}join-token-ids/t1".encode()) is not None  # id stays taken
    with pytest.raises(Conflict):
        await store.create_join_token(record)


async def test_each_topic_has_its_own_revision_key(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    await store.create_entry(entry("e1"))
    kv = await raw.get(f"/s2s/{trust_domain}/topics/entries".encode())
    assert kv is not None
    assert await store.revision(Topic.ENTRIES) == kv.mod_revision
    assert await store.revision(Topic.AGENTS) == 0


async def test_entry_uniqueness_index_follows_updates_and_deletes(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    await store.create_entry(entry("e1", selectors=["unix:uid:1"]))
    await store.update_entry(entry("e1", selectors=["unix:uid:2"]), expected_revision=1)
    await store.create_entry(entry("e2", selectors=["unix:uid:1"]))  # the old key is free
    await store.update_entry(entry("e2", selectors=["unix:uid:1"], hint="h"), expected_revision=1)
    await store.delete_entry("e1")
    index, _ = await raw.get_prefix(f"/s2s/{trust_domain}/entry-keys/".encode())
    assert [kv.value for kv in index] == [b"e2"]  # nothing left behind
    await store.create_entry(entry("e3", selectors=["unix:uid:2"]))


async def test_trust_domains_do_not_see_each_other(open_etcd: OpenEtcd) -> None:
    mine = await open_etcd()
    other = await open_etcd(trust_domain=f"other-{uuid.uuid4().hex[:8]}.example")
    await mine.create_entry(entry("e1"))
    await mine.set_setting("trust_domain", "mine")
    await mine.add_revocation(revocation(1))
    assert await other.list_entries() == ()
    assert await other.get_setting("trust_domain") is None
    assert await other.list_revocations() == ()
    assert await other.revision(Topic.ENTRIES) == 0
    await other.create_entry(entry("e1"))  # same id, other trust domain: no conflict


async def test_join_token_text_never_reaches_etcd(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    _, record = token("t1")
    await store.create_join_token(record)
    kvs, _ = await raw.get_prefix(f"/s2s/{trust_domain}/".encode())
    assert kvs
    assert not any(b"secret-t1" in kv.key + kv.value for kv in kvs)


async def test_expiring_records_share_leases_by_bucket(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd(lease_bucket=dt.timedelta(minutes=1))
    # 300 serials expiring over 5 minutes, in 1-minute buckets: at most 6 leases, not 300
    records = [issued(i, minutes=i / 60) for i in range(1, 301)]
    await store.add_issued(records)
    kvs, _ = await raw.get_prefix(f"/s2s/{trust_domain}/issued/".encode())
    assert len(kvs) == 300
    leases = {kv.lease for kv in kvs}
    assert 0 not in leases
    assert 2 <= len(leases) <= 6


async def test_a_burst_of_writes_makes_one_lease_per_bucket(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    await asyncio.gather(*(store.add_revocation(revocation(i)) for i in range(1, 101)))
    kvs, _ = await raw.get_prefix(f"/s2s/{trust_domain}/revoked/".encode())
    assert len(kvs) == 100
    assert len({kv.lease for kv in kvs}) == 1


async def test_lease_outlives_the_record_by_the_grace(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd(lease_grace=dt.timedelta(hours=1))
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    await store.add_revocation(RevocationRecord.for_jti("j1", revoked_at=T0, expires_at=soon))
    kv = await raw.get(f"/s2s/{trust_domain}/revoked/jti/j1".encode())
    assert kv is not None
    ttl = await raw.lease_ttl(kv.lease)
    assert 3600 + 60 <= ttl <= 3600 + 3 * 60


async def test_prefix_reads_page_through_one_snapshot(raw: EtcdClient) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    for i in range(25):
        await raw.put(prefix + f"{i:03d}".encode(), str(i).encode())
    await raw.put(prefix[:-1] + b"0", b"outside the prefix")
    kvs, revision = await raw.get_prefix(prefix, page=7)
    assert [kv.value for kv in kvs] == [str(i).encode() for i in range(25)]
    assert revision == max(kv.mod_revision for kv in kvs) + 1  # the later outside put


def test_missing_etcd_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    with pytest.raises(EtcdMissing, match="run `make test`"):
        EtcdServer(Path("/nonexistent"))


# -- what the store refuses --


async def test_foreign_data_under_the_prefix_is_refused(
    etcd_server: EtcdServer, raw: EtcdClient, trust_domain: str
) -> None:
    await raw.put(f"/s2s/{trust_domain}/meta".encode(), b'{"app": "someone-else"}')
    with pytest.raises(InvalidConfig, match="another application"):
        await EtcdStore.open(etcd_server.endpoint, trust_domain=trust_domain)


async def test_newer_schema_is_refused(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    await (await open_etcd()).close()
    meta = {"app": "s2s-ca-store", "schema": SCHEMA_VERSION + 1}
    await raw.put(f"/s2s/{trust_domain}/meta".encode(), json.dumps(meta).encode())
    with pytest.raises(InvalidConfig, match="newer than this s2s"):
        await open_etcd()


@pytest.mark.parametrize("bad", ["", "Example.ORG", "spiffe://example.org/path", "a b"])
async def test_bad_trust_domain_is_refused(etcd_server: EtcdServer, bad: str) -> None:
    with pytest.raises(InvalidConfig, match="trust domain"):
        await EtcdStore.open(etcd_server.endpoint, trust_domain=bad)


async def test_unreadable_record_is_a_store_error(
    open_etcd: OpenEtcd, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_etcd()
    await store.create_entry(entry("e1"))
    await raw.put(f"/s2s/{trust_domain}/entries/e1".encode(), b'{"id": 5}')
    with pytest.raises(StoreError, match="unreadable"):
        await store.get_entry("e1")
    with pytest.raises(StoreError, match="unreadable"):
        await store.list_entries()


async def test_big_issued_batch_is_all_or_nothing(open_etcd: OpenEtcd) -> None:
    store = await open_etcd(max_txn_ops=16)
    await store.add_issued([issued(150)])
    with pytest.raises(Conflict, match="serial 96"):  # 150 = 0x96, in the 10th chunk of 16
        await store.add_issued([issued(i) for i in range(1, 201)])
    assert await store.list_issued() == (issued(150),)
    await store.add_issued([issued(i) for i in range(1, 101)])  # 7 chunks, all written
    assert len(await store.list_issued()) == 101


async def test_duplicate_serial_in_one_batch(open_etcd: OpenEtcd) -> None:
    store = await open_etcd()
    with pytest.raises(Conflict, match="twice"):
        await store.add_issued([issued(5), issued(5, "/other")])
    assert await store.list_issued() == ()


async def test_get_revocation_by_kind(open_etcd: OpenEtcd) -> None:
    store = await open_etcd()
    await store.add_revocation(revocation(0xA))
    with pytest.raises(NotFound):
        await store.get_revocation(RevocationKind.JTI, "a")


async def test_closed_store_refuses_to_wait(open_etcd: OpenEtcd) -> None:
    store = await open_etcd()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.wait_for_change(Topic.ENTRIES, 0, timeout=1)
    assert store._watch is None  # no watch task left behind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_dead_endpoint_in_the_list_is_skipped(
    etcd_server: EtcdServer, trust_domain: str, host: str
) -> None:
    dead = f"{host}:{_closed_port()}"
    endpoints = f"{dead},{host}:{etcd_server.client_port}"
    store = await EtcdStore.open(endpoints, trust_domain=trust_domain, timeout=3)
    try:
        await store.create_entry(entry("e1"))
    finally:
        await store.close()
    with pytest.raises(StoreError, match="unavailable"):
        await EtcdStore.open(dead, trust_domain=trust_domain, timeout=3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- open_store URLs --


async def test_open_store_etcd_url(etcd_server: EtcdServer, trust_domain: str) -> None:
    store = await open_store(f"{etcd_server.url}/{trust_domain}")
    try:
        assert isinstance(store, EtcdStore)
        await store.create_entry(entry("e1"))
    finally:
        await store.close()
    again = await open_store(etcd_server.url, trust_domain=trust_domain)
    try:
        assert [e.id for e in await again.list_entries()] == ["e1"]
    finally:
        await again.close()


async def test_open_store_sqlite_url(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/store.db")
    try:
        assert isinstance(store, SqliteStore)
    finally:
        await store.close()
    with pytest.raises(InvalidConfig, match="s2s-ca init"):
        await open_store(f"sqlite://{tmp_path}/absent.db", create=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/var/lib/s2s/store.db", "sqlite:///path"),
        ("mysql://localhost/s2s", "unknown store scheme"),
        ("sqlite://relative/store.db", "absolute path"),
        ("etcd://127.0.0.1:2379", "needs the trust domain"),
        ("etcd://127.0.0.1/example.org", "host:port"),
        ("etcd://127.0.0.1:99999/example.org", "host:port"),
        ("etcd://:2379/example.org", "host:port"),
    ],
)
async def test_bad_store_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        await open_store(url)


async def test_trust_domain_must_agree_with_the_url() -> None:
    with pytest.raises(InvalidConfig, match="names trust domain"):
        await open_store("etcd://127.0.0.1:2379/a.example", trust_domain="b.example")
