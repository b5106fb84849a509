"""Resumable etcd watches: list a prefix, then follow it without a gap.

:func:`follow_prefix` lists a prefix and then watches it from the listed revision + 1, resuming
from the last seen revision + 1 after a disconnect (no event is lost across an etcd restart) and
re-listing when that revision has been compacted away. Reached through
:meth:`s2s.etcd.client.EtcdClient.follow_prefix`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from aetcd import rpc

from s2s.core.backoff import Backoff
from s2s.core.errors import StoreError
from s2s.etcd.values import KeyValue, WatchEvent, WatchUpdate, prefix_end

if TYPE_CHECKING:
    from s2s.etcd.client import EtcdClient

__all__ = ["WatchCompacted", "follow_prefix", "watch_stream"]

_log = logging.getLogger(__name__)
_BACKOFF: Final = Backoff.equal_jitter(initial=0.05, cap=2.0)


class WatchCompacted(Exception):
    """Internal: the watch start revision was compacted away (a re-list follows)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


async def watch_stream(
    client: EtcdClient, watch: rpc.WatchStub, prefix: bytes, start: int
) -> AsyncGenerator[tuple[tuple[WatchEvent, ...], int], None]:
    """One watch stream from revision ``start``: (events, next revision to watch from).

    Ends, or raises StoreError, on a disconnect. A progress notification (no events, sent
    only to a watcher that is caught up) moves the next revision on without events."""
    create = rpc.WatchCreateRequest(
        key=prefix, range_end=prefix_end(prefix), start_revision=start, progress_notify=True
    )
    hold = asyncio.Event()

    async def requests() -> AsyncIterator[Any]:
        yield rpc.WatchRequest(create_request=create)
        await hold.wait()  # keep our half of the stream open

    call = watch.Watch(requests())
    try:
        async for reply in call:
            if reply.compact_revision:
                raise WatchCompacted(int(reply.compact_revision))
            if reply.canceled:
                raise StoreError(f"etcd cancelled the watch: {reply.cancel_reason}")
            if reply.events:
                events = tuple(
                    WatchEvent(event.type == rpc.Event.DELETE, KeyValue.of(event.kv))
                    for event in reply.events
                )
                yield events, events[-1].kv.mod_revision + 1
            elif not reply.created:
                yield (), int(reply.header.revision) + 1
    except grpc.aio.AioRpcError as exc:
        raise client.translate(exc, "watch", write=False) from exc
    finally:
        hold.set()
        call.cancel()


async def follow_prefix(
    client: EtcdClient,
    watch: rpc.WatchStub,
    prefix: bytes,
    *,
    start_revision: int | None = None,
    rand: Callable[[], float] = random.random,
) -> AsyncGenerator[WatchUpdate, None]:
    """Follow every change under ``prefix``, forever, without a gap (see the module docstring)."""
    next_revision = start_revision
    failures = 0
    while not client.closed:
        try:
            if next_revision is None:
                kvs, revision = await client.get_prefix(prefix)
                next_revision = revision + 1
                failures = 0
                yield WatchUpdate(revision, snapshot=kvs)
            stream = watch_stream(client, watch, prefix, next_revision)
            async with contextlib.aclosing(stream):
                async for events, after in stream:
                    failures = 0
                    next_revision = max(next_revision, after)
                    if events:
                        yield WatchUpdate(after - 1, events=events)
            raise StoreError("etcd closed the watch stream")
        except WatchCompacted as exc:
            _log.warning("etcd.watch_compacted", extra={"compact_revision": exc.compact_revision})
            next_revision = None
        except StoreError as exc:
            if client.closed:
                return
            failures += 1
            delay = _BACKOFF.delay(failures, rand())  # from 2 * initial
            _log.warning("etcd.watch_retry", extra={"error": str(exc), "delay": delay})
            await asyncio.sleep(delay)
