"""The clustered ``Store``: etcd v3, for several CA replicas sharing one trust domain.

Everything lives under ``/s2s/<trust-domain>/`` as JSON (the layout is in
docs/internal-contracts.md, "etcd key layout"). Every write is one etcd transaction whose
compares (``version == 0`` for creates, ``mod_revision == what was read`` for updates) make
compare-and-swaps and single use hold across replicas; a lost compare is re-read and re-checked,
so the loser sees the same ``Conflict``/``NotFound`` it would have seen had it come second.

A topic's revision is the etcd ``mod_revision`` of ``topics/<topic>``, which every transaction
that changes the topic also writes: it never decreases and survives restarts. ``wait_for_change``
is woken by a watch on ``topics/`` (resumed after disconnects) plus a slow re-read.

Expiring records (join tokens, revocations, issued serials, used marks) ride on leases grouped by
expiry bucket (one lease per ``lease_bucket`` of expiry instants): etcd itself drops them about
``lease_grace`` after they expire, even if no CA runs ``prune``. ``prune(now)`` removes join tokens
and revocations on time and leaves issued serials and used marks to their leases (reading them
every run cost O(live certificates)). Lease deletions do not move topic revisions (watch the key
prefix to see them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import Conflict, InvalidConfig, InvalidSpiffeId
from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.etcd.channel import EtcdTls
from s2s.etcd.client import EtcdClient
from s2s.etcd.values import KeyValue, delete_op, get_op, mod_is, put_op, value_is, version_is
from s2s.store.codec import check_revision, check_text, decode_doc, revised
from s2s.store.entry_changes import EntryChanges
from s2s.store.etcd_expiring import EtcdExpiringRecords
from s2s.store.etcd_keys import check_entry_key, doc
from s2s.store.etcd_keyspace import Retry
from s2s.store.etcd_leases import DEFAULT_LEASE_GRACE
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    Topic,
)

__all__ = [
    "EtcdStore",
]


class EtcdStore(EtcdExpiringRecords):
    """The etcd ``Store``. Create with ``await EtcdStore.open(endpoints, trust_domain=...)``.

    Transactions, leases and change notification come from
    :class:`~s2s.store.etcd_keyspace.EtcdKeyspace`; join tokens, revocations, issued serials and
    ``prune`` from :class:`~s2s.store.etcd_expiring.EtcdExpiringRecords`."""

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str],
        *,
        trust_domain: str | TrustDomain,
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
        clock: Clock | None = None,
        lease_grace: dt.timedelta = DEFAULT_LEASE_GRACE,
        lease_bucket: dt.timedelta = dt.timedelta(minutes=1),
        poll_interval: float = 1.0,
        max_txn_ops: int = 128,
    ) -> EtcdStore:
        """Connect to ``endpoints`` (``"h:p,h:p"``) and open the store of ``trust_domain``.

        Raises ``StoreError`` if etcd cannot be reached, ``InvalidConfig`` if the prefix holds
        another application's data or a newer schema. An older schema is upgraded
        (:mod:`s2s.store.etcd_issued`). ``max_txn_ops`` must not exceed etcd's
        ``--max-txn-ops`` (128 by default). ``lease_grace``: how long expiring records stay
        after they expire (their lease ends that long after the end of their expiry bucket);
        the CA bounds it (``etcd_lease_grace`` in s2s.ca.store_config)."""
        try:
            td = (
                trust_domain
                if isinstance(trust_domain, TrustDomain)
                else TrustDomain.parse(trust_domain)
            )
        except InvalidSpiffeId as exc:
            raise InvalidConfig(f"the etcd store needs a valid trust domain: {exc}") from exc
        client = await EtcdClient.connect(endpoints, tls=tls, timeout=timeout)
        store = cls(
            client,
            td,
            clock=clock or SystemClock(),
            lease_grace=lease_grace,
            lease_bucket=lease_bucket,
            poll_interval=poll_interval,
            max_txn_ops=max(4, max_txn_ops),
        )
        try:
            await store._open_schema()
        except BaseException:
            await client.close()
            raise
        return store

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- settings and generic state --

    async def get_setting(self, key: str) -> str | None:
        kv = await self.c.get(self.key("settings", key))
        return None if kv is None else kv.value.decode()

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        check_text("setting", key, value)
        k = self.key("settings", key)
        compare = [version_is(k, 0)] if only_if_absent else []
        if not (await self._commit(compare, [put_op(k, value.encode())])).succeeded:
            raise Conflict(f"setting {key!r} is already set")

    async def list_settings(self) -> Mapping[str, str]:
        prefix = self.key("settings", "")
        kvs, _ = await self.c.get_prefix(prefix)
        return {kv.key[len(prefix) :].decode(): kv.value.decode() for kv in kvs}

    async def get_state(self, key: str) -> str | None:
        kv = await self.c.get(self.key("state", key))
        return None if kv is None else kv.value.decode()

    async def cas_state(
        self, key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        check_text("state", key, new)
        k = self.key("state", key)
        compare = version_is(k, 0) if expected is None else value_is(k, expected.encode())
        op = delete_op(k) if new is None else put_op(k, new.encode())
        topics = [] if topic is None else [Topic(topic)]
        if not (await self._commit([compare], [op], topics=topics)).succeeded:
            raise Conflict(f"state {key!r} was changed by someone else (compare-and-swap lost)")

    # -- authorities --

    async def create_authority(self, record: AuthorityRecord) -> None:
        k = self.key("authorities", record.id)
        ops = [put_op(k, doc(record))]
        if not (await self._commit([version_is(k, 0)], ops, topics=[Topic.AUTHORITIES])).succeeded:
            raise Conflict(f"authority {record.id} already exists")

    async def get_authority(self, authority_id: str) -> AuthorityRecord:
        return (await self._get_authority(authority_id))[0]

    async def _get_authority(self, authority_id: str) -> tuple[AuthorityRecord, KeyValue]:
        missing = f"no authority {authority_id!r}"
        k = self.key("authorities", authority_id)
        return await self._read(k, AuthorityRecord.from_json, missing)

    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        wanted = None if kind is None else AuthorityKind(kind)
        found = await self._list("authorities", AuthorityRecord.from_json)
        return tuple(
            sorted(
                (
                    r
                    for r in found
                    if (wanted is None or r.kind == wanted) and (owner is None or r.owner == owner)
                ),
                key=lambda r: (r.not_before, r.id),
            )
        )

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        expected, new = AuthorityState(expected), AuthorityState(new)

        def move(record: AuthorityRecord) -> AuthorityRecord:
            if record.state != expected:
                raise Conflict(
                    f"authority {authority_id} is {record.state}, not {expected}: "
                    f"it cannot move to {new}"
                )
            return dataclasses.replace(record, state=new)

        return await self._rewrite(
            lambda: self._get_authority(authority_id), move, Topic.AUTHORITIES
        )

    async def delete_authority(self, authority_id: str) -> None:
        await self._remove(lambda: self._get_authority(authority_id), Topic.AUTHORITIES)

    # -- registration entries --

    async def _get_entry(self, entry_id: str) -> tuple[RegistrationEntry, KeyValue]:
        missing = f"no registration entry {entry_id!r}"
        return await self._read(self.key("entries", entry_id), RegistrationEntry.from_json, missing)

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        stored = dataclasses.replace(entry, revision=1)
        k, index = self.key("entries", entry.id), self._keys.entry_index(entry)

        async def attempt() -> RegistrationEntry:
            compare = [version_is(k, 0), version_is(index, 0)]
            ops = [put_op(k, doc(stored)), put_op(index, entry.id.encode())]
            result = await self._commit(compare, ops, [get_op(k), get_op(index)], [Topic.ENTRIES])
            if result.succeeded:
                return stored
            if result.ranged(0) is not None:
                raise Conflict(f"entry {entry.id} already exists")
            check_entry_key(entry, result.ranged(1))
            raise Retry

        return await self._retrying(attempt)

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        async def attempt() -> RegistrationEntry:
            current, kv = await self._get_entry(entry.id)
            stored = revised(f"entry {entry.id}", current, entry, expected_revision)
            old, new = self._keys.entry_index(current), self._keys.entry_index(stored)
            compare = [mod_is(kv.key, kv.mod_revision)]
            ops = [put_op(kv.key, doc(stored))]
            if new != old:
                compare.append(version_is(new, 0))
                ops += [delete_op(old), put_op(new, entry.id.encode())]
            result = await self._commit(compare, ops, [get_op(new)], [Topic.ENTRIES])
            if result.succeeded:
                return stored
            check_entry_key(entry, result.ranged(0))
            raise Retry

        return await self._retrying(attempt)

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        async def attempt() -> RegistrationEntry:
            current, kv = await self._get_entry(entry_id)
            if expected_revision is not None:
                check_revision(f"entry {entry_id}", current.revision, expected_revision)
            ops = [delete_op(kv.key), delete_op(self._keys.entry_index(current))]
            await self._unchanged(kv, ops, Topic.ENTRIES)
            return current

        return await self._retrying(attempt)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        return (await self._get_entry(entry_id))[0]

    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        found = await self._list("entries", RegistrationEntry.from_json)
        return tuple(
            sorted(
                (
                    e
                    for e in found
                    if (parent_id is None or e.parent_id == parent_id)
                    and (spiffe_id is None or e.spiffe_id == spiffe_id)
                ),
                key=lambda e: e.id,
            )
        )

    async def follow_entries(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[EntryChanges, None]:
        """Every entry, then the entries the watch on ``entries/`` reports changed or deleted
        (a full listing again when the watch's revision was compacted away)."""
        prefix = self.key("entries", "")
        start = None if since is None else since + 1
        updates = self.c.follow_prefix(prefix, start_revision=start)
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.snapshot is not None:
                    full = tuple(_entry(kv.value) for kv in update.snapshot)
                    yield EntryChanges(update.revision, full=full)
                    continue
                changed: dict[str, RegistrationEntry] = {}
                deleted: dict[str, None] = {}
                for event in update.events:
                    entry_id = event.kv.key[len(prefix) :].decode()
                    if event.deleted:
                        changed.pop(entry_id, None)
                        deleted[entry_id] = None
                    else:
                        deleted.pop(entry_id, None)
                        changed[entry_id] = _entry(event.kv.value)
                yield EntryChanges(
                    update.revision, changed=tuple(changed.values()), deleted=tuple(deleted)
                )

    # -- agents --

    async def _get_agent(self, spiffe_id: SpiffeId) -> tuple[AgentRecord, KeyValue]:
        k = self.key("agents", str(spiffe_id))
        return await self._read(k, AgentRecord.from_json, f"no attested agent {spiffe_id}")

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        stored = dataclasses.replace(record, revision=1)
        k = self.key("agents", str(record.spiffe_id))
        ops = [put_op(k, doc(stored))]
        if not (await self._commit([version_is(k, 0)], ops, topics=[Topic.AGENTS])).succeeded:
            raise Conflict(f"agent {record.spiffe_id} already exists")
        return stored

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return (await self._get_agent(spiffe_id))[0]

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        found = await self._list("agents", AgentRecord.from_json)
        return tuple(sorted(found, key=lambda a: str(a.spiffe_id)))

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        what = f"agent {record.spiffe_id}"
        return await self._rewrite(
            lambda: self._get_agent(record.spiffe_id),
            lambda current: revised(what, current, record, expected_revision),
            Topic.AGENTS,
        )

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return await self._remove(lambda: self._get_agent(spiffe_id), Topic.AGENTS)


def _entry(value: bytes) -> RegistrationEntry:
    return decode_doc(value, RegistrationEntry.from_json)


if TYPE_CHECKING:
    from s2s.store.base import Store
    from s2s.store.entry_changes import EntryChangeFeed
    from s2s.store.revocation_changes import RevocationChangeFeed

    def _conforms(store: EtcdStore) -> Store:  # mypy proves EtcdStore implements Store
        return store

    def _follows_entries(store: EtcdStore) -> EntryChangeFeed:
        return store

    def _follows_revocations(store: EtcdStore) -> RevocationChangeFeed:
        return store
