"""etcd v3 over gRPC, wrapped once: TLS, typed results, lease keep-alive, resumable watches.

Built on ``aetcd``'s generated v3 stubs (``aetcd.rpc``) over our own ``grpc.aio`` channel: aetcd's
high-level client hard-codes an insecure channel and drops watch errors, so only its protocol layer
is used. Every gRPC failure becomes a :class:`StoreError` here, and nowhere else:

* ``UNAVAILABLE`` (etcd down, refused TLS handshake): the call did not reach etcd, nothing changed;
* ``DEADLINE_EXCEEDED`` on a write: the outcome is unknown, and the message says so;
* an unknown lease is :class:`LeaseNotFound` (a ``StoreError``), so a caller may grant a new one.

:meth:`EtcdClient.follow_prefix` lists a prefix and then watches it from the listed revision + 1,
resuming from the last seen revision + 1 after a disconnect (no event is lost across an etcd
restart) and re-listing when that revision has been compacted away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from s2s.core.errors import InvalidConfig, StoreError

__all__ = [
    "EtcdClient",
    "EtcdTls",
    "KeptLease",
    "KeyValue",
    "LeaseNotFound",
    "TxnResult",
    "WatchEvent",
    "WatchUpdate",
    "delete_op",
    "get_op",
    "mod_is",
    "parse_endpoints",
    "prefix_end",
    "put_op",
    "value_is",
    "version_is",
]

_log = logging.getLogger(__name__)
_BACKOFF_START = 0.05
_BACKOFF_CAP = 2.0
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),  # find a silently dead etcd within ~15 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


_READ_RETRY_DELAYS = (0.05, 0.2, 0.5)  # seconds between attempts of a read that found etcd down


class LeaseNotFound(StoreError):
    """The lease expired or was revoked."""


class WatchCompacted(Exception):
    """Internal: the watch start revision was compacted away (a re-list follows)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for etcd: the CA that signed etcd's certificate, and an optional client pair.

    PEM bytes, from memory or :meth:`from_files`. ``server_name`` overrides the name checked in
    etcd's certificate (default: the endpoint host).
    """

    ca_pem: bytes
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if b"-----BEGIN CERTIFICATE-----" not in self.ca_pem:
            raise InvalidConfig("the etcd CA must be a PEM certificate")
        if (self.cert_pem is None) != (self.key_pem is None):
            raise InvalidConfig(
                "an etcd client certificate needs its key, and a key its certificate"
            )

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        *,
        server_name: str | None = None,
    ) -> EtcdTls:
        def read(path: str | Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise InvalidConfig(f"cannot read {path}: {exc.strerror}") from exc

        ca_pem = read(ca)
        assert ca_pem is not None
        return cls(ca_pem, read(cert), read(key), server_name=server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: Any) -> KeyValue:
        return cls(
            bytes(kv.key),
            bytes(kv.value),
            int(kv.create_revision),
            int(kv.mod_revision),
            int(kv.version),
            int(kv.lease),
        )


@dataclass(frozen=True, slots=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue  # for a delete: the key and the deleting revision as mod_revision


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """What :meth:`EtcdClient.follow_prefix` yields: a full ``snapshot`` (first, and after a
    compaction) or ``events``; ``revision`` is the etcd revision they bring the follower to."""

    revision: int
    snapshot: tuple[KeyValue, ...] | None = None
    events: tuple[WatchEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[Any, ...]

    def ranged(self, index: int) -> KeyValue | None:
        """What a ``get_op`` at ``index`` read (None if the key was absent)."""
        kvs = self.responses[index].response_range.kvs
        return KeyValue.of(kvs[0]) if kvs else None

    def deleted(self, index: int) -> tuple[KeyValue, ...]:
        """The previous values a ``delete_op(..., prev_kv=True)`` at ``index`` removed."""
        return tuple(KeyValue.of(kv) for kv in self.responses[index].response_delete_range.prev_kvs)


# -- transaction building blocks (etcd v3 Compare / RequestOp messages) --


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def version_is(key: bytes, version: int) -> Any:
    """Compare: the key has this version (0: it does not exist)."""
    return rpc.Compare(
        key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=version
    )


def mod_is(key: bytes, mod_revision: int) -> Any:
    """Compare: the key was last changed at ``mod_revision`` (what a read returned)."""
    return rpc.Compare(
        key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=mod_revision
    )


def value_is(key: bytes, value: bytes) -> Any:
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, value=value)


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def get_op(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def delete_op(key: bytes, *, prev_kv: bool = False) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=prev_kv))


# -- endpoints --


def parse_endpoints(text: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``"h:p,h:p"`` (or a sequence of ``"h:p"``) as (host, port) pairs; InvalidConfig if bad."""
    items = text.split(",") if isinstance(text, str) else list(text)
    result: list[tuple[str, int]] = []
    for item in items:
        host, sep, port = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfig(f"an etcd endpoint must be host:port, not {item!r}")
        result.append((host, int(port)))
    if not result:
        raise InvalidConfig("at least one etcd endpoint is needed")
    return tuple(result)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _target(endpoints: Sequence[tuple[str, int]]) -> str:
    """A gRPC target that fails over across every endpoint (pick_first over an address list)."""
    if len(endpoints) == 1 and not _is_ip(endpoints[0][0]):
        return f"dns:///{endpoints[0][0]}:{endpoints[0][1]}"
    loop = asyncio.get_running_loop()
    addresses: list[str] = []
    for host, port in endpoints:
        if _is_ip(host):
            ip = ipaddress.ip_address(host)
            addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
            continue
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise InvalidConfig(f"cannot resolve the etcd endpoint {host}: {exc}") from exc
        addresses += [f"{info[4][0]}:{port}" for info in infos]
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if scheme == "ipv4" and any(a.startswith("[") for a in addresses):
        raise InvalidConfig("etcd endpoints must all be IPv4 or all IPv6")
    return f"{scheme}:{','.join(addresses)}"


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
        pairs = parse_endpoints(endpoints)
        target = await _target(pairs)
        options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
        if tls is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            name = tls.server_name or next((h for h, _ in pairs if not _is_ip(h)), None)
            if name is not None:
                options.append(("grpc.ssl_target_name_override", name))
            channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        where = ",".join(f"{h}:{p}" for h, p in pairs)
        return cls(channel, where, timeout)

    @property
    def where(self) -> str:
        return self._where

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
        self, prefix: bytes, *, page: int = 5000
    ) -> tuple[tuple[KeyValue, ...], int]:
        """Every key under ``prefix`` (sorted by key) and the revision of that snapshot.

        Read in pages of ``page`` keys, all at the first page's revision (one consistent view)."""
        end, start, revision = prefix_end(prefix), prefix, 0
        kvs: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)
            reply = await self._call("range", self._kv.Range, request, write=False)
            revision = revision or int(reply.header.revision)
            kvs += [KeyValue.of(kv) for kv in reply.kvs]
            if not reply.more or not reply.kvs:
                return tuple(kvs), revision
            start = kvs[-1].key + b"\x00"

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

    async def keep_alive(self, ttl: int) -> KeptLease:
        """Grant a lease and keep it alive from a background task until ``close()``."""
        lease = KeptLease(self, await self.grant_lease(ttl), ttl)
        lease.start()
        return lease

    # -- watches --

    async def _watch_stream(
        self, prefix: bytes, start: int
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

        call = self._watch.Watch(requests())
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
            raise self.translate(exc, "watch", write=False) from exc
        finally:
            hold.set()
            call.cancel()

    async def follow_prefix(
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
        next_revision = start_revision
        failures = 0
        while not self._closed:
            try:
                if next_revision is None:
                    kvs, revision = await self.get_prefix(prefix)
                    next_revision = revision + 1
                    failures = 0
                    yield WatchUpdate(revision, snapshot=kvs)
                stream = self._watch_stream(prefix, next_revision)
                async with contextlib.aclosing(stream):
                    async for events, after in stream:
                        failures = 0
                        next_revision = max(next_revision, after)
                        if events:
                            yield WatchUpdate(after - 1, events=events)
                raise StoreError("etcd closed the watch stream")
            except WatchCompacted as exc:
                _log.warning(
                    "etcd.watch_compacted", extra={"compact_revision": exc.compact_revision}
                )
                next_revision = None
            except StoreError as exc:
                if self._closed:
                    return
                failures += 1
                delay = min(_BACKOFF_CAP, _BACKOFF_START * 2**failures) * (0.5 + rand() / 2)
                _log.warning("etcd.watch_retry", extra={"error": str(exc), "delay": delay})
                await asyncio.sleep(delay)


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
