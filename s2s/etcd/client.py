"""etcd v3 over gRPC, wrapped once: TLS, typed results, lease keep-alive, resumable watches.

Built on ``aetcd``'s generated v3 stubs (``aetcd.rpc``) over our own ``grpc.aio`` channel: aetcd's
high-level client hard-codes an insecure channel and drops watch errors, so only its protocol layer
is used. Every gRPC failure becomes a :class:`StoreError` here, and nowhere else:

* ``UNAVAILABLE`` (etcd down, refused TLS handshake): the call did not reach etcd, nothing changed;
* ``DEADLINE_EXCEEDED`` on a write: the outcome is unknown, and the message says so;
* an unknown lease is :class:`LeaseNotFound` (a ``StoreError``), so a caller may grant a new one.

:meth:`EtcdClient.follow_prefix` lists a prefix and then watches it from the listed revision + 1,
resuming from the last seen revision + 1 after a disconnect (no event is lost across an etcd
restart) and re-listing when that revision has been compacted away (:mod:`s2s.etcd.watch`).
Endpoints and TLS live in :mod:`s2s.etcd.channel`, the typed values and transaction
building blocks in :mod:`s2s.etcd.values`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from s2s.core.errors import StoreError
from s2s.etcd.channel import EtcdTls, open_channel
from s2s.etcd.values import (
    KeyValue,
    TxnResult,
    WatchUpdate,
    prefix_end,
)
from s2s.etcd.watch import follow_prefix as _follow_prefix

__all__ = ["EtcdClient", "KeptLease", "LeaseNotFound"]

_log = logging.getLogger(__name__)
_READ_RETRY_DELAYS = (0.05, 0.2, 0.5)  # seconds between attempts of a read that found etcd down


class LeaseNotFound(StoreError):
    """The lease expired or was revoked."""


# -- the client --


class EtcdClient:
    """A connection to an etcd cluster. Create with ``await EtcdClient.connect(...)``."""

    def __init__(self, channel: grpc.aio.Channel, where: str, timeout: float) -> None:
        self._channel = channel
        self._where = where
        self._timeout = timeout
        self._kv = rpc.KVStub(channel)
        self._lease = rpc.LeaseStub(channel)
        self._watch = rpc.WatchStub(channel)
        self._maintenance = rpc.MaintenanceStub(channel)
        self._closed = False

    @classmethod
    async def connect(
        cls, endpoints: str | Sequence[str], *, tls: EtcdTls | None = None, timeout: float = 5.0
    ) -> EtcdClient:
        """A client for ``endpoints`` (``"h:p,h:p"``); the connection is made on the first call."""
        channel, where = await open_channel(endpoints, tls)
        return cls(channel, where, timeout)

    @property
    def where(self) -> str:
        return self._where

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._channel.close(None)

    async def _call(
        self, what: str, method: Callable[..., Any], request: Any, *, write: bool
    ) -> Any:
        if self._closed:
            raise StoreError(f"the etcd client for {self._where} is closed")
        # A read is safe to repeat: ride out the channel's reconnect after an etcd restart
        # (the first call after it may find the subchannel still in backoff).
        delays = () if write else _READ_RETRY_DELAYS
        for delay in (*delays, None):
            try:
                return await method(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                if delay is None or exc.code() != grpc.StatusCode.UNAVAILABLE or self._closed:
                    raise self.translate(exc, what, write=write) from exc
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def translate(self, exc: grpc.aio.AioRpcError, what: str, *, write: bool) -> StoreError:
        """The one place gRPC errors become s2s errors."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return LeaseNotFound(f"etcd {what}: the lease expired or was revoked ({details})")
        if code == grpc.StatusCode.UNAVAILABLE:
            if not write:
                outcome = "nothing was read"
            elif "failed to connect" in details:
                outcome = "nothing was written"
            else:  # the connection broke during the call: the request may have reached etcd
                outcome = "the write may or may not have been applied"
            return StoreError(f"etcd at {self._where} is unavailable ({details}); {outcome}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            outcome = "the write may or may not have been applied" if write else "retry"
            return StoreError(
                f"etcd at {self._where} did not answer {what} within {self._timeout}s; {outcome}"
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return StoreError(f"etcd at {self._where} refused {what}: {details}")
        return StoreError(f"etcd {what} failed ({code.name}: {details})")

    # -- key-value --

    async def get(self, key: bytes) -> KeyValue | None:
        reply = await self._call("get", self._kv.Range, rpc.RangeRequest(key=key), write=False)
        return KeyValue.of(reply.kvs[0]) if reply.kvs else None

    async def get_prefix(
        self, prefix: bytes, *, page: int = 5000, keys_only: bool = False
    ) -> tuple[tuple[KeyValue, ...], int]:
        """Every key under ``prefix`` (sorted by key) and the revision of that snapshot.

        Read in pages of ``page`` keys, all at the first page's revision (one consistent view).
        ``keys_only``: etcd leaves the values out (empty here); revisions and lease ids stay."""
        end, start, revision = prefix_end(prefix), prefix, 0
        kvs: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=page, revision=revision, keys_only=keys_only
            )
            reply = await self._call("range", self._kv.Range, request, write=False)
            revision = revision or int(reply.header.revision)
            kvs += [KeyValue.of(kv) for kv in reply.kvs]
            if not reply.more or not reply.kvs:
                return tuple(kvs), revision
            start = kvs[-1].key + b"\x00"

    async def get_many(self, keys: Sequence[bytes]) -> tuple[KeyValue | None, ...]:
        """The keys' values (None where absent), read in one read-only transaction: one
        consistent view, one round trip. ``keys`` must not exceed etcd's ``--max-txn-ops``."""
        ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in keys]
        reply = await self._call("get", self._kv.Txn, rpc.TxnRequest(success=ops), write=False)
        responses = tuple(reply.responses)
        result = TxnResult(bool(reply.succeeded), int(reply.header.revision), responses)
        return tuple(result.ranged(i) for i in range(len(keys)))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        request = rpc.PutRequest(key=key, value=value, lease=lease)
        reply = await self._call("put", self._kv.Put, request, write=True)
        return int(reply.header.revision)

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> TxnResult:
        """One atomic transaction: ``success`` ops if every compare holds, else ``failure`` ops."""
        request = rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)
        )
        reply = await self._call("transaction", self._kv.Txn, request, write=bool(success))
        return TxnResult(bool(reply.succeeded), int(reply.header.revision), tuple(reply.responses))

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await self._call("compaction", self._kv.Compact, request, write=True)

    # -- leases --

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds (etcd rounds tiny TTLs up); returns its id."""
        reply = await self._call(
            "lease grant", self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), write=True
        )
        if reply.error:
            raise StoreError(f"etcd refused a lease of {ttl}s: {reply.error}")
        return int(reply.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key attached to it."""
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        await self._call("lease revoke", self._lease.LeaseRevoke, request, write=True)

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on the lease; -1 once it has expired or was revoked."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        reply = await self._call("lease ttl", self._lease.LeaseTimeToLive, request, write=False)
        return int(reply.TTL)

    async def renew_lease(self, lease_id: int) -> int:
        """One keep-alive of ``lease_id``: the seconds it now has left (``LeaseNotFound`` once
        it has expired or was revoked)."""
        if self._closed:
            raise StoreError(f"the etcd client for {self._where} is closed")
        try:
            stream = self._lease.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self._timeout
            )
            async for reply in stream:
                if reply.TTL <= 0:
                    break
                return int(reply.TTL)
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc, "lease keep-alive", write=True) from exc
        raise LeaseNotFound(f"etcd lease keep-alive: the lease {lease_id:x} expired or was revoked")

    async def keep_alive(self, ttl: int) -> KeptLease:
        """Grant a lease and keep it alive from a background task until ``close()``."""
        lease = KeptLease(self, await self.grant_lease(ttl), ttl)
        lease.start()
        return lease

    # -- watches --

    def follow_prefix(
        self,
        prefix: bytes,
        *,
        start_revision: int | None = None,
        rand: Callable[[], float] = random.random,
    ) -> AsyncGenerator[WatchUpdate, None]:
        """Follow every change under ``prefix``, forever, without a gap.

        Without ``start_revision`` the first update is a snapshot (list, then watch from its
        revision + 1). Disconnects are retried with capped exponential backoff and jitter,
        resuming after the last delivered revision; a compacted revision yields a fresh snapshot.
        """
        return _follow_prefix(self, self._watch, prefix, start_revision=start_revision, rand=rand)


class KeptLease:
    """A lease kept alive by a task (a keep-alive every ``ttl/3`` s) until :meth:`close`.

    ``lost`` is set if etcd reports the lease gone (it expired while etcd was unreachable)."""

    def __init__(self, client: EtcdClient, lease_id: int, ttl: int) -> None:
        self.client = client
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"etcd-lease-{self.id:x}")

    async def _run(self) -> None:
        interval = max(0.1, self.ttl / 3)
        while True:
            try:
                request = rpc.LeaseKeepAliveRequest(ID=self.id)
                stream = self.client._lease.LeaseKeepAlive(iter([request]))
                async for reply in stream:
                    if reply.TTL <= 0:
                        self.lost.set()
                        _log.warning("etcd.lease_lost", extra={"lease": f"{self.id:x}"})
                        return
            except grpc.aio.AioRpcError as exc:
                _log.warning("etcd.keepalive_failed", extra={"error": exc.details()})
            await asyncio.sleep(interval)

    async def close(self, *, revoke: bool = True) -> None:
        """Stop the keep-alives and (by default) revoke the lease, deleting its keys."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke and not self.lost.is_set():
            with contextlib.suppress(StoreError):
                await self.client.revoke_lease(self.id)
