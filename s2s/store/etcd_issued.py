"""The etcd store's issued-serial index: ``issued/<serial>`` and its keys by SPIFFE ID and agent.

Each ``issued/<serial as 40 hex digits>`` record is written in the same transaction, under the
same lease, as ``issued-ids/<sha256 of its SPIFFE ID>/<serial>`` and, for an SVID an agent
obtained, ``issued-agents/<sha256 of the agent ID>/<serial>`` (both empty). ``list_issued`` by
SPIFFE ID or agent reads that one ID's keys, then gets those serials' records in a few read-only
transactions: a revocation by ID or agent costs O(the ID's certificates), not O(every live
certificate). The hash only locates; the records found are still filtered by their IDs.

Schema 1 prefixes have no such keys. Opening one writes them for every record (idempotent puts,
each under its record's own lease), then moves ``meta`` to schema 2 by compare-and-swap, so two
replicas upgrading at once are safe. Until ``meta`` says 2, ``list_issued`` reads the whole index.
Part of :class:`s2s.store.etcd.EtcdStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from s2s.core.errors import Conflict, StoreError
from s2s.core.spiffe_id import SpiffeId
from s2s.etcd.client import LeaseNotFound
from s2s.etcd.values import KeyValue, delete_op, get_op, mod_is, put_op, version_is
from s2s.log import F
from s2s.store.codec import decode_doc
from s2s.store.etcd_keys import SCHEMA_VERSION, check_meta, doc, meta_doc
from s2s.store.etcd_keyspace import EtcdKeyspace, Retry
from s2s.store.records import IssuedSerial

__all__ = ["EtcdIssuedIndex", "chunks_by_ops"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CONCURRENT_READS = 8  # read-only transactions of one list_issued in flight at a time
_CONCURRENT_WRITES = 8  # transactions of one add_issued or of the backfill in flight at a time


def chunks_by_ops(items: Sequence[_T], ops: Callable[[_T], int], limit: int) -> list[list[_T]]:
    """``items`` in order, cut into runs whose ``ops`` add up to at most ``limit`` (an item
    costing more than ``limit`` still gets a run of its own).

    >>> chunks_by_ops([1, 2, 3, 1], lambda n: n, 3)
    [[1, 2], [3], [1]]
    """
    chunks: list[list[_T]] = []
    current: list[_T] = []
    used = 0
    for item in items:
        cost = ops(item)
        if current and used + cost > limit:
            chunks.append(current)
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        chunks.append(current)
    return chunks


class EtcdIssuedIndex(EtcdKeyspace):
    """``add_issued``, ``get_issued``, ``list_issued`` and the schema 1 -> 2 upgrade."""

    _indexed = False  # meta says schema 2: every record has its keys by ID

    async def _open_schema(self) -> None:
        """Check ``meta``; upgrade a schema 1 prefix (see the module docstring)."""
        if await self._check_schema() < SCHEMA_VERSION:
            await self._upgrade_issued_index()
        self._indexed = True

    # -- writes --

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        serials = [r.serial for r in records]
        if len(set(serials)) != len(serials):
            raise Conflict("a serial appears twice in one batch for the issued index")
        written: list[bytes] = []

        async def write(chunk: Sequence[IssuedSerial]) -> None:
            written.extend(await self._add_issued_chunk(chunk))

        # A record is 2-3 keys, so a big group is several transactions: their round trips overlap.
        chunks = chunks_by_ops(records, self._issued_ops, self._max_ops)
        try:
            for start in range(0, len(chunks), _CONCURRENT_WRITES):
                batch = chunks[start : start + _CONCURRENT_WRITES]
                results = await asyncio.gather(*map(write, batch), return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    raise failed[0]
        except BaseException:
            size = self._max_ops
            for start in range(0, len(written), size):  # undo the chunks written: all or nothing
                with contextlib.suppress(StoreError):
                    await self.c.txn([], [delete_op(k) for k in written[start : start + size]])
            raise

    def _issued_ops(self, record: IssuedSerial) -> int:
        return 1 + len(self._keys.issued_index_keys(record))

    async def _add_issued_chunk(self, chunk: Sequence[IssuedSerial]) -> list[bytes]:
        keys = [self._keys.issued(r.serial) for r in chunk]

        async def attempt() -> list[bytes]:
            ops, written = [], []
            for k, r in zip(keys, chunk, strict=True):
                lease = await self._leases.lease_for(r.not_after)
                extra = self._keys.issued_index_keys(r)
                ops += [put_op(k, doc(r), lease=lease)]
                ops += [put_op(x, b"", lease=lease) for x in extra]
                written += [k, *extra]
            compare = [version_is(k, 0) for k in keys]
            result = await self._commit(compare, ops, [get_op(k) for k in keys])
            if result.succeeded:
                return written
            for i, r in enumerate(chunk):
                if result.ranged(i) is not None:
                    raise Conflict(f"serial {r.serial:x} is already in the issued index")
            raise Retry

        return await self._retrying(attempt)

    # -- reads --

    async def get_issued(self, serial: int) -> IssuedSerial:
        k = self._keys.issued(serial)
        missing = f"serial {serial:x} is not in the issued index"
        return (await self._read(k, IssuedSerial.from_json, missing))[0]

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        if self._indexed and spiffe_id is not None:
            found = await self._issued_under(self._keys.issued_by_id(spiffe_id))
        elif self._indexed and agent_id is not None:
            found = await self._issued_under(self._keys.issued_by_agent(agent_id))
        else:
            found = await self._list("issued", IssuedSerial.from_json)  # keys are in serial order
        return tuple(
            r
            for r in found
            if (spiffe_id is None or r.spiffe_id == spiffe_id)
            and (agent_id is None or r.agent_id == agent_id)
            and (issuer_id is None or r.issuer_id == issuer_id)
        )

    async def _issued_under(self, prefix: bytes) -> list[IssuedSerial]:
        """The records named by the keys under ``prefix`` (in serial order: the keys end in the
        fixed-width serial); a record gone meanwhile (expired) is skipped."""
        kvs, _ = await self.c.get_prefix(prefix)
        primary = self.key("issued", "")
        keys = [primary + kv.key[len(prefix) :] for kv in kvs]
        size = self._max_ops
        chunks = [keys[start : start + size] for start in range(0, len(keys), size)]
        found: list[KeyValue | None] = []
        for start in range(0, len(chunks), _CONCURRENT_READS):
            batch = chunks[start : start + _CONCURRENT_READS]
            for got in await asyncio.gather(*(self.c.get_many(c) for c in batch)):
                found += got
        return [decode_doc(kv.value, IssuedSerial.from_json) for kv in found if kv is not None]

    # -- schema 1 -> 2 --

    async def _upgrade_issued_index(self) -> None:
        """Write the keys by ID of every record, then ``meta`` schema 2 if ``meta`` is unchanged
        since it was read (another replica's upgrade wins the same way; both backfills are the
        same idempotent puts)."""
        meta = self.key("meta")
        for _ in range(4):
            meta_kv = await self.c.get(meta)
            found = check_meta(meta_kv, self._where)
            if found >= SCHEMA_VERSION or meta_kv is None:
                return
            count = await self._backfill_issued_index()
            put = [put_op(meta, meta_doc(SCHEMA_VERSION))]
            if (await self.c.txn([mod_is(meta, meta_kv.mod_revision)], put)).succeeded:
                extra = {F.BEFORE: found, F.AFTER: SCHEMA_VERSION, F.COUNT: count}
                log.info("store.schema_upgraded", extra=extra)
                return
        raise Conflict(f"the schema of the store {self._where} kept changing during its upgrade")

    async def _backfill_issued_index(self) -> int:
        """Put the keys by ID of every ``issued/`` record under its lease; returns how many
        records were indexed. A record deleted meanwhile (pruned, or its lease ended) is left."""
        kvs, _ = await self.c.get_prefix(self.key("issued", ""))
        groups = [
            (kv, self._keys.issued_index_keys(decode_doc(kv.value, IssuedSerial.from_json)))
            for kv in kvs
        ]
        chunks = chunks_by_ops(groups, lambda g: len(g[1]), self._max_ops)
        done = 0
        for start in range(0, len(chunks), _CONCURRENT_WRITES):  # round trips overlap
            batch = chunks[start : start + _CONCURRENT_WRITES]
            done += sum(await asyncio.gather(*(self._backfill_chunk(c) for c in batch)))
        return done

    async def _backfill_chunk(self, chunk: Sequence[tuple[KeyValue, list[bytes]]]) -> int:
        if await self._index_unchanged(chunk):
            return len(chunk)
        done = 0
        for group in chunk:  # one is gone: the others one by one
            done += await self._index_unchanged([group])
        return done

    async def _index_unchanged(self, groups: Sequence[tuple[KeyValue, list[bytes]]]) -> bool:
        compare = [mod_is(kv.key, kv.mod_revision) for kv, _ in groups]
        ops = [put_op(k, b"", lease=kv.lease) for kv, extra in groups for k in extra]
        try:
            return (await self.c.txn(compare, ops)).succeeded
        except LeaseNotFound:  # the record's lease ended, and the record with it
            return False
