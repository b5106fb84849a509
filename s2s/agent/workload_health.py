"""The gRPC health checking protocol on the Workload API socket (``grpc.health.v1.Health/Check``).

``s2s-agent healthcheck`` and standard gRPC probes ask here whether the agent serves. The answer
needs no identity and no security header, and gives nothing away (SERVING for the empty service
name and for ``SpiffeWorkloadAPI``; NOT_FOUND for any other name, as the protocol says). It is
served beside the Workload API but outside its call frame: a probe is not a workload, so it is
counted in ``s2s_agent_health_checks_total`` and never as a Workload API call (a probe run by a
user without an entry used to appear as a PERMISSION_DENIED ``FetchX509Bundles``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import grpc

from s2s.agent.workload_calls import Ctx
from s2s.agent.workload_extensions import CallerCheck, StreamGuard
from s2s.workload_proto import health_pb2 as pb

__all__ = ["HEALTH_SERVICE", "HealthService"]

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
_SERVED: Final = frozenset({"", "SpiffeWorkloadAPI"})

HealthObserver = Callable[[str], None]  # the status answered (SERVING, NOT_FOUND)


class HealthService:
    """A :class:`WorkloadExtension` answering ``Check``; ``observe`` counts each answer."""

    def __init__(self, observe: HealthObserver | None = None) -> None:
        self._observe = observe

    def rpc_handler(
        self, guard: StreamGuard, check_caller: CallerCheck
    ) -> grpc.GenericRpcHandler[Any, Any]:
        """The handler; ``guard`` and ``check_caller`` are deliberately unused (see above)."""
        del guard, check_caller
        method = grpc.unary_unary_rpc_method_handler(
            self._check, pb.HealthCheckRequest.FromString, _serialize
        )
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": method})

    async def _check(self, request: Any, ctx: Ctx) -> pb.HealthCheckResponse:
        if request.service not in _SERVED:
            self._count("NOT_FOUND")
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        self._count("SERVING")
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)

    def _count(self, status: str) -> None:
        if self._observe is not None:
            self._observe(status)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
