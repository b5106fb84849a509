"""The middleware every CA HTTP application uses (public and admin): any failure becomes the JSON
error body, requests are counted and logged, no traceback leaks. Admin socket calls are counted in
a family of their own (``s2s_ca_admin_requests``), apart from the HTTPS API's.

A client that goes away before its answer (an agent restarted during its long-poll, a body cut
short) is not a failure of the CA: it is logged at info as ``http.client_gone`` and counted with
status 499 (nginx's "client closed request"), never as a 500 an availability alert would see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import ClientPayloadError, web

from s2s.ca.http_guard import client_gone
from s2s.ca.http_json import error_response
from s2s.ca.metrics import CaMetrics
from s2s.core.errors import S2SError
from s2s.log import F

__all__ = ["error_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_CLOSED: Final = 499  # the status a request is counted with when its client went away
# What reading a body or holding a request raises when the client's connection ends (aiohttp
# says ConnectionResetError "Connection lost"; ClientGone is a held long-poll's).
_GONE_ERRORS: Final = (ConnectionError, ClientPayloadError)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_middleware(metrics: CaMetrics | None, *, admin: bool = False) -> Any:
    """Middleware: every failure becomes a JSON error; requests are counted (as admin calls
    with ``admin``); no tracebacks leak."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        code = ""
        try:
            response = await handler(request)
        except asyncio.CancelledError:  # shutdown, or a runner that cancels on disconnect
            if client_gone(request):
                _gone(metrics, admin, request, start)
            raise
        except S2SError as exc:
            code = exc.code
            response = error_response(code, str(exc))
        except web.HTTPException as exc:
            code, response = _http_exception(exc)
        except Exception as exc:
            if isinstance(exc, _GONE_ERRORS) and client_gone(request):
                return _gone(metrics, admin, request, start)
            log.exception("http.internal_error", extra={F.PATH: request.path})
            code = "internal"
            response = error_response(code, "internal error; see the CA log")
        if client_gone(request):  # answered after the client left: nobody receives it
            return _gone(metrics, admin, request, start)
        if metrics is not None:
            _count(metrics, admin, _route_name(request), response.status, code)
        _log(request, response.status, code, start)
        return response

    return middleware


def _gone(
    metrics: CaMetrics | None, admin: bool, request: web.Request, start: float
) -> web.Response:
    """Count and log a request whose client went away; the answer nobody will read."""
    if metrics is not None:
        _count(metrics, admin, _route_name(request), CLIENT_CLOSED, "client_closed")
    log.info(
        "http.client_gone",
        extra={
            F.METHOD: request.method,
            F.PATH: request.path,
            F.STATUS: CLIENT_CLOSED,
            F.DURATION_MS: round((time.perf_counter() - start) * 1000, 3),
        },
    )
    return error_response("client_closed", "the client closed the connection", status=499)


_HTTP_CODES: Final[Mapping[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _http_exception(exc: web.HTTPException) -> tuple[str, web.Response]:
    code = _HTTP_CODES.get(exc.status, "invalid_request" if exc.status < 500 else "internal")
    message = "no such endpoint" if exc.status == 404 else exc.reason
    return code, error_response(code, message, status=exc.status)


def _count(metrics: CaMetrics, admin: bool, route: str, status: int, code: str) -> None:
    if admin:
        metrics.admin_requests.labels(route=route, status=str(status), error=code).inc()
        return
    metrics.requests.labels(route=route, status=str(status)).inc()
    if code and status != CLIENT_CLOSED:  # a client that left is not a CA error
        metrics.count_error(code)


def _log(request: web.Request, status: int, code: str, start: float) -> None:
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    if not log.isEnabledFor(level):  # a served request is logged at debug: mostly off
        return
    log.log(
        level,
        "http.request",
        extra={
            F.METHOD: request.method,
            F.PATH: request.path,
            F.STATUS: status,
            F.ERROR: code or None,
            F.DURATION_MS: round((time.perf_counter() - start) * 1000, 3),
        },
    )
