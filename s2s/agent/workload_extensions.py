"""s2s services served next to the SPIFFE Workload API on the agent's socket.

An extension has its own gRPC service name (never ``SpiffeWorkloadAPI``), so SPIFFE clients do
not see it. Its calls go through the Workload API's own frame: the ``workload.spiffe.io`` header,
errors mapped to gRPC codes, the call counted; ``check_caller`` attests the caller and requires an
identity for it, as the bundle streams do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc

from s2s.agent.workload_calls import Ctx

__all__ = ["CallerCheck", "StreamFn", "StreamGuard", "WorkloadExtension"]

StreamFn = Callable[[Any, Ctx], AsyncIterator[bytes]]
StreamGuard = Callable[[str, StreamFn], StreamFn]  # (method name, handler) -> guarded handler
CallerCheck = Callable[[Ctx], Awaitable[None]]  # attest the caller; NotAuthorized without identity


class WorkloadExtension(Protocol):
    """A service the Workload API server registers beside its own."""

    def rpc_handler(
        self, guard: StreamGuard, check_caller: CallerCheck
    ) -> grpc.GenericRpcHandler[Any, Any]:
        """The gRPC handler for this service; every method wrapped with ``guard``."""
        ...
