"""``s2s.agent.v1.Revocations/WatchRevocations``: the agent's revocation set, streamed to workloads.

The agent already follows the CA's revocations (:mod:`s2s.agent.revocations`); a verifier that
validates JWT-SVIDs itself needs the ``jti`` and SPIFFE ID records too, which CRLs do not carry.
This s2s extension (``s2s/workload_proto/s2s_revocations.proto``) serves them on the same socket as
the Workload API: the first message and every change carry the whole set (the records as JSON,
:meth:`RevocationRecord.to_json`, encoded once per set for every stream), and a heartbeat every
``heartbeat`` seconds carries the revision and the age of the agent's own set, so that a client
knows the set is still current (the verifier's
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
from s2s.core.revocation import RevocationSet
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
        self._records = _encode(self._set)
        self._changed = asyncio.Event()
        self._unsubscribe = feed.subscribe(self._on_change)

    @property
    def revision(self) -> int:
        return self._revision

    def close(self) -> None:
        """Stop following the feed."""
        self._unsubscribe()

    def rpc_handler(
        self, guard: StreamGuard, check_caller: CallerCheck
    ) -> grpc.GenericRpcHandler[Any, Any]:
        def watch(_req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
            return self._watch(ctx, check_caller)

        method = grpc.unary_stream_rpc_method_handler(
            guard(METHOD_NAME, watch), pb.WatchRevocationsRequest.FromString, _identity
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: method})

    def _on_change(self, new: RevocationSet) -> None:
        """On the feed's loop: encode the new set once and wake every stream."""
        if new == self._set:
            return
        self._set, self._records = new, _encode(new)
        self._revision += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _watch(self, ctx: Ctx, check_caller: CallerCheck) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            await check_caller(ctx)  # before every message, as the Workload API's streams
            changed, revision = self._changed, self._revision
            yield self._message(full=revision != sent)
            sent = revision
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set, and this loop would then outlive its call.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await changed.wait()

    def _message(self, *, full: bool) -> bytes:
        age = self._feed.age()
        update = pb.RevocationsUpdate(
            revision=self._revision,
            full=full,
            records_json=self._records if full else b"",
            synced=age is not None,
            age_seconds=age or 0.0,
            lag_after_seconds=self._feed.lag_after,
            heartbeat_seconds=self.heartbeat,
        )
        data: bytes = update.SerializeToString()
        return data


def _encode(revocations: RevocationSet) -> bytes:
    return json.dumps([r.to_json() for r in revocations.records()], separators=(",", ":")).encode()


def _identity(data: bytes) -> bytes:
    return data
