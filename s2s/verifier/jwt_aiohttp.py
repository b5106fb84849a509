"""aiohttp middleware for ``Authorization: Bearer <JWT-SVID>`` (RFC 6750, JWT-SVID.md section 5).

Every request (except exempt paths) must carry exactly one bearer JWT-SVID that the
:class:`~s2s.verifier.jwt.JwtValidator` accepts; the handler then reads the caller's identity with
:func:`jwt_svid_of` or :func:`jwt_spiffe_id`. A rejection is a 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` and a JSON body naming the reason; a validator
that cannot decide yet (no bundles: :class:`Unavailable`) gives 503 with ``Retry-After``. The token
is never logged.

>>> app = web.Application(middlewares=[jwt_middleware(validator)])    # doctest: +SKIP
>>> async def handler(request):                                       # doctest: +SKIP
...     return web.Response(text=str(jwt_spiffe_id(request)))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web

from s2s.core.errors import InvalidToken, NotAuthorized, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F
from s2s.verifier.jwt import JwtValidator, ValidatedJwt

__all__ = [
    "JWT_SVID_KEY",
    "bearer_token",
    "jwt_middleware",
    "jwt_spiffe_id",
    "jwt_svid_of",
    "quoted_string",
]

# web.RequestKey (typed request storage) exists from aiohttp 3.14; older releases take a string.
_RequestKey: Any = getattr(web, "RequestKey", None)
JWT_SVID_KEY: Any = (
    _RequestKey("s2s_jwt_svid", ValidatedJwt) if _RequestKey is not None else "s2s.jwt_svid"
)

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SCHEME = "bearer "


def jwt_middleware(
    validator: JwtValidator,
    *,
    exempt_paths: Iterable[str] = (),
    realm: str | None = None,
) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """A middleware that admits only requests with a valid bearer JWT-SVID.

    ``exempt_paths`` are exact paths served without a token (health checks, metrics).
    """
    exempt = frozenset(exempt_paths)
    challenge = "Bearer" if realm is None else f'Bearer realm="{quoted_string(realm)}"'

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path in exempt:
            return await handler(request)
        token, problem = bearer_token(request)
        if token is None:
            return _reject(request, challenge, *problem)
        try:
            request[JWT_SVID_KEY] = validator.validate(token)
        except InvalidToken as exc:
            return _reject(request, challenge, exc.reason, str(exc))
        except Unavailable as exc:  # no bundles yet: no verdict either way, the client may retry
            _log.warning("jwt.unavailable", extra={F.ERROR: str(exc)})
            body = {"error": "unavailable", "message": str(exc)}
            return web.json_response(body, status=503, headers={hdrs.RETRY_AFTER: "1"})
        return await handler(request)

    return middleware


def jwt_svid_of(request: web.Request) -> ValidatedJwt:
    """The validated JWT-SVID of this request; NotAuthorized if the middleware did not run."""
    try:
        svid: ValidatedJwt = request[JWT_SVID_KEY]
    except KeyError:
        raise NotAuthorized("this request carries no validated JWT-SVID") from None
    return svid


def jwt_spiffe_id(request: web.Request) -> SpiffeId:
    """The caller's SPIFFE ID, from its validated JWT-SVID."""
    return jwt_svid_of(request).spiffe_id


def bearer_token(request: web.Request) -> tuple[str | None, tuple[str, str]]:
    """The one Bearer token of ``request`` (RFC 6750 section 2.1), or None and (reason,
    message): ``missing`` (no Authorization header, another scheme) or ``malformed``."""
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if not values:
        return None, ("missing", "the request has no Authorization header")
    if len(values) > 1:
        return None, ("malformed", "the request has more than one Authorization header")
    value = values[0]
    if value[: len(_SCHEME)].lower() != _SCHEME:
        return None, ("missing", "the Authorization header is not a Bearer token")
    token = value[len(_SCHEME) :].strip(" ")
    if not token:
        return None, ("malformed", "the Bearer token is empty")
    return token, ("", "")


def _reject(request: web.Request, challenge: str, reason: str, message: str) -> web.Response:
    _log.debug("jwt.rejected", extra={F.REASON: reason, F.PATH: request.path})
    if reason == "missing":
        # RFC 6750 3.1: a request without credentials gets the bare challenge, no error code.
        header = challenge
    else:
        sep = "," if challenge != "Bearer" else ""
        header = (
            f'{challenge}{sep} error="invalid_token", error_description="{quoted_string(reason)}"'
        )
    body = {"error": "invalid_token", "reason": reason, "message": message}
    return web.Response(
        status=401,
        text=json.dumps(body),
        content_type="application/json",
        headers={hdrs.WWW_AUTHENTICATE: header},
    )


def quoted_string(text: str) -> str:
    """Text safe inside an RFC 7230 quoted-string (no quotes, backslashes or controls)."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')
