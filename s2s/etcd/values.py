"""etcd v3 values, typed: keys read, watch events, transaction results and their building blocks.

What :class:`s2s.etcd.client.EtcdClient` returns, and the ``Compare`` / ``RequestOp``
messages callers put into :meth:`~s2s.etcd.client.EtcdClient.txn`. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aetcd import rpc

__all__ = [
    "KeyValue",
    "TxnResult",
    "WatchEvent",
    "WatchUpdate",
    "delete_op",
    "get_op",
    "mod_is",
    "prefix_end",
    "put_op",
    "value_is",
    "version_is",
]


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
