"""The middleware that keeps a replica cut off from its store from serving agents as if it were
not: while :class:`~s2s.ca.store_health.StoreHealth` says the store is down, the agent API and
the revocations long-poll answer 503 ``store_error`` (the error middleware adds
``Retry-After``), so agents and verifiers move to another replica. Public data that carries its
own validity (the bundle, CRLs) and the health and metrics endpoints are still served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from s2s.ca.store_health import StoreHealth

__all__ = ["GATED_PREFIXES", "store_gate"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What a replica must not answer from memory that stopped following the store.
GATED_PREFIXES: Final = ("/v1/agent/", "/v1/revocations")


def store_gate(health: StoreHealth) -> Any:
    """Middleware (inside the error middleware): refuse gated paths while the store is down."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(GATED_PREFIXES):
            health.check()
        return await handler(request)

    return middleware
