"""The CA's HTTPS API on aiohttp: public endpoints and the agent API.

This module only parses, calls a service object and encodes. HTTP statuses are chosen in the
HTTP layer only: ``STATUS_BY_CODE`` (``http_json``) maps each ``S2SError.code`` to a status, and
every error leaves as ``{"error": code, "message": ...}`` (``http_middleware``, which the admin
API in ``admin.py`` reuses).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.agent_sync import EntriesAnswer
from s2s.ca.attestation import AgentAttestor, AgentSvidResult
from s2s.ca.crl_values import render_crls
from s2s.ca.http_agent_auth import authenticate_agent
from s2s.ca.http_guard import (
    GUARD,
    ClientGone,
    ConnectionGuard,
    client_gone,
    connection_lost,
    request_deadlines,
)
from s2s.ca.http_json import (
    BATCH_BODY_LIMIT,
    BODY_TIMEOUT,
    CSR_LABEL,
    field,
    json_response,
    optional_ttl,
    pem_to_der,
    query_number,
    read_json,
    status_for,
)
from s2s.ca.http_middleware import error_middleware
from s2s.ca.http_services import SERVICES, ApiServices
from s2s.ca.http_store_gate import store_gate
from s2s.ca.issuance import MAX_BATCH, CsrRequest, X509SvidResult
from s2s.ca.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from s2s.ca.metrics import CaMetrics
from s2s.ca.oauth_http import add_oauth_routes
from s2s.ca.registry_cache import EntryDelta
from s2s.ca.signers import JwtSvid
from s2s.ca.store_health import StoreHealth
from s2s.core.bundle import Bundle
from s2s.core.errors import InvalidRequest, S2SError, Unavailable
from s2s.core.oauth_metadata import signing_jwks
from s2s.core.x509svid import X509Svid

# The names below were all defined here before the JSON helpers, the middleware, the services
# value and agent authentication moved to their own modules; importers keep using this one.
__all__ = [
    "get_crl",
    "get_healthz",
    "get_readyz",
    "get_revocations",
    "jwt_json",
    "public_app",
    "svid_json",
]

MAX_LONG_POLL: Final = 60.0


def svid_json(svid: X509Svid) -> dict[str, Any]:
    """An issued SVID as JSON: chain PEM (leaf first, no key), serial (hex) and expiry."""
    leaf, *issuers = svid.cert_chain
    chain = leaf.public_bytes(Encoding.PEM).decode("ascii") + "".join(map(_ca_pem, issuers))
    return {
        "spiffe_id": str(svid.spiffe_id),
        "svid_chain": chain,
        "serial": format(svid.serial, "x"),
        "expires_at": svid.not_after.isoformat(),
    }


@functools.lru_cache(maxsize=64)
def _ca_pem(certificate: x509.Certificate) -> str:
    """A CA certificate's PEM, encoded once: every SVID it signs carries it."""
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def bundle_json(bundle: Bundle) -> Any:
    return json.loads(bundle.encode())


# ---- public endpoints ---------------------------------------------------------------------


async def get_bundle(request: web.Request) -> web.Response:
    """GET /v1/bundle: the SPIFFE bundle (JWKS with x509-svid and jwt-svid keys)."""
    bundle = request.app[SERVICES].authority.bundle
    return web.Response(body=bundle.encode(), content_type="application/json")


async def get_jwks(request: web.Request) -> web.Response:
    """GET /.well-known/jwks.json: the JWT-SVID signing keys only, as ``use: sig`` keys with
    ``alg`` (the form generic JOSE and OIDC libraries accept; ``/v1/bundle`` keeps ``jwt-svid``)."""
    bundle = request.app[SERVICES].authority.bundle
    keys = ((a.kid, a.public_key) for a in bundle.jwt_authorities)
    return web.Response(body=signing_jwks(keys), content_type="application/json")


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
    """GET /v1/revocations?since=R&wait=S[&delta=1]: the full revocation set, long-polling past
    revision R (public, like the bundle: revocation data is not secret). With ``delta=1`` only what
    changed since R, when the CA's change log still covers R (else the full set)."""
    services = request.app[SERVICES]
    live = services.revocation_service().live
    since = query_number(request, "since", int, default=-1)
    wait = min(query_number(request, "wait", float, default=0.0), MAX_LONG_POLL)
    current = await live.refresh()
    if wait > 0 and current.version <= since:
        await _long_poll(request, lambda: live.wait(since, wait))
    answer = live.current()
    if services.crls is not None:  # CRLs first: a client that saw revision N gets CRLs >= N
        await services.crls.cover(answer.version)
    delta = live.delta_json(since, answer) if request.query.get("delta") == "1" else None
    body = live.feed_json(answer) if delta is None else delta
    return web.Response(body=body, content_type="application/json")


# ---- agent API ----------------------------------------------------------------------------


async def post_attest(request: web.Request) -> web.Response:
    """POST /v1/agent/attest {join_token, csr} -> agent SVID + bundle (the result counted)."""
    metrics = request.app[SERVICES].metrics
    try:
        body = await read_json(request)
        token = field(body, "join_token")
        csr = pem_to_der(field(body, "csr"), label=CSR_LABEL, name="csr")
        response = await _agent_svid_response(request, lambda a: a.attest_join_token(token, csr))
    except S2SError as exc:
        metrics.count_attestation(exc.code)
        raise
    metrics.count_attestation("ok")
    return response


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
    """GET /v1/agent/entries?since=R&wait=S[&bundle_sequence=N&authorities=A&federated=F&delta=1]:
    the caller's entries, long-polling past entries revision R, authorities revision A and
    federated bundles revision F; records the bundle sequence N the agent holds; the answer adds
    the bundle sequence, tainted authorities and the federated bundles its entries federate with.
    With delta=1 the answer may hold only the entries changed since R and the ids ``removed``
    (``"delta": true``), when the CA still knows what changed; else the full list."""
    agent = await authenticate_agent(request)
    since = query_number(request, "since", int, default=-1)
    wait = min(query_number(request, "wait", float, default=0.0), MAX_LONG_POLL)
    held = query_number(request, "bundle_sequence", int, default=-1)
    seen = query_number(request, "authorities", int, default=-1)
    fed_seen = query_number(request, "federated", int, default=-1)
    delta = query_number(request, "delta", int, default=0)
    if delta > 1:
        raise InvalidRequest("query parameter 'delta' must be 0 or 1")
    services = request.app[SERVICES]
    sync = services.agent_sync
    if sync is None:
        raise Unavailable("this CA serves no agent entries")
    if held >= 0:
        await sync.report_bundle_sequence(agent, held)
    answer = await sync.wait_for_entries(
        agent.spiffe_id,
        since=since,
        timeout=wait,
        authorities_seen=seen,
        federated_seen=fed_seen,
        hold=lambda waiting: _long_poll(request, waiting),
        stop=services.closing,
    )
    changes = (
        services.registry.entry_delta(agent.spiffe_id, since, answer.snapshot.revision)
        if delta
        else None
    )
    return json_response(_entries_json(answer, changes))


def _entries_json(answer: EntriesAnswer, changes: EntryDelta | None) -> dict[str, Any]:
    """The entries answer: only what changed (``"delta": true``) when ``changes`` is known."""
    extra = answer.view.to_json()
    if changes is not None:
        changed = [entry.to_json() for entry in changes.changed]
        body = {"revision": changes.revision, "delta": True, "entries": changed}
        return {**body, "removed": list(changes.removed), **extra}
    entries = [entry.to_json() for entry in answer.snapshot.entries]
    return {"revision": answer.snapshot.revision, "entries": entries, **extra}


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


async def _long_poll(request: web.Request, waiting: Callable[[], Awaitable[object]]) -> None:
    """Wait for ``waiting()``, unless ``max_long_polls`` requests already wait: then answer at
    once (each held request costs a connection for up to ``MAX_LONG_POLL`` seconds). A store
    that becomes unreachable meanwhile ends the wait with 503 (what is held may be stale); a
    client that goes away ends it with :class:`ClientGone` (its slot is free at once)."""
    services = request.app[SERVICES]
    health = services.store_health
    lost = connection_lost(request)
    if not client_gone(request):
        with services.long_polls.hold() as held:
            if held:
                with services.metrics.long_polls.track_inprogress():
                    await _wait_unless_closing(waiting(), services.closing, health, lost)
    if client_gone(request):
        raise ClientGone("the client closed the connection during a long-poll")
    if health is not None:
        health.check()


async def _wait_unless_closing(
    waiting: Awaitable[object],
    closing: asyncio.Event,
    health: StoreHealth | None = None,
    lost: asyncio.Event | None = None,
) -> None:
    """Await ``waiting`` but give up when the CA shuts down (long-polls must not delay it),
    the store becomes unreachable or the connection is ``lost``."""
    tasks = {asyncio.ensure_future(waiting), asyncio.ensure_future(closing.wait())}
    if health is not None:
        tasks.add(asyncio.ensure_future(health.went_down()))
    if lost is not None:
        tasks.add(asyncio.ensure_future(lost.wait()))
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


def public_app(
    services: ApiServices,
    *,
    client_max_size: int = BATCH_BODY_LIMIT,
    guard: ConnectionGuard | None = None,
) -> web.Application:
    """The HTTPS application: public endpoints and the agent API (under ``guard``'s header and
    body deadlines when given)."""
    middlewares = [error_middleware(services.metrics)]
    if services.store_health is not None:  # inside the error middleware: its 503 is JSON
        middlewares.append(store_gate(services.store_health))
    if guard is not None:
        middlewares.insert(0, request_deadlines)
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[SERVICES] = services
    if guard is not None:
        app[GUARD] = guard
        app[BODY_TIMEOUT] = guard.limits.body_timeout
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
    add_oauth_routes(app)
    return app
