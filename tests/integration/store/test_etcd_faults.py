"""The etcd store when things go wrong: etcd down, restarted, compacted, leases, TLS.

A real etcd (``s2s.testing_etcd``) that the tests stop, kill and restart on the same data dir and
ports. Waits poll with deadlines; the only timed waits are for leases, which count real seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s2s.core.errors import Conflict, InvalidConfig, StoreError
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationRecord
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.channel import EtcdTls
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import WatchUpdate, delete_op
from s2s.store.etcd import EtcdStore
from s2s.store.records import IssuedKind, IssuedSerial, JoinTokenRecord, Topic
from s2s.testing_etcd import EtcdCluster, EtcdServer, OpenEtcd, etcd_store_opener
from s2s.testing_etcd_tls import EtcdTlsFiles

pytest_plugins = ("etcd_fixtures",)

DEADLINE = 10.0
AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a")


def entry(eid: str) -> RegistrationEntry:
    return RegistrationEntry(
        id=eid,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/{eid}"),
        parent_id=AGENT,
        selectors=parse_selectors(["unix:uid:1001"]),
    )


def revoked_jti(jti: str, *, seconds: float = 3600) -> RevocationRecord:
    now = dt.datetime.now(dt.UTC)
    return RevocationRecord.for_jti(
        jti, revoked_at=now, expires_at=now + dt.timedelta(seconds=seconds)
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def open_etcd(etcd: EtcdServer) -> AsyncIterator[OpenEtcd]:
    trust_domain = f"t{uuid.uuid4().hex[:12]}.example"
    async with etcd_store_opener(etcd.endpoint, trust_domain=trust_domain, timeout=3.0) as opener:
        yield opener


@pytest.fixture
async def raw(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    client = await EtcdClient.connect(etcd.endpoint, timeout=3.0)
    yield client
    await client.close()


# -- etcd down --


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_writes_fail_loudly_while_etcd_is_down(
    open_etcd: OpenEtcd, etcd: EtcdServer, how: str
) -> None:
    store = await open_etcd()
    before = await store.revision(Topic.REVOCATIONS)
    getattr(etcd, how)()
    writes: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.add_revocation(revoked_jti("j1")),
        lambda: store.create_entry(entry("e1")),
        lambda: store.set_setting("trust_domain", "example.org"),
        lambda: store.cas_state("root_rotation", None, "prepared"),
    ]
    for write in writes:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"etcd at .* is unavailable"):
            await write()
        assert time.monotonic() - started < 5
    etcd.start()
    # nothing was applied behind our back, and the same handle works again
    assert await store.list_revocations() == ()
    assert await store.list_entries() == ()
    assert await store.get_state("root_rotation") is None
    assert await store.revision(Topic.REVOCATIONS) == before
    assert await store.add_revocation(revoked_jti("j1")) is True


async def test_opening_without_etcd_fails_loudly(etcd: EtcdServer) -> None:
    etcd.stop()
    with pytest.raises(StoreError, match="unavailable"):
        await EtcdStore.open(etcd.endpoint, trust_domain="example.org", timeout=2.0)


# -- restarts and watches --


async def test_waiter_misses_no_change_across_a_restart(
    open_etcd: OpenEtcd, etcd: EtcdServer
) -> None:
    waiter_store = await open_etcd(poll_interval=600)  # only the watch can wake it in time
    writer = await open_etcd()
    current = await waiter_store.revision(Topic.REVOCATIONS)
    waiter = asyncio.create_task(
        waiter_store.wait_for_change(Topic.REVOCATIONS, current, timeout=60)
    )
    await eventually(lambda: _watching(waiter_store), "the store watches its topics")
    etcd.restart()
    await writer.add_revocation(revoked_jti("during-restart"))
    assert await asyncio.wait_for(waiter, DEADLINE) > current


async def _watching(store: EtcdStore) -> bool:
    await asyncio.sleep(0)
    return store._watch is not None and not store._watch.done()


async def test_follower_resumes_after_restart_without_a_gap(
    raw: EtcdClient, etcd: EtcdServer
) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    await raw.put(prefix + b"a", b"1")
    updates = raw.follow_prefix(prefix)
    first = await anext(updates)
    assert first.snapshot is not None
    assert [kv.key for kv in first.snapshot] == [prefix + b"a"]
    await raw.put(prefix + b"b", b"2")
    assert _keys(await asyncio.wait_for(anext(updates), DEADLINE)) == [(False, prefix + b"b")]

    etcd.restart()  # the follower is not reading meanwhile: its stream dies unseen
    writer = await EtcdClient.connect(etcd.endpoint)
    try:
        await writer.put(prefix + b"c", b"3")
        await writer.txn([], [delete_op(prefix + b"a")])
    finally:
        await writer.close()

    seen: list[tuple[bool, bytes]] = []
    while len(seen) < 2:
        update = await asyncio.wait_for(anext(updates), DEADLINE)
        assert update.snapshot is None, "resumed from the last revision, not re-listed"
        seen += _keys(update)
    assert seen == [(False, prefix + b"c"), (True, prefix + b"a")]
    await updates.aclose()


def _keys(update: WatchUpdate) -> list[tuple[bool, bytes]]:
    return [(e.deleted, e.kv.key) for e in update.events]


async def test_compacted_start_revision_gives_a_full_relist(raw: EtcdClient) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    old = await raw.put(prefix + b"gone", b"1")
    await raw.put(prefix + b"kept", b"2")
    await raw.txn([], [delete_op(prefix + b"gone")])
    latest = await raw.put(prefix + b"new", b"3")
    await raw.compact(latest)
    updates = raw.follow_prefix(prefix, start_revision=old + 1)
    try:
        update = await asyncio.wait_for(anext(updates), DEADLINE)
        assert update.snapshot is not None, "a compacted revision must give a re-list"
        assert {kv.key: kv.value for kv in update.snapshot} == {
            prefix + b"kept": b"2",
            prefix + b"new": b"3",
        }
        assert update.revision >= latest
        await raw.put(prefix + b"after", b"4")  # and the watch goes on from there
        assert _keys(await asyncio.wait_for(anext(updates), DEADLINE)) == [
            (False, prefix + b"after")
        ]
    finally:
        await updates.aclose()


async def test_uncompacted_start_revision_replays_history(raw: EtcdClient) -> None:
    prefix = f"/test/{uuid.uuid4().hex}/".encode()
    old = await raw.put(prefix + b"x", b"1")
    await raw.put(prefix + b"y", b"2")
    updates = raw.follow_prefix(prefix, start_revision=old)
    try:
        update = await asyncio.wait_for(anext(updates), DEADLINE)
        assert update.snapshot is None
        assert _keys(update) == [(False, prefix + b"x"), (False, prefix + b"y")]
    finally:
        await updates.aclose()


async def test_waiter_wakes_after_restart_and_compaction(
    open_etcd: OpenEtcd, etcd: EtcdServer, raw: EtcdClient
) -> None:
    waiter_store = await open_etcd(poll_interval=600)
    writer = await open_etcd()
    current = await waiter_store.revision(Topic.ENTRIES)
    waiter = asyncio.create_task(waiter_store.wait_for_change(Topic.ENTRIES, current, timeout=60))
    await eventually(lambda: _watching(waiter_store), "the store watches its topics")
    etcd.stop()
    etcd.start()
    await writer.create_entry(entry("e1"))
    for i in range(5):
        await raw.put(b"/test/filler", str(i).encode())
    await raw.compact(await raw.put(b"/test/filler", b"last"))
    assert await asyncio.wait_for(waiter, DEADLINE) > current


# -- a three-member cluster losing the member the clients talk to --


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


async def test_cluster_survives_losing_a_member(cluster: EtcdCluster) -> None:
    trust_domain = f"t{uuid.uuid4().hex[:12]}.example"
    store = await EtcdStore.open(cluster.endpoints, trust_domain=trust_domain, timeout=3.0)
    waiter_store = await EtcdStore.open(
        cluster.endpoints, trust_domain=trust_domain, timeout=3.0, poll_interval=600
    )
    try:
        for i in range(5):
            await store.create_entry(entry(f"e{i}"))
        current = await waiter_store.revision(Topic.ENTRIES)
        waiter = asyncio.create_task(
            waiter_store.wait_for_change(Topic.ENTRIES, current, timeout=60)
        )
        await eventually(lambda: _watching(waiter_store), "the store watches its topics")
        cluster.members[0].kill()  # the first endpoint: where both clients are connected

        async def written() -> bool:
            try:
                await store.create_entry(entry("after"))
            except StoreError:
                return False  # loudly refused while the client moves to another member
            except Conflict:
                pass  # an earlier attempt reported "may or may not have been applied": it was
            return True

        await eventually(written, "a write goes through another member")
        assert await asyncio.wait_for(waiter, DEADLINE) > current
        ids = [e.id for e in await waiter_store.list_entries()]
        assert ids == ["after", "e0", "e1", "e2", "e3", "e4"]
    finally:
        await store.close()
        await waiter_store.close()
        cluster.members[0].start()


# -- leases --


async def test_lease_expiry_removes_expiring_records(open_etcd: OpenEtcd, raw: EtcdClient) -> None:
    store = await open_etcd(lease_grace=dt.timedelta(0), lease_bucket=dt.timedelta(seconds=1))
    now = dt.datetime.now(dt.UTC)
    soon, later = now + dt.timedelta(seconds=1), now + dt.timedelta(hours=1)
    sid = SpiffeId.parse("spiffe://example.org/billing")
    for name, expiry in (("short", soon), ("long", later)):
        await store.create_join_token(
            JoinTokenRecord(name, name.encode() * 8, expires_at=expiry, created_at=now)
        )
        await store.add_revocation(
            RevocationRecord.for_jti(name, revoked_at=now, expires_at=expiry)
        )
    await store.add_issued(
        [
            IssuedSerial(s, IssuedKind.X509_SVID, sid, "int-1", now, expiry)
            for s, expiry in ((1, soon), (2, later))
        ]
    )
    await store.create_entry(entry("e1"))

    async def short_ones_gone() -> bool:
        return [r.value for r in await store.list_revocations()] == ["long"]

    await eventually(short_ones_gone, "the short revocation's lease expired")
    assert [i.serial for i in await store.list_issued()] == [2]
    prefix = store.key("join-token")
    kvs, _ = await raw.get_prefix(prefix)
    assert sorted(kv.key.rsplit(b"/", 1)[1] for kv in kvs) == sorted(
        [b"long", (b"long" * 8).hex().encode()]
    )
    assert len(await store.list_entries()) == 1  # not an expiring record


async def test_kept_lease_outlives_its_ttl(raw: EtcdClient) -> None:
    base = f"/test/{uuid.uuid4().hex}/".encode()
    key_kept, key_free = base + b"kept", base + b"free"
    kept = await raw.keep_alive(1)
    free = await raw.grant_lease(1)
    await raw.put(key_kept, b"1", lease=kept.id)
    await raw.put(key_free, b"1", lease=free)

    async def free_gone() -> bool:
        return await raw.get(key_free) is None

    await eventually(free_gone, "a lease without keep-alives expires")
    await asyncio.sleep(1.5)  # another full TTL: only keep-alives can have kept this key
    assert await raw.get(key_kept) is not None
    assert not kept.lost.is_set()
    await kept.close()
    assert await raw.get(key_kept) is None  # closing revokes the lease


# -- TLS --


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> EtcdTlsFiles:
    return EtcdTlsFiles.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_etcd(
    tmp_path_factory: pytest.TempPathFactory, tls_files: EtcdTlsFiles
) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd-tls") / "data", tls=tls_files) as server:
        yield server


async def _open_tls(server: EtcdServer, tls: EtcdTls | None) -> EtcdStore:
    return await EtcdStore.open(
        server.endpoint, trust_domain=f"t{uuid.uuid4().hex[:8]}.example", tls=tls, timeout=3.0
    )


async def test_tls_with_client_certificate_files(
    tls_etcd: EtcdServer, tls_files: EtcdTlsFiles
) -> None:
    tls = EtcdTls.from_files(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    store = await _open_tls(tls_etcd, tls)
    try:
        await store.create_entry(entry("e1"))
        assert [e.id for e in await store.list_entries()] == ["e1"]
    finally:
        await store.close()


async def test_tls_from_memory_by_name(tls_etcd: EtcdServer, tls_files: EtcdTlsFiles) -> None:
    tls = EtcdTls(
        tls_files.ca.read_bytes(),
        tls_files.client_cert.read_bytes(),
        tls_files.client_key.read_bytes(),
    )
    store = await EtcdStore.open(
        f"localhost:{tls_etcd.client_port}", trust_domain="example.org", tls=tls, timeout=3.0
    )
    try:
        assert await store.add_revocation(revoked_jti("j1")) is True
    finally:
        await store.close()


def _bad_tls(files: EtcdTlsFiles, case: str) -> EtcdTls | None:
    if case == "plaintext":
        return None
    if case == "wrong CA":
        return EtcdTls.from_files(files.other_ca, files.client_cert, files.client_key)
    if case == "no client certificate":
        return EtcdTls.from_files(files.ca)
    if case == "client certificate from another CA":
        return EtcdTls.from_files(files.ca, files.other_client_cert, files.other_client_key)
    assert case == "wrong server name"
    return EtcdTls.from_files(
        files.ca, files.client_cert, files.client_key, server_name="etcd.elsewhere.example"
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("plaintext", "Socket closed"),
        ("wrong CA", "CERTIFICATE_VERIFY_FAILED"),
        ("no client certificate", "unavailable"),  # etcd drops the handshake
        ("client certificate from another CA", "unavailable"),
        ("wrong server name", "Hostname Verification"),
    ],
)
async def test_tls_refusals(
    tls_etcd: EtcdServer, tls_files: EtcdTlsFiles, case: str, reason: str
) -> None:
    with pytest.raises(StoreError, match=reason):
        await _open_tls(tls_etcd, _bad_tls(tls_files, case))


def test_tls_settings_are_checked(tls_files: EtcdTlsFiles, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="PEM certificate"):
        EtcdTls(b"not a certificate")
    with pytest.raises(InvalidConfig, match="needs its key"):
        EtcdTls(tls_files.ca.read_bytes(), cert_pem=tls_files.client_cert.read_bytes())
    with pytest.raises(InvalidConfig, match="cannot read"):
        EtcdTls.from_files(tmp_path / "absent.pem")
    tls = EtcdTls.from_files(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    assert b"PRIVATE" not in repr(tls).encode()
