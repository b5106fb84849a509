"""aiohttp middleware for OAuth 2.0 Bearer access tokens, with RFC 6750 section 3 errors.

Every request (except exempt paths) must carry exactly one ``Authorization: Bearer`` access
token that the :class:`~s2s.verifier.access_token.AccessTokenValidator` accepts, with the
client certificate of its TLS connection (if any) for certificate-bound tokens (RFC 8705). A
handler reads the token with :func:`access_token_of` and asks for scopes with
:func:`~s2s.verifier.access_token.require_scopes`; the middleware turns the
:class:`InsufficientScope` that raises into the RFC 6750 answer. Answers:

- no token (or another scheme): 401, ``WWW-Authenticate: Bearer`` with no error code (3.1);
- a malformed request (two Authorization headers, an empty token, a token in the query or
  body): 400 ``invalid_request``;
- a token refused: 401 ``invalid_token`` with the reason as ``error_description``;
- a valid token without a needed scope: 403 ``insufficient_scope`` with ``scope=``;
- no keys yet: 503 with ``Retry-After`` (no verdict either way).

The token is never logged.

>>> app = web.Application(middlewares=[access_token_middleware(validator)])   # doctest: +SKIP
>>> async def handler(request):                                              # doctest: +SKIP
...     token = require_scopes(access_token_of(request), "billing.read")
...     return web.Response(text=token.subject)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web

from s2s.core.errors import InsufficientScope, InvalidToken, NotAuthorized, Unavailable
from s2s.log import F
from s2s.verifier.access_token import AccessTokenValidator, require_scopes
from s2s.verifier.access_token_claims import AccessToken
from s2s.verifier.jwt_aiohttp import bearer_token, quoted_string

__all__ = ["ACCESS_TOKEN_KEY", "access_token_middleware", "access_token_of", "peer_certificate_of"]

_RequestKey: Any = getattr(web, "RequestKey", None)
ACCESS_TOKEN_KEY: Any = (
    _RequestKey("s2s_access_token", AccessToken) if _RequestKey is not None else "s2s.access_token"
)

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_token_middleware(
    validator: AccessTokenValidator,
    *,
    scopes: Iterable[str] = (),
    exempt_paths: Iterable[str] = (),
    realm: str | None = None,
) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """A middleware that admits only requests with a valid Bearer access token.

    ``scopes`` are required on every request; handlers may require more with
    :func:`~s2s.verifier.access_token.require_scopes`. ``exempt_paths`` are exact paths served
    without a token (health checks, metrics).
    """
    needed = tuple(scopes)
    exempt = frozenset(exempt_paths)
    challenge = Challenge(realm)

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path in exempt:
            return await handler(request)
        token, (problem, message) = bearer_token(request)
        if token is not None and "access_token" in request.query:
            token, problem = None, "malformed"  # RFC 6750 2: one method per request
            message = "the token is sent both in the Authorization header and in the query"
        if token is None:
            if problem == "missing" and "access_token" in request.query:
                problem = "malformed"
                message = "send the access token in the Authorization header, not in the URL"
            return challenge.request_problem(request, problem, message)
        try:
            checked = await validator.validate_async(
                token, peer_certificate=peer_certificate_of(request)
            )
            request[ACCESS_TOKEN_KEY] = require_scopes(checked, *needed)
        except InvalidToken as exc:
            return challenge.invalid_token(request, exc.reason, str(exc))
        except InsufficientScope as exc:
            return challenge.insufficient_scope(request, exc)
        except Unavailable as exc:  # no keys yet: no verdict either way, the client may retry
            _log.warning("access_token.unavailable", extra={F.ERROR: str(exc)})
            body = {"error": "temporarily_unavailable", "error_description": str(exc)}
            return web.json_response(body, status=503, headers={hdrs.RETRY_AFTER: "1"})
        try:
            return await handler(request)
        except InsufficientScope as exc:  # require_scopes(...) in the handler
            return challenge.insufficient_scope(request, exc)

    return middleware


def access_token_of(request: web.Request) -> AccessToken:
    """The validated access token of this request; NotAuthorized if the middleware did not run."""
    try:
        token: AccessToken = request[ACCESS_TOKEN_KEY]
    except KeyError:
        raise NotAuthorized("this request carries no validated access token") from None
    return token


def peer_certificate_of(request: web.BaseRequest) -> bytes | None:
    """The DER client certificate of the request's TLS connection (None: no TLS or none sent)."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) and der else None


class Challenge:
    """The ``WWW-Authenticate: Bearer`` answers of one middleware (RFC 6750 section 3)."""

    __slots__ = ("_prefix",)

    def __init__(self, realm: str | None) -> None:
        self._prefix = "Bearer" if realm is None else f'Bearer realm="{quoted_string(realm)}",'

    def _header(self, **params: str) -> str:
        if not params:
            return self._prefix.rstrip(",")
        text = ", ".join(f'{k}="{quoted_string(v)}"' for k, v in params.items())
        return f"{self._prefix} {text}"

    def request_problem(self, request: web.Request, problem: str, message: str) -> web.Response:
        """No usable token in the request: ``missing`` (3.1: no error code) or a malformed
        request (400 ``invalid_request``)."""
        _log.debug("access_token.rejected", extra={F.REASON: problem, F.PATH: request.path})
        if problem == "missing":
            return _response(401, self._header(), None, message)
        return _response(400, self._header(error="invalid_request"), "invalid_request", message)

    def invalid_token(self, request: web.Request, reason: str, message: str) -> web.Response:
        _log.debug("access_token.rejected", extra={F.REASON: reason, F.PATH: request.path})
        header = self._header(error="invalid_token", error_description=reason)
        return _response(401, header, "invalid_token", message)

    def insufficient_scope(self, request: web.Request, exc: InsufficientScope) -> web.Response:
        _log.debug("access_token.rejected", extra={F.REASON: "scope", F.PATH: request.path})
        scope = " ".join(sorted(exc.required))
        header = self._header(error="insufficient_scope", scope=scope)
        return _response(403, header, "insufficient_scope", str(exc))


def _response(status: int, header: str, error: str | None, message: str) -> web.Response:
    body = {"error": error or "unauthorized", "error_description": message}
    return web.json_response(body, status=status, headers={hdrs.WWW_AUTHENTICATE: header})
