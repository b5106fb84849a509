"""One Workload API call's frame: the security header, errors to gRPC codes, the observed code.

Errors come from ``s2s.core.errors`` and are mapped to gRPC codes here and only here (Workload
Endpoint appendix A): missing header and bad arguments INVALID_ARGUMENT, attestation failure
UNAVAILABLE, no identity (or a caller that is no longer the process that connected)
PERMISSION_DENIED, WIT UNIMPLEMENTED. A refused token is INVALID_ARGUMENT (as SPIRE), except when
the refusal is that the agent's revocation feed is stale (``revocations-stale``): that is
UNAVAILABLE, so clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from s2s.core.errors import (
    AttestationFailed,
    InvalidRequest,
    InvalidSpiffeId,
    InvalidToken,
    NotAuthorized,
    S2SError,
    Unavailable,
)

__all__ = [
    "REASON_TRAILER",
    "REVOCATIONS_STALE",
    "SECURITY_HEADER",
    "CallGuard",
    "Ctx",
    "Observer",
    "Unimplemented",
    "code_for",
]

log = logging.getLogger(__name__)

SECURITY_HEADER = "workload.spiffe.io"
REASON_TRAILER = "s2s-reason"  # InvalidToken.reason of a rejected ValidateJWTSVID
REVOCATIONS_STALE = "revocations-stale"  # the agent cannot tell what is revoked: UNAVAILABLE

Ctx = grpc.aio.ServicerContext[Any, Any]
Observer = Callable[[str, str], None]  # (method, gRPC code name) after every call
_AbortError: type[BaseException] = grpc.aio.AbortError


class Unimplemented(S2SError):
    code = "unimplemented"


class CallGuard:
    """Wraps every call: checks the header, aborts with the mapped code, observes the outcome."""

    def __init__(self, observe: Observer | None = None) -> None:
        self._observe = observe

    @contextlib.asynccontextmanager
    async def guarded(self, ctx: Ctx, name: str) -> AsyncIterator[None]:
        """Check the security header, map errors to gRPC aborts, observe the call's code
        (CANCELLED when the client went away, unary or stream alike)."""
        code = grpc.StatusCode.OK
        start = time.monotonic()
        try:
            _check_header(ctx)
            yield
        except S2SError as exc:
            code = code_for(exc)
            await self._abort(ctx, name, code, exc)
        except _AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            await self._internal(ctx, name)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._done(name, code, start)

    async def _abort(self, ctx: Ctx, name: str, code: grpc.StatusCode, exc: S2SError) -> None:
        if isinstance(exc, AttestationFailed):
            log.info("workload_api.attestation_failed", extra={"method": name, "error": str(exc)})
            details = f"workload attestation failed: {exc}"
        else:
            details = str(exc)
        trailer = ((REASON_TRAILER, exc.reason),) if isinstance(exc, InvalidToken) else ()
        await ctx.abort(code, details, trailing_metadata=trailer)

    async def _internal(self, ctx: Ctx, name: str) -> None:
        # A bug, not the caller's fault: log it here, never send its text to the workload.
        log.exception("workload_api.internal_error", extra={"method": name})
        await ctx.abort(grpc.StatusCode.INTERNAL, "internal error in the agent")

    def _done(self, name: str, code: grpc.StatusCode, start: float) -> None:
        if self._observe is not None:
            self._observe(name, code.name)
        log.debug(
            "workload_api.call",
            extra={"method": name, "code": code.name, "ms": (time.monotonic() - start) * 1e3},
        )


def _check_header(ctx: Ctx) -> None:
    values = [v for k, v in (ctx.invocation_metadata() or ()) if k == SECURITY_HEADER]
    if values != ["true"]:
        raise InvalidRequest("security header missing from request")


def code_for(exc: S2SError) -> grpc.StatusCode:
    """The gRPC code a Workload API caller gets for ``exc``."""
    if isinstance(exc, InvalidToken) and exc.reason == REVOCATIONS_STALE:
        return grpc.StatusCode.UNAVAILABLE  # not the token's fault: the client should retry
    if isinstance(exc, InvalidRequest | InvalidSpiffeId | InvalidToken):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotAuthorized):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, AttestationFailed | Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, Unimplemented):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL
