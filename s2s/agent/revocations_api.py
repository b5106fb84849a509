"""``s2s.agent.v1.Revocations/WatchRevocations``: the agent's revocation set, streamed to workloads.

The agent already follows the CA's revocations (:mod:`s2s.agent.revocations`); a verifier that
validates JWT-SVIDs itself needs the ``jti`` and SPIFFE ID records too, which CRLs do not carry.
This s2s extension (``s2s/workload_proto/s2s_revocations.proto``) serves them on the same socket as
the Workload API: the first message carries the whole set (the records as JSON,
:meth:`RevocationRecord.to_json`, encoded once per set for every stream). A client that asks for
deltas (``WatchRevocationsRequest.deltas``, as the verifier's ``AgentRevocationFeed`` does) then
gets only what changed since the previous message on its stream (records put, keys removed, the base
revision, the store epoch), computed in O(change) from the feed's sets
(:meth:`RevocationSet.changes_since`) and encoded once per base for every stream; it gets the whole
set again when the agent's set was replaced rather than derived (a full reload, another store epoch)
or when the delta would be larger than the set. A client that does not ask (an older one) gets the
whole set on every change, as before. A heartbeat every ``heartbeat`` seconds carries the revision
and the age of the agent's own set, so that a client knows the set is still current (the verifier's
:class:`~s2s.verifier.feeds_agent.AgentRevocationFeed` ages and fails closed as the agent's feed
does). The caller is attested and must have an identity before every message, as on the Workload
API's streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from s2s.agent.workload_calls import Ctx
from s2s.agent.workload_extensions import CallerCheck, StreamGuard
from s2s.core.revocation import RevocationKind, RevocationSet
from s2s.workload_proto import s2s_revocations_pb2 as pb

__all__ = ["DEFAULT_HEARTBEAT", "METHOD_NAME", "SERVICE_NAME", "RevocationsService"]

SERVICE_NAME = "s2s.agent.v1.Revocations"
METHOD_NAME = "WatchRevocations"
DEFAULT_HEARTBEAT = 5.0  # seconds between heartbeats on a quiet stream


class FollowedRevocations(Protocol):
    """What the service reads from the agent's feed (a :class:`RevocationFeed`)."""

    @property
    def lag_after(self) -> float: ...

    def snapshot(self) -> RevocationSet: ...

    def age(self) -> float | None: ...

    def subscribe(self, callback: Callable[[RevocationSet], None]) -> Callable[[], None]: ...


class RevocationsService:
    """Streams ``feed``'s set to workloads (a :class:`WorkloadExtension`)."""

    def __init__(self, feed: FollowedRevocations, *, heartbeat: float = DEFAULT_HEARTBEAT) -> None:
        if not heartbeat > 0:
            raise ValueError("the heartbeat must be a positive number of seconds")
        self._feed = feed
        self.heartbeat = float(heartbeat)
        self._set = feed.snapshot()
        self._revision = 1
        self._records: bytes | None = None  # the whole set's JSON, encoded when first needed
        self._deltas: dict[int, bytes | None] = {}  # base revision -> delta records, this set
        self._changed = asyncio.Event()
        self._unsubscribe = feed.subscribe(self._on_change)
        self.wholes_sent = 0  # messages that carried the whole set (for tests and benchmarks)
        self.deltas_sent = 0

    @property
    def revision(self) -> int:
        return self._revision

    def close(self) -> None:
        """Stop following the feed."""
        self._unsubscribe()

    def rpc_handler(
        self, guard: StreamGuard, check_caller: CallerCheck
    ) -> grpc.GenericRpcHandler[Any, Any]:
        def watch(req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
            return self._watch(ctx, check_caller, deltas=bool(req.deltas))

        method = grpc.unary_stream_rpc_method_handler(
            guard(METHOD_NAME, watch), pb.WatchRevocationsRequest.FromString, _identity
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: method})

    def _on_change(self, new: RevocationSet) -> None:
        """On the feed's loop: take the new set (in O(change) when it was derived from the one
        held) and wake every stream."""
        old = self._set
        changes = new.changes_since(old)
        if changes is None:  # replaced: compare whole (it was built whole anyway)
            if new == old:  # the same records (a store epoch change shows at the next one)
                return
        elif not changes[0] and not changes[1]:
            return
        self._set, self._records, self._deltas = new, None, {}
        self._revision += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _watch(
        self, ctx: Ctx, check_caller: CallerCheck, *, deltas: bool
    ) -> AsyncIterator[bytes]:
        sent = 0  # the revision of the last set sent on this stream (0: none yet)
        held: RevocationSet | None = None  # that set, the base of the next delta
        epoch = ""
        while True:
            await check_caller(ctx)  # before every message, as the Workload API's streams
            changed, revision, current = self._changed, self._revision, self._set
            # Read here, not when the set changes: a feed names its new epoch after publishing.
            now_epoch = _epoch_of(self._feed)
            if revision == sent:
                message = self._message(revision, kind=_HEARTBEAT)
            elif deltas and held is not None and epoch == now_epoch:
                message = self._delta_message(revision, current, sent, held)
            else:
                message = self._message(revision, kind=_WHOLE)
            yield message
            if revision != sent:
                sent, held, epoch = revision, current, now_epoch
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set, and this loop would then outlive its call.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await changed.wait()

    def _delta_message(
        self, revision: int, current: RevocationSet, base: int, held: RevocationSet
    ) -> bytes:
        if base not in self._deltas:
            self._deltas[base] = _encode_delta(current, held)
        delta = self._deltas[base]
        if delta is None:
            return self._message(revision, kind=_WHOLE)
        return self._message(revision, kind=_DELTA, base=base, delta=delta)

    def _message(self, revision: int, *, kind: int, base: int = 0, delta: bytes = b"") -> bytes:
        age = self._feed.age()
        update = pb.RevocationsUpdate(
            revision=revision,
            synced=age is not None,
            age_seconds=age or 0.0,
            lag_after_seconds=self._feed.lag_after,
            heartbeat_seconds=self.heartbeat,
            epoch=_epoch_of(self._feed),
        )
        if kind == _WHOLE:
            if self._records is None:
                self._records = _encode(self._set)
            update.full, update.records_json = True, self._records
            self.wholes_sent += 1
        elif kind == _DELTA:
            put, _, removed = delta.partition(b"\n")
            update.delta, update.base_revision = True, base
            update.records_json, update.removed_json = put, removed
            self.deltas_sent += 1
        data: bytes = update.SerializeToString()
        return data


_HEARTBEAT, _WHOLE, _DELTA = 0, 1, 2
_MIN_DELTA_LIMIT = 16  # a delta of up to this many changes is sent even for a smaller set


def _epoch_of(feed: object) -> str:
    """The store epoch of the feed's set, if its feed names one (a CA feed does)."""
    epoch = getattr(feed, "epoch", "")
    return epoch if isinstance(epoch, str) else ""


def _encode(revocations: RevocationSet) -> bytes:
    return _dumps([r.to_json() for r in revocations.records()])


def _encode_delta(current: RevocationSet, held: RevocationSet) -> bytes | None:
    """``put JSON + b"\\n" + removed JSON`` turning ``held`` into ``current``, or None when the
    set was replaced rather than derived, or the delta would be larger than the set."""
    changes = current.changes_since(held)
    if changes is None:
        return None
    put, removed = changes
    if len(put) + len(removed) > max(len(current), _MIN_DELTA_LIMIT):
        return None
    return _dumps([r.to_json() for r in put]) + b"\n" + _dumps([_key_json(k) for k in removed])


def _key_json(key: tuple[RevocationKind, str, str]) -> dict[str, str]:
    kind, value, issuer = key
    return {"kind": str(kind), "value": value, **({"issuer": issuer} if issuer else {})}


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _identity(data: bytes) -> bytes:
    return data
