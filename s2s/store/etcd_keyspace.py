"""One trust domain's prefix in etcd: optimistic transactions and topic revisions.

The base of :class:`s2s.store.etcd.EtcdStore`. Every write is one transaction whose compares make it
a compare-and-swap; a method reads, checks, then commits, and a lost compare (``Retry``) runs the
attempt again on fresh data, so the loser sees the ``Conflict``/``NotFound`` it would have seen had
it come second. A transaction that changes a topic also writes ``topics/<topic>``, whose
``mod_revision`` is the topic's revision; ``wait_for_change`` is woken by a watch on ``topics/``
(resumed after disconnects) plus a slow re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from s2s.core.clock import Clock
from s2s.core.errors import Conflict, NotFound, StoreError
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.client import EtcdClient, LeaseNotFound
from s2s.etcd.values import KeyValue, TxnResult, delete_op, get_op, mod_is, put_op, version_is
from s2s.store.base import ChangeNotifier, wait_for_revision
from s2s.store.codec import FromJson, decode_doc
from s2s.store.etcd_keys import SCHEMA_VERSION, EtcdKeys, check_meta, doc, meta_doc
from s2s.store.etcd_leases import LeaseBuckets
from s2s.store.records import Topic

__all__ = ["EtcdKeyspace", "Retry"]

_T = TypeVar("_T")
_ATTEMPTS = 16  # optimistic retries of one call before giving up with Conflict


class Retry(Exception):
    """A transaction's compares failed: re-read and try again."""


class EtcdKeyspace:
    """The connection, key layout, leases and change notification of one trust domain's prefix."""

    def __init__(
        self,
        client: EtcdClient,
        trust_domain: TrustDomain,
        *,
        clock: Clock,
        lease_grace: dt.timedelta,
        lease_bucket: dt.timedelta,
        poll_interval: float,
        max_txn_ops: int,
    ) -> None:
        self._client: EtcdClient | None = client
        self._keys = EtcdKeys.under(trust_domain)
        self._where = f"{client.where} {self._keys.prefix.decode()}"
        self._clock = clock
        self._leases = LeaseBuckets(
            self._grant_lease, clock=clock, grace=lease_grace, bucket=lease_bucket
        )
        self._poll = poll_interval
        self._max_ops = max_txn_ops
        self._notifier = ChangeNotifier()
        self._watch: asyncio.Task[None] | None = None
        # topic -> (the topic's event when the read began, when it began, the read): see
        # _shared_revision
        self._reads: dict[Topic, tuple[asyncio.Event, float, asyncio.Future[int]]] = {}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await client.close()

    @property
    def c(self) -> EtcdClient:
        if self._client is None:
            raise StoreError(f"the store {self._where} is closed")
        return self._client

    def _grant_lease(self, ttl: int) -> Coroutine[Any, Any, int]:
        return self.c.grant_lease(ttl)  # the client as of the grant: closed -> StoreError

    def key(self, *parts: str) -> bytes:
        """The etcd key of ``parts`` under this trust domain's prefix."""
        return self._keys.key(*parts)

    async def _check_schema(self) -> int:
        """The prefix's schema version (a new prefix gets this build's); ``InvalidConfig`` for
        another application's data or a newer schema."""
        meta = self.key("meta")
        result = await self.c.txn([version_is(meta, 0)], [put_op(meta, meta_doc())], [get_op(meta)])
        return SCHEMA_VERSION if result.succeeded else check_meta(result.ranged(0), self._where)

    # -- transactions --

    async def _commit(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        topics: Sequence[Topic] = (),
    ) -> TxnResult:
        bump = [put_op(self._keys.topic(t), b"") for t in topics]
        result = await self.c.txn(compare, [*success, *bump], failure)
        if result.succeeded:
            self._notifier.notify(topics)
        return result

    async def _unchanged(self, kv: KeyValue, ops: Sequence[Any], *topics: Topic) -> None:
        """Commit ``ops`` if ``kv`` is unchanged since it was read, else raise ``Retry``."""
        if not (
            await self._commit([mod_is(kv.key, kv.mod_revision)], ops, topics=topics)
        ).succeeded:
            raise Retry

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run a read-check-commit attempt until its compares hold (``Retry`` if not)."""
        for _ in range(_ATTEMPTS):
            try:
                return await attempt()
            except Retry:
                continue
            except LeaseNotFound:
                self._leases.forget()  # a cached lease expired: grant fresh ones and retry
        raise Conflict("the record kept changing under this call; retry")

    async def _rewrite(
        self,
        read: Callable[[], Awaitable[tuple[_T, KeyValue]]],
        change: Callable[[_T], _T],
        topic: Topic,
    ) -> _T:
        """Put ``change(record)`` over the record ``read`` finds, if unchanged since; retried."""

        async def attempt() -> _T:
            current, kv = await read()
            new = change(current)
            await self._unchanged(kv, [put_op(kv.key, doc(new))], topic)
            return new

        return await self._retrying(attempt)

    async def _remove(self, read: Callable[[], Awaitable[tuple[_T, KeyValue]]], topic: Topic) -> _T:
        """Delete the record ``read`` finds, if unchanged since; retried. Returns the record."""

        async def attempt() -> _T:
            current, kv = await read()
            await self._unchanged(kv, [delete_op(kv.key)], topic)
            return current

        return await self._retrying(attempt)

    async def _read(self, key: bytes, parse: FromJson[_T], missing: str) -> tuple[_T, KeyValue]:
        kv = await self.c.get(key)
        if kv is None:
            raise NotFound(missing)
        return decode_doc(kv.value, parse), kv

    async def _list(self, prefix: str, parse: FromJson[_T]) -> list[_T]:
        kvs, _ = await self.c.get_prefix(self.key(prefix, ""))
        return [decode_doc(kv.value, parse) for kv in kvs]

    # -- change notification --

    async def revision(self, topic: Topic) -> int:
        kv = await self.c.get(self._keys.topic(Topic(topic)))
        return 0 if kv is None else kv.mod_revision

    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        topic = Topic(topic)
        self._follow_topics(self.c)
        last = after

        async def read() -> int:
            nonlocal last
            try:
                last = await self._shared_revision(topic)
            except StoreError:
                if self._client is None:
                    raise
                # etcd is unreachable: keep waiting; the watch resumes and wakes us when it is back
            return last

        return await wait_for_revision(
            read, self._notifier, topic, after, timeout, poll_interval=self._poll
        )

    async def _shared_revision(self, topic: Topic) -> int:
        """``revision(topic)`` for the waiters of ``wait_for_change``, one etcd read for them all.

        Every held long-poll re-reads its topic's revision each poll interval, in case the watch
        missed a change; one read each would be a read per waiter per interval (three a second per
        agent a replica holds). A read is shared by every waiter that asks within half a poll
        interval after it began, unless the topic was notified since it began: a change the watch
        reports is always read afresh, so sharing delays only what the slow re-read is for."""
        event = self._notifier.event(topic)
        now = time.monotonic()
        held = self._reads.get(topic)
        if held is not None:
            seen, began, read = held
            if seen is event and now - began < self._poll / 2:
                return await asyncio.shield(read)
        read = asyncio.ensure_future(self.revision(topic))
        read.add_done_callback(_retrieved)
        self._reads[topic] = (event, now, read)
        return await asyncio.shield(read)

    def _follow_topics(self, client: EtcdClient) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._run_watch(client), name="s2s-etcd-topics")

    async def _run_watch(self, client: EtcdClient) -> None:
        prefix = self.key("topics", "")
        updates = client.follow_prefix(prefix)
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.snapshot is not None:
                    self._notifier.notify(list(Topic))  # first list, or a re-list: wake everyone
                    continue
                names = {e.kv.key[len(prefix) :].decode() for e in update.events}
                self._notifier.notify([t for t in Topic if t.value in names])


def _retrieved(read: asyncio.Future[int]) -> None:
    """Mark a shared read's failure as seen (its waiters may all have been cancelled)."""
    if not read.cancelled():
        read.exception()
