"""The etcd store's expiring records: join tokens, used marks, revocations; and ``prune``.

These ride on leases shared per expiry bucket (:mod:`s2s.store.etcd_leases`), so etcd drops them
about ``lease_grace`` after they expire even if no CA runs ``prune``. ``prune(now)`` removes
expired join tokens, revocations, agents and authorities on time; issued serials and used marks
are left to their leases (see ``prune``). Lease deletions do not move topic revisions
(watch the key prefix to see them, as ``follow_revocations`` does). The store's epoch (see
:mod:`s2s.store.revocation_changes`) is the ``epoch`` key, created by the first handle that asks.
The issued serials are in :mod:`s2s.store.etcd_issued`. Part of :class:`s2s.store.etcd.EtcdStore`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
from collections.abc import AsyncGenerator
from typing import Any

from s2s.core.errors import Conflict, InvalidRequest, NotFound, StoreError
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.etcd.values import KeyValue, delete_op, get_op, mod_is, put_op, version_is
from s2s.log import F
from s2s.store.codec import FromJson, decode_doc
from s2s.store.etcd_issued import EtcdIssuedIndex, chunks_by_ops
from s2s.store.etcd_keys import doc, expiry
from s2s.store.etcd_keyspace import Retry
from s2s.store.record_json import check_aware
from s2s.store.records import (
    AgentRecord,
    AuthorityRecord,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Topic,
    UsedMark,
    check_key_hash,
)
from s2s.store.revocation_changes import RevocationChanges, StoreKey

__all__ = ["EtcdExpiringRecords"]

log = logging.getLogger(__name__)


class EtcdExpiringRecords(EtcdIssuedIndex):
    """The ``Store`` methods for lease-backed records, and ``prune``."""

    _epoch: str | None = None  # the store's epoch, once read
    _leased_checked = False  # this handle's prune has found no issued serial or mark unleased

    # -- join tokens: join-tokens/<hash hex> holds an unused token, join-tokens-used/<hash hex> a
    # used one (with used_by) until it expires, join-token-ids/<id> the hash. A used token moves
    # to its own prefix so that a CA that predates retries finds nothing and refuses it. --

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        by_hash = self.key("join-tokens", record.token_hash.hex())
        by_id = self.key("join-token-ids", record.id)

        async def attempt() -> None:
            lease = await self._leases.lease_for(record.expires_at)
            ops = [
                put_op(by_hash, doc(record), lease=lease),
                put_op(by_id, record.token_hash.hex().encode(), lease=lease),
            ]
            used = self.key("join-tokens-used", record.token_hash.hex())
            compares = [version_is(by_hash, 0), version_is(by_id, 0), version_is(used, 0)]
            if not (await self._commit(compares, ops)).succeeded:
                raise Conflict(f"join token {record.id} (or its hash) already exists")

        await self._retrying(attempt)

    async def consume_join_token(
        self, token_hash: bytes, *, now: dt.datetime, key_hash: bytes
    ) -> JoinTokenRecord:
        check_aware("time", now)
        if not isinstance(token_hash, bytes):
            raise InvalidRequest("a join token hash must be bytes")
        check_key_hash(key_hash)
        k = self.key("join-tokens", token_hash.hex())
        used_k = self.key("join-tokens-used", token_hash.hex())

        async def attempt() -> JoinTokenRecord:
            used_kv = await self.c.get(used_k)
            if used_kv is not None:
                record = decode_doc(used_kv.value, JoinTokenRecord.from_json)
                if record.expires_at <= now:
                    ids = self.key("join-token-ids", record.id)
                    await self._unchanged(used_kv, [delete_op(used_k), delete_op(ids)])
                return record
            try:
                record, kv = await self._read(
                    k, JoinTokenRecord.from_json, "join token is unknown or was already used"
                )
            except NotFound:
                if await self.c.get(used_k) is not None:
                    raise Retry from None  # another consumer moved it meanwhile: read it there
                raise
            if record.expires_at <= now:  # an expired token is only removed
                ops = [delete_op(k), delete_op(self.key("join-token-ids", record.id))]
            else:  # moved to join-tokens-used/ by compare-and-swap: one consumer wins
                used = dataclasses.replace(record, used_by=key_hash)
                lease = await self._leases.lease_for(record.expires_at)
                ops = [delete_op(k), put_op(used_k, doc(used), lease=lease)]
            compares = [mod_is(k, kv.mod_revision), version_is(used_k, 0)]
            if not (await self._commit(compares, ops)).succeeded:
                raise Retry
            return record

        record = await self._retrying(attempt)
        if record.expires_at <= now:
            raise NotFound(f"join token {record.id} expired at {record.expires_at.isoformat()}")
        return record

    # -- single-use marks: used/<key> --

    async def claim_once(self, mark: UsedMark) -> None:
        """A mark held past its expiry (prune leaves marks to their leases, which end about
        ``lease_grace`` later) is taken over by compare-and-swap: the key is free from then."""
        k = self.key("used", mark.key)

        async def attempt() -> None:
            put = put_op(k, doc(mark), lease=await self._leases.lease_for(mark.expires_at))
            result = await self._commit([version_is(k, 0)], [put], [get_op(k)])
            if result.succeeded:
                return
            held = result.ranged(0)
            if held is None:
                raise Retry  # its lease ended meanwhile
            if decode_doc(held.value, UsedMark.from_json).expires_at > self._clock.now():
                raise Conflict(f"{mark.key!r} was already used")
            await self._unchanged(held, [put])

        await self._retrying(attempt)

    # -- revocations: revoked/<kind>/<value> --

    async def add_revocation(self, record: RevocationRecord) -> bool:
        k = self.key("revoked", str(record.kind), record.value)

        async def attempt() -> bool:
            kv = await self.c.get(k)
            merged = record
            if kv is not None:
                existing = decode_doc(kv.value, RevocationRecord.from_json)
                merged = existing.merged(record)
                if merged == existing:
                    return False
            compare = version_is(k, 0) if kv is None else mod_is(k, kv.mod_revision)
            ops = [put_op(k, doc(merged), lease=await self._leases.lease_for(merged.expires_at))]
            result = await self._commit([compare], ops, topics=[Topic.REVOCATIONS])
            if not result.succeeded:
                raise Retry
            return True

        return await self._retrying(attempt)

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord:
        k = self.key("revoked", str(kind), value)
        missing = f"no revocation record for {kind} {value!r}"
        return (await self._read(k, RevocationRecord.from_json, missing))[0]

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        found = await self._list("revoked", RevocationRecord.from_json)
        return tuple(sorted(found, key=lambda r: (str(r.kind), r.value)))

    async def follow_revocations(
        self, *, since: int | None = None, poll: float = 30.0
    ) -> AsyncGenerator[RevocationChanges, None]:
        """Every record, then the records the watch on ``revoked/`` reports written or deleted
        (pruned, or dropped by etcd with their lease); a full listing again when the watch's
        revision was compacted away."""
        prefix = self.key("revoked", "")
        start = None if since is None else since + 1
        updates = self.c.follow_prefix(prefix, start_revision=start)
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.snapshot is not None:
                    full = tuple(_revocation(kv.value) for kv in update.snapshot)
                    yield RevocationChanges(update.revision, full=full)
                    continue
                put: dict[StoreKey, RevocationRecord] = {}
                removed: dict[StoreKey, None] = {}
                for event in update.events:
                    key = _store_key(event.kv.key[len(prefix) :])
                    if event.deleted:
                        put.pop(key, None)
                        removed[key] = None
                    else:
                        removed.pop(key, None)
                        put[key] = _revocation(event.kv.value)
                yield RevocationChanges(
                    update.revision, put=tuple(put.values()), removed=tuple(removed)
                )

    async def store_epoch(self) -> str:
        """``epoch`` holds a random id, written by the first handle that asks for it."""
        if self._epoch is None:
            k = self.key("epoch")
            fresh = secrets.token_hex(16).encode()
            result = await self.c.txn([version_is(k, 0)], [put_op(k, fresh)], [get_op(k)])
            kv = None if result.succeeded else result.ranged(0)
            stored = fresh if kv is None else kv.value
            self._epoch = stored.decode(errors="replace")
        return self._epoch

    # -- maintenance and change notification --

    async def prune(self, now: dt.datetime) -> PruneResult:
        """Expired join tokens, revocations (the change feed reports them at once), agents and
        authorities. Issued serials and used marks are left to their leases (etcd drops them
        about ``lease_grace`` after expiry, and no reader's answer depends on them going
        sooner): reading them all every run would cost O(live certificates). The first run of
        each handle still removes or leases any of them written without a lease."""
        check_aware("time", now)
        counts: dict[str, int] = {"issued": 0, "used_marks": 0}
        if not self._leased_checked:
            counts["issued"], counts["used_marks"] = await self._prune_unleased(now)
            self._leased_checked = True
        counts["join_tokens"] = 0
        for prefix in ("join-tokens", "join-tokens-used"):
            tokens = await self._expired(prefix, JoinTokenRecord.from_json, now)
            counts["join_tokens"] += await self._delete_unchanged(
                [(kv, [self.key("join-token-ids", r.id)]) for r, kv in tokens], None
            )
        for prefix, field, parse, topic in (
            ("revoked", "revocations", RevocationRecord.from_json, Topic.REVOCATIONS),
            ("agents", "agents", AgentRecord.from_json, Topic.AGENTS),
            ("authorities", "authorities", AuthorityRecord.from_json, Topic.AUTHORITIES),
        ):
            expired = await self._expired(prefix, parse, now)
            counts[field] = await self._delete_unchanged([(kv, []) for _, kv in expired], topic)
        return PruneResult(**counts)

    async def _prune_unleased(self, now: dt.datetime) -> tuple[int, int]:
        """Issued serials and used marks without a lease (every s2s writes them on one; a lease
        id of 0 means none): the expired ones are deleted, the others put again, unchanged, on
        their expiry bucket's lease. A keys-only listing finds them (etcd cannot filter by
        lease); returns how many issued serials and used marks were deleted."""
        issued = await self._unleased("issued", IssuedSerial.from_json)
        used = await self._unleased("used", UsedMark.from_json)
        groups = [(r, kv, self._keys.issued_index_keys(r)) for r, kv in issued]
        groups += [(r, kv, []) for r, kv in used]
        live = [(r, kv, extra) for r, kv, extra in groups if expiry(r) > now]
        for r, kv, extra in live:
            await self._lease_again(expiry(r), kv, extra)
        if live:
            log.warning("store.unleased_records_leased", extra={F.COUNT: len(live)})
        gone = [(r, kv, extra) for r, kv, extra in groups if expiry(r) <= now]
        issued_gone = [(kv, extra) for r, kv, extra in gone if isinstance(r, IssuedSerial)]
        used_gone = [(kv, extra) for r, kv, extra in gone if isinstance(r, UsedMark)]
        return (
            await self._delete_unchanged(issued_gone, None),
            await self._delete_unchanged(used_gone, None),
        )

    async def _lease_again(self, expires_at: dt.datetime, kv: KeyValue, extra: list[bytes]) -> None:
        """Put ``kv`` and its ``extra`` keys again on the lease for ``expires_at``, unless it
        changed since read (then it was rewritten, and every write has a lease)."""

        async def attempt() -> None:
            lease = await self._leases.lease_for(expires_at)
            ops = [put_op(kv.key, kv.value, lease=lease)]
            ops += [put_op(k, b"", lease=lease) for k in extra]
            await self._commit([mod_is(kv.key, kv.mod_revision)], ops)

        await self._retrying(attempt)

    async def _unleased(self, prefix: str, parse: FromJson[Any]) -> list[tuple[Any, KeyValue]]:
        keys, _ = await self.c.get_prefix(self.key(prefix, ""), keys_only=True)
        bare = [kv.key for kv in keys if kv.lease == 0]
        found: list[tuple[Any, KeyValue]] = []
        for start in range(0, len(bare), self._max_ops):
            for kv in await self.c.get_many(bare[start : start + self._max_ops]):
                if kv is not None and kv.lease == 0:
                    found.append((decode_doc(kv.value, parse), kv))
        return found

    async def _expired(
        self, prefix: str, parse: FromJson[Any], now: dt.datetime
    ) -> list[tuple[Any, KeyValue]]:
        kvs, _ = await self.c.get_prefix(self.key(prefix, ""))
        records = [(decode_doc(kv.value, parse), kv) for kv in kvs]
        return [(r, kv) for r, kv in records if expiry(r) <= now]

    async def _delete_unchanged(
        self, groups: list[tuple[KeyValue, list[bytes]]], topic: Topic | None
    ) -> int:
        """Delete each record (and its extra keys) unless it changed since read; count them."""
        topics = [] if topic is None else [topic]
        deleted = 0
        for chunk in chunks_by_ops(groups, lambda g: 1 + len(g[1]), self._max_ops - len(topics)):
            compare = [mod_is(kv.key, kv.mod_revision) for kv, _ in chunk]
            ops = [delete_op(k) for kv, extra in chunk for k in (kv.key, *extra)]
            if (await self._commit(compare, ops, topics=topics)).succeeded:
                deleted += len(chunk)
                continue
            for kv, extra in chunk:  # one changed meanwhile: the others go one by one
                ops = [delete_op(k) for k in (kv.key, *extra)]
                result = await self._commit([mod_is(kv.key, kv.mod_revision)], ops, topics=topics)
                deleted += result.succeeded
        return deleted


def _revocation(value: bytes) -> RevocationRecord:
    return decode_doc(value, RevocationRecord.from_json)


def _store_key(tail: bytes) -> StoreKey:
    """``<kind>/<value>`` (the part of a ``revoked/`` key after the prefix) as (kind, value)."""
    kind, _, value = tail.decode(errors="replace").partition("/")
    try:
        return (RevocationKind(kind), value)
    except ValueError:
        raise StoreError(f"etcd holds a revocation under an unknown kind: {tail[:80]!r}") from None
