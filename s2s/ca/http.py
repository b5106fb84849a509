"""The CA's HTTPS API on aiohttp: public endpoints and the agent API.

This module only parses, calls a service object and encodes. HTTP statuses are chosen here (and
nowhere else): ``STATUS_BY_CODE`` maps each ``S2SError.code`` to a status, and every error leaves
as ``{"error": code, "message": ...}``. The admin API (``admin.py``) reuses the same middleware.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as field_
from datetime import timedelta
from typing import Any, Final, TypeVar

from aiohttp import web
from cryptography import x509

from s2s.ca.agent_sync import AgentSync
from s2s.ca.attestation import AgentAttestor, AgentSvidResult
from s2s.ca.authority import Authority
from s2s.ca.crl import CrlPublisher, render_crls
from s2s.ca.issuance import MAX_BATCH, MAX_CSR_BYTES, CsrRequest, Issuer, JwtSvid, X509SvidResult
from s2s.ca.lifecycle import AuthorityLifecycle
from s2s.ca.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from s2s.ca.metrics import CaMetrics
from s2s.ca.registry import AGENT_PATH_PREFIX, AgentRecord, Registry
from s2s.ca.revocations import RevocationService
from s2s.ca.root_rotation import RootRotation
from s2s.core.bundle import Bundle
from s2s.core.errors import InvalidRequest, InvalidSvid, NotAuthorized, S2SError, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid, spiffe_id_of
from s2s.log import F

__all__ = [
    "BATCH_BODY_LIMIT",
    "DEFAULT_BODY_LIMIT",
    "SERVICES",
    "STATUS_BY_CODE",
    "ApiServices",
    "RequestError",
    "authenticate_agent",
    "error_middleware",
    "error_response",
    "field",
    "get_crl",
    "get_healthz",
    "get_readyz",
    "get_revocations",
    "json_response",
    "jwt_json",
    "optional_ttl",
    "peer_certificate_der",
    "pem_to_der",
    "public_app",
    "read_json",
    "status_for",
    "svid_json",
]

log = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)
CSR_LABEL: Final = "CERTIFICATE REQUEST"

DEFAULT_BODY_LIMIT: Final = 64 * 1024
BATCH_BODY_LIMIT: Final = 1024 * 1024

# One place that turns an error code into an HTTP status.
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "invalid_spiffe_id": 400,
    "invalid_selector": 400,
    "invalid_svid": 400,
    "invalid_bundle": 400,
    "invalid_token": 401,
    "attestation_failed": 401,
    "not_authorized": 403,
    "revoked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "invalid_config": 500,
    "internal": 500,
    "unavailable": 503,
    "store_error": 503,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_for(code: str) -> int:
    """The HTTP status for an error ``code`` (500 for codes this table does not know)."""
    return STATUS_BY_CODE.get(code, 500)


def json_response(body: Any, *, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(code: str, message: str, *, status: int | None = None) -> web.Response:
    """The JSON error body every endpoint uses."""
    return json_response({"error": code, "message": message}, status=status or status_for(code))


class RequestError(S2SError):
    """An HTTP-level refusal (body too large, wrong content type) with its own code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


async def read_json(request: web.Request, *, limit: int = DEFAULT_BODY_LIMIT) -> dict[str, Any]:
    """Read a JSON object body of at most ``limit`` bytes, or raise a clear error.

    415 for a content type other than ``application/json``, 413 above the limit, 400 for text
    that is not a JSON object.
    """
    if request.content_type != "application/json":
        raise RequestError(
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.content_type or 'none'!r}",
        )
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("too_large", f"request body is larger than {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise RequestError("too_large", f"request body is larger than {limit} bytes")
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object without repeated names (which parsers disagree on, RFC 8259 4)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise InvalidRequest("request body repeats a field name")
    return out


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    """``body[name]`` if present and of ``kind``; otherwise an ``InvalidRequest`` naming it."""
    if name not in body:
        raise InvalidRequest(f"missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"field {name!r} has the wrong type")
    return value


def peer_certificate_der(request: web.Request) -> bytes | None:
    """The DER of the client's verified leaf certificate, or None without one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    return ssl_object.getpeercert(binary_form=True)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_middleware(metrics: CaMetrics | None) -> Any:
    """Middleware: every failure becomes a JSON error; requests are counted; no tracebacks leak."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        code = ""
        try:
            response = await handler(request)
        except S2SError as exc:
            code = exc.code
            response = error_response(code, str(exc))
        except web.HTTPException as exc:
            code, response = _http_exception(exc)
        except Exception:
            log.exception("http.internal_error", extra={F.PATH: request.path})
            code = "internal"
            response = error_response(code, "internal error; see the CA log")
        _observe(metrics, request, response.status, code, start)
        return response

    return middleware


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


def _observe(
    metrics: CaMetrics | None, request: web.Request, status: int, code: str, start: float
) -> None:
    if metrics is not None:
        metrics.requests.labels(route=_route_name(request), status=str(status)).inc()
        if code:
            metrics.count_error(code)
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
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


# ---- services, as the adapters see them ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiServices:
    """The service objects the HTTP adapters call (built in ``app.py``)."""

    authority: Authority
    registry: Registry
    attestor: AgentAttestor
    issuer: Issuer
    metrics: CaMetrics
    readiness: Callable[[], tuple[bool, str]]
    closing: asyncio.Event = field_(default_factory=asyncio.Event)  # set on shutdown
    revocations: RevocationService | None = None
    crls: CrlPublisher | None = None
    agent_sync: AgentSync | None = None  # bundle sequence reports, tainted authorities
    lifecycle: AuthorityLifecycle | None = None
    root_rotation: RootRotation | None = None

    def revocation_service(self) -> RevocationService:
        if self.revocations is None:
            raise Unavailable("this CA serves no revocation data")
        return self.revocations

    def crl_publisher(self) -> CrlPublisher:
        if self.crls is None:
            raise Unavailable("this CA serves no CRLs")
        return self.crls


SERVICES: Final = web.AppKey("services", ApiServices)
MAX_LONG_POLL: Final = 60.0


def pem_to_der(text: object, *, label: str, name: str) -> bytes:
    """The DER inside one PEM block of ``label`` (``CERTIFICATE REQUEST``), or InvalidRequest."""
    if not isinstance(text, str) or len(text) > MAX_CSR_BYTES * 2:
        raise InvalidRequest(
            f"field {name!r} must be a PEM {label} of at most {MAX_CSR_BYTES} bytes"
        )
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start or text.find(begin, start + 1) >= 0:
        raise InvalidRequest(f"field {name!r} must hold exactly one PEM {label} block")
    body = "".join(text[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"field {name!r} has invalid base64 in its PEM block") from exc


def svid_json(svid: X509Svid) -> dict[str, Any]:
    """An issued SVID as JSON: chain PEM (leaf first, no key), serial (hex) and expiry."""
    return {
        "spiffe_id": str(svid.spiffe_id),
        "svid_chain": svid.chain_pem().decode("ascii"),
        "serial": format(svid.serial, "x"),
        "expires_at": svid.not_after.isoformat(),
    }


def bundle_json(bundle: Bundle) -> Any:
    return json.loads(bundle.encode())


# ---- public endpoints ---------------------------------------------------------------------


async def get_bundle(request: web.Request) -> web.Response:
    """GET /v1/bundle: the SPIFFE bundle (JWKS with x509-svid and jwt-svid keys)."""
    bundle = request.app[SERVICES].authority.bundle
    return web.Response(body=bundle.encode(), content_type="application/json")


async def get_jwks(request: web.Request) -> web.Response:
    """GET /.well-known/jwks.json: the JWT-SVID signing keys only."""
    bundle = request.app[SERVICES].authority.bundle
    return web.Response(body=bundle.jwt_jwks(), content_type="application/json")


async def get_healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def get_readyz(request: web.Request) -> web.Response:
    ready, message = request.app[SERVICES].readiness()
    return json_response({"ready": ready, "message": message}, status=200 if ready else 503)


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_crl(request: web.Request) -> web.Response:
    """GET /v1/crl?format=pem|der|json&issuer=<key id hex>: the CAs' CRLs (public)."""
    crls = request.app[SERVICES].crl_publisher().current
    query = request.query
    body, media = render_crls(crls, fmt=query.get("format"), issuer=query.get("issuer"))
    return web.Response(body=body, content_type=media)


async def get_revocations(request: web.Request) -> web.Response:
    """GET /v1/revocations?since=R&wait=S: the full revocation set, long-polling past revision R
    (public, like the bundle: revocation data is not secret)."""
    services = request.app[SERVICES]
    live = services.revocation_service().live
    since = _query_number(request, "since", int, default=-1)
    wait = min(_query_number(request, "wait", float, default=0.0), MAX_LONG_POLL)
    current = await live.refresh()
    if wait > 0 and current.version <= since:
        with services.metrics.long_polls.track_inprogress():
            await _wait_unless_closing(live.wait(since, wait), services.closing)
    answer = live.current()
    if services.crls is not None:  # CRLs first: a client that saw revision N gets CRLs >= N
        await services.crls.cover(answer.version)
    return web.Response(body=live.feed_json(answer), content_type="application/json")


# ---- agent API ----------------------------------------------------------------------------


async def authenticate_agent(request: web.Request) -> AgentRecord:
    """The calling agent's record: a verified client SVID with an agent ID the registry accepts."""
    der = peer_certificate_der(request)
    if der is None:
        raise NotAuthorized("this endpoint needs the agent SVID as a TLS client certificate")
    spiffe_id, serial = _peer_identity(der)
    if not spiffe_id.path.startswith(AGENT_PATH_PREFIX):
        raise NotAuthorized(f"{spiffe_id} is not an agent ID")
    return await request.app[SERVICES].registry.authorize_agent(spiffe_id, serial)


@functools.lru_cache(maxsize=4096)
def _peer_identity(der: bytes) -> tuple[SpiffeId, int]:
    """(SPIFFE ID, serial) of a client certificate OpenSSL already verified; cached by DER, as
    an agent presents the same certificate on every call (authorization is never cached)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return spiffe_id_of(cert), cert.serial_number
    except (ValueError, InvalidSvid) as exc:
        raise NotAuthorized("the client certificate is not an SVID") from exc


async def post_attest(request: web.Request) -> web.Response:
    """POST /v1/agent/attest {join_token, csr} -> agent SVID + bundle."""
    body = await read_json(request)
    token = field(body, "join_token")
    csr = pem_to_der(field(body, "csr"), label=CSR_LABEL, name="csr")
    return await _agent_svid_response(request, lambda a: a.attest_join_token(token, csr))


async def post_renew(request: web.Request) -> web.Response:
    """POST /v1/agent/renew {csr} -> a new agent SVID + bundle."""
    agent = await authenticate_agent(request)
    body = await read_json(request)
    csr = pem_to_der(field(body, "csr"), label=CSR_LABEL, name="csr")
    return await _agent_svid_response(request, lambda a: a.renew_agent(agent, csr))


async def _agent_svid_response(
    request: web.Request, issue: Callable[[AgentAttestor], Awaitable[AgentSvidResult]]
) -> web.Response:
    """Time and count one agent SVID issue; answer with the SVID and the bundle."""
    services = request.app[SERVICES]
    with services.metrics.time_issue("agent"):
        result = await issue(services.attestor)
    services.metrics.count_issued("agent")
    return json_response({**svid_json(result.svid), "bundle": bundle_json(result.bundle)})


async def get_entries(request: web.Request) -> web.Response:
    """GET /v1/agent/entries?since=R&wait=S[&bundle_sequence=N&authorities=A]: the caller's
    entries, long-polling past entries revision R and authorities revision A; records the bundle
    sequence N the agent holds; the answer adds the bundle sequence and tainted authorities."""
    agent = await authenticate_agent(request)
    since = _query_number(request, "since", int, default=-1)
    wait = min(_query_number(request, "wait", float, default=0.0), MAX_LONG_POLL)
    held = _query_number(request, "bundle_sequence", int, default=-1)
    seen = _query_number(request, "authorities", int, default=-1)
    services = request.app[SERVICES]
    registry, sync = services.registry, services.agent_sync
    if sync is not None and held >= 0:
        await sync.report_bundle_sequence(agent, held)
    snapshot = await registry.entries_for_agent(agent.spiffe_id)
    view = await sync.view() if sync is not None else None
    fresh = view is not None and seen >= 0 and view.tainted.revision != seen
    if wait > 0 and snapshot.revision <= since and not fresh:
        waiting: Awaitable[object] = registry.wait_for_entries(since, wait)
        if sync is not None:
            waiting = sync.wait(waiting, seen, wait)  # or until authorities move past seen
        with services.metrics.long_polls.track_inprogress():
            await _wait_unless_closing(waiting, services.closing)
        snapshot = await registry.entries_for_agent(agent.spiffe_id)
        view = await sync.view() if sync is not None else None
    entries = [entry.to_json() for entry in snapshot.entries]
    extra = view.to_json() if view is not None else {}
    return json_response({"revision": snapshot.revision, "entries": entries, **extra})


async def post_x509(request: web.Request) -> web.Response:
    """POST /v1/agent/x509 {requests: [{entry_id, csr}]} -> one result (SVID or error) per item."""
    agent = await authenticate_agent(request)
    body = await read_json(request, limit=BATCH_BODY_LIMIT)
    items = field(body, "requests", list)
    if not items or len(items) > MAX_BATCH:
        raise InvalidRequest(f"'requests' must hold 1 to {MAX_BATCH} items")
    requests = [_csr_request(item, i) for i, item in enumerate(items)]
    services = request.app[SERVICES]
    with services.metrics.time_issue("x509"):
        results = await services.issuer.sign_x509_svids(agent, requests)
    services.metrics.count_issued("x509", sum(1 for r in results if r.svid is not None))
    return json_response(
        {
            "results": [_x509_result(r, services.metrics) for r in results],
            "bundle_sequence": services.authority.bundle.sequence,
        }
    )


async def post_jwt(request: web.Request) -> web.Response:
    """POST /v1/agent/jwt {entry_id, audience: [...], ttl?} -> a JWT-SVID."""
    agent = await authenticate_agent(request)
    body = await read_json(request)
    entry_id = field(body, "entry_id")
    audience = _audience(body)
    ttl = optional_ttl(body)
    services = request.app[SERVICES]
    with services.metrics.time_issue("jwt"):
        svid = await services.issuer.mint_jwt_svid(agent, entry_id, audience, ttl=ttl)
    services.metrics.count_issued("jwt")
    return json_response(jwt_json(svid))


def jwt_json(svid: JwtSvid) -> dict[str, Any]:
    return {
        "token": svid.token,
        "spiffe_id": str(svid.spiffe_id),
        "audience": list(svid.audience),
        "expires_at": svid.expires_at.isoformat(),
    }


async def _wait_unless_closing(waiting: Awaitable[object], closing: asyncio.Event) -> None:
    """Await ``waiting`` but give up when the CA shuts down (long-polls must not delay it)."""
    tasks = {asyncio.ensure_future(waiting), asyncio.ensure_future(closing.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _csr_request(item: object, index: int) -> CsrRequest:
    if not isinstance(item, dict):
        raise InvalidRequest(f"requests[{index}] must be an object")
    entry_id = field(item, "entry_id")
    csr = pem_to_der(field(item, "csr"), label=CSR_LABEL, name=f"requests[{index}].csr")
    return CsrRequest(entry_id=entry_id, csr_der=csr)


def _x509_result(result: X509SvidResult, metrics: CaMetrics) -> dict[str, Any]:
    if result.svid is not None:
        return {"entry_id": result.entry_id, **svid_json(result.svid)}
    error = result.error or S2SError("not issued")
    metrics.count_error(error.code)
    return {
        "entry_id": result.entry_id,
        "error": error.code,
        "status": status_for(error.code),
        "message": str(error),
    }


def _audience(body: Mapping[str, Any]) -> list[str]:
    audience: list[str] = field(body, "audience", list)
    if not audience or not all(isinstance(a, str) and a for a in audience):
        raise InvalidRequest("'audience' must be a non-empty list of non-empty strings")
    return audience


def optional_ttl(body: Mapping[str, Any]) -> timedelta | None:
    if body.get("ttl") is None:
        return None
    seconds = field(body, "ttl", int)
    if seconds <= 0:
        raise InvalidRequest("'ttl' must be a positive number of seconds")
    return timedelta(seconds=seconds)


def _query_number(request: web.Request, name: str, kind: type[_N], *, default: _N) -> _N:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise InvalidRequest(f"query parameter {name!r} must be a number") from None
    if not value >= 0:  # negative or NaN
        raise InvalidRequest(f"query parameter {name!r} must not be negative")
    return value


def public_app(
    services: ApiServices, *, client_max_size: int = BATCH_BODY_LIMIT
) -> web.Application:
    """The HTTPS application: public endpoints and the agent API."""
    app = web.Application(
        middlewares=[error_middleware(services.metrics)], client_max_size=client_max_size
    )
    app[SERVICES] = services
    app.router.add_get("/v1/bundle", get_bundle)
    app.router.add_get("/.well-known/jwks.json", get_jwks)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/readyz", get_readyz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/agent/attest", post_attest)
    app.router.add_post("/v1/agent/renew", post_renew)
    app.router.add_get("/v1/agent/entries", get_entries)
    app.router.add_post("/v1/agent/x509", post_x509)
    app.router.add_post("/v1/agent/jwt", post_jwt)
    app.router.add_get("/v1/crl", get_crl)
    app.router.add_get("/v1/revocations", get_revocations)
    return app
