"""The CA's OAuth and OpenID Connect routes on aiohttp: discovery documents, the JWKS of the
token service, and the token, introspection and revocation endpoints.

Only parsing and encoding live here; :class:`~s2s.ca.oauth_service.TokenService` decides. Every
refusal is an RFC 6749 section 5.2 JSON error (``error``, ``error_description``) with
``Cache-Control: no-store``; ``invalid_client`` is a 401 with a ``WWW-Authenticate`` challenge.
Form bodies are ``application/x-www-form-urlencoded``, at most ``FORM_LIMIT`` bytes, each
parameter at most once (RFC 6749 section 3.2).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from s2s.ca.http_agent_auth import peer_certificate_der
from s2s.ca.http_json import BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT
from s2s.ca.http_services import SERVICES
from s2s.ca.oauth_metrics import NO_METHOD
from s2s.ca.oauth_service import AuthenticatedClient, ClientCredentials, TokenService
from s2s.core.errors import NotFound, Unavailable
from s2s.core.oauth import OAuthError
from s2s.core.oauth_metadata import (
    INTROSPECTION_PATH,
    OAUTH_JWKS_PATH,
    OAUTH_METADATA_PATH,
    OIDC_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    authorization_server_metadata,
    openid_configuration,
)
from s2s.verifier.peer import verified_chain_der

__all__ = ["FORM_LIMIT", "add_oauth_routes"]

FORM_LIMIT: Final = 16 * 1024
MAX_FIELDS: Final = 32
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MULTI: Final = frozenset({"audience", "resource"})
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# what a handler learnt about its request for the metrics (method, result)
_SEEN: Final = web.RequestKey[dict[str, str]]("oauth_seen", dict)


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _oauth_errors(handler: _Handler, endpoint: str | None = None) -> _Handler:
    """RFC 6749 section 5.2 answers for every refusal of an OAuth endpoint; with an ``endpoint``
    name, each answer is counted in ``s2s_ca_oauth_*`` (by the method and result the handler
    noted in ``request[_SEEN]``, else ``ok``; a refusal by its error code; an unexpected
    exception, which the middleware answers with a 500, as ``server_error``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        seen: dict[str, str] = {}
        request[_SEEN] = seen
        result, reason = "server_error", ""
        try:
            response = await handler(request)
            result = seen.get("result", "ok")
            return response
        except OAuthError as exc:
            result, reason = exc.error, exc.reason
            status, headers = 400, {}
            if exc.error == "invalid_client":
                status, headers = 401, {"WWW-Authenticate": 'Basic realm="s2s"'}
            elif exc.error == "temporarily_unavailable":
                status = 503
            body = {"error": exc.error, "error_description": exc.description}
            return _json(body, status=status, headers=headers)
        except NotFound as exc:
            result = "not_found"
            return _json({"error": "not_found", "error_description": str(exc)}, status=404)
        except Unavailable as exc:
            result = "temporarily_unavailable"
            body = {"error": "temporarily_unavailable", "error_description": str(exc)}
            return _json(body, status=503, headers={"Retry-After": "1"})
        except asyncio.CancelledError:
            result = ""  # the client went away: nothing was answered, nothing is counted
            raise
        finally:
            if endpoint is not None and result:
                request.app[SERVICES].metrics.oauth.observe(
                    endpoint,
                    method=seen.get("method", NO_METHOD),
                    result=result,
                    seconds=time.perf_counter() - start,
                    replay=reason == "replay",
                )

    return wrapped


def _counted(endpoint: str) -> Callable[[_Handler], _Handler]:
    return functools.partial(_oauth_errors, endpoint=endpoint)


async def _form(request: web.Request) -> dict[str, list[str]]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    if request.content_length is not None and request.content_length > FORM_LIMIT:
        raise OAuthError("invalid_request", f"the body is larger than {FORM_LIMIT} bytes")
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while size <= FORM_LIMIT:
                chunk = await request.content.read(FORM_LIMIT + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        raise OAuthError("invalid_request", "the body did not arrive in time") from None
    if size > FORM_LIMIT:
        raise OAuthError("invalid_request", f"the body is larger than {FORM_LIMIT} bytes")
    try:
        pairs = parse_qsl(
            b"".join(chunks).decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", f"the form body cannot be read: {exc}") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
        if len(form[name]) > 1 and name not in _MULTI:
            raise OAuthError("invalid_request", f"parameter {name[:40]!r} appears more than once")
    return form


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _basic(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.getall("Authorization", [])
    if not header:
        return None
    if len(header) > 1:
        raise OAuthError("invalid_request", "more than one Authorization header")
    scheme, _, value = header[0].partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", f"unsupported authorization scheme {scheme[:20]!r}")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "the Basic credentials are not base64") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "the Basic credentials need client_id:secret")
    # RFC 6749 2.3.1: both are form-urlencoded before base64
    return unquote_plus(user), unquote_plus(password)


def _credentials(request: web.Request, form: dict[str, list[str]]) -> ClientCredentials:
    return ClientCredentials(
        client_id=_one(form, "client_id"),
        basic=_basic(request),
        secret=_one(form, "client_secret"),
        assertion_type=_one(form, "client_assertion_type"),
        assertion=_one(form, "client_assertion"),
        peer_certificate=peer_certificate_der(request),
        peer_issuers=_verified_issuers(request),
    )


def _verified_issuers(request: web.Request) -> tuple[bytes, ...]:
    """The CA certificates above the client's leaf in the chain OpenSSL verified."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return ()
    return tuple(verified_chain_der(ssl_object)[1:])


def _service(request: web.Request) -> TokenService:
    return request.app[SERVICES].token_service()


async def _authenticate(
    request: web.Request, service: TokenService, form: dict[str, list[str]]
) -> AuthenticatedClient:
    credentials = _credentials(request, form)
    request[_SEEN]["method"] = credentials.method()
    return await service.authenticate(credentials)


def _store_current(request: web.Request) -> None:
    """Refuse (503 ``temporarily_unavailable``) while this replica cannot reach its store: its
    client set and revocations may miss changes made through other replicas."""
    health = request.app[SERVICES].store_health
    if health is not None:
        health.check()


@_counted("token")
async def post_token(request: web.Request) -> web.StreamResponse:
    """POST /oauth/token: the client-credentials grant (RFC 6749 section 4.4)."""
    _store_current(request)
    service = _service(request)
    form = await _form(request)
    client = await _authenticate(request, service, form)
    audience = [*form.get("audience", []), *form.get("resource", [])]
    issued = await service.issue(
        client, grant_type=_one(form, "grant_type"), scope=_one(form, "scope"), audience=audience
    )
    return _json(issued.to_json())


@_counted("introspect")
async def post_introspect(request: web.Request) -> web.StreamResponse:
    """POST /oauth/introspect (RFC 7662) for an authenticated client."""
    _store_current(request)
    service = _service(request)
    form = await _form(request)
    client = await _authenticate(request, service, form)
    token = _one(form, "token")
    if not token:
        raise OAuthError("invalid_request", "the token parameter is missing")
    answer = service.introspect(client, token)
    request[_SEEN]["result"] = "active" if answer["active"] else "inactive"
    return _json(answer)


@_counted("revoke")
async def post_revoke(request: web.Request) -> web.StreamResponse:
    """POST /oauth/revoke (RFC 7009): the token becomes a jti revocation record."""
    service = _service(request)
    form = await _form(request)
    client = await _authenticate(request, service, form)
    token = _one(form, "token")
    if not token:
        raise OAuthError("invalid_request", "the token parameter is missing")
    await service.revoke(client, token)
    return web.Response(status=200, headers=_NO_STORE)


@_oauth_errors
async def get_oauth_metadata(request: web.Request) -> web.StreamResponse:
    """GET /.well-known/oauth-authorization-server (RFC 8414)."""
    service = _service(request)
    return _json(authorization_server_metadata(service.issuer), headers={})


@_oauth_errors
async def get_oauth_jwks(request: web.Request) -> web.StreamResponse:
    """GET /oauth/jwks.json: the token service's keys (``use: sig``)."""
    body = _service(request).keys.jwks()
    return web.Response(body=body, content_type="application/json")


async def get_openid_configuration(request: web.Request) -> web.Response:
    """GET /.well-known/openid-configuration: OIDC discovery for JWT-SVIDs. Its issuer is the
    ``jwt_issuer`` setting, or this server's own URL when none is set (JWT-SVIDs then carry no
    ``iss``; OIDC federation needs the setting)."""
    issuer = request.app[SERVICES].jwt_issuer or f"https://{request.host}"
    return web.Response(
        body=json.dumps(openid_configuration(issuer)).encode(), content_type="application/json"
    )


def add_oauth_routes(app: web.Application) -> None:
    """Register the discovery and OAuth routes (the JWT-SVID JWKS stays in ``http.py``)."""
    app.router.add_get(OIDC_PATH, get_openid_configuration)
    app.router.add_get(OAUTH_METADATA_PATH, get_oauth_metadata)
    app.router.add_get(OAUTH_JWKS_PATH, get_oauth_jwks)
    app.router.add_post(TOKEN_PATH, post_token)
    app.router.add_post(INTROSPECTION_PATH, post_introspect)
    app.router.add_post(REVOCATION_PATH, post_revoke)
