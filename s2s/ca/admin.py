"""The admin API: JSON over HTTP on a Unix socket in the data dir (mode 0600, owner only).

File permissions are the authorization (whoever can open the socket is an admin); as a second
fence the server refuses peers whose uid (SO_PEERCRED) is neither its own nor root. Routes mirror
``s2s-ca`` commands; handlers parse, call one service method and encode, like ``http.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiMapping

from s2s.ca.admin_bundles import add_bundle_routes, check_federates_with
from s2s.ca.admin_clients import add_client_routes
from s2s.ca.admin_federation import add_federation_routes
from s2s.ca.audit import AdminCaller, AuditLog, admin_caller
from s2s.ca.http import get_crl, get_healthz, get_readyz, get_revocations, jwt_json, svid_json
from s2s.ca.http_json import field, json_response, optional_ttl, read_json, seconds_field
from s2s.ca.http_middleware import error_middleware
from s2s.ca.http_services import SERVICES, ApiServices
from s2s.ca.lifecycle import LifecycleKind
from s2s.ca.registry import agent_to_json
from s2s.ca.root_rotation import RootRotation
from s2s.core.errors import (
    Conflict,
    InvalidConfig,
    InvalidRequest,
    InvalidSpiffeId,
    NotAuthorized,
    NotFound,
    S2SError,
    Unavailable,
)
from s2s.core.selectors import parse_entry_selectors
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.log import F

__all__ = [
    "admin_app",
    "bind_admin_socket",
    "ensure_admin_socket_free",
    "entry_fields",
]

log = logging.getLogger(__name__)

SOCKET_MODE: Final = 0o600
_ENTRY_FIELDS: Final = frozenset(
    {
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "hint",
        "federates_with",
    }
)


def ensure_admin_socket_free(path: Path) -> None:
    """Refuse to start when another CA answers on ``path``; remove a stale socket file."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
        else:
            raise Conflict(f"another CA is already serving this data dir (admin socket {path})")
        finally:
            probe.close()
    elif path.exists() or path.is_symlink():
        raise InvalidConfig(f"{path} exists and is not a socket; refusing to replace it")


MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, one for the terminating NUL


def bind_admin_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, 0600, created race-free.

    The socket is chmod-ed after ``bind`` and before ``listen``: nobody can connect before the
    mode is final. A stale socket file (no one listening) is replaced; a live one is a Conflict.
    """
    ensure_admin_socket_free(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)  # "AF_UNIX path too long" comes without an errno
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            reason += f" (at most {MAX_SOCKET_PATH} bytes: use a shorter --data-dir)"
        raise InvalidConfig(f"cannot listen on admin socket {path}: {reason}") from exc
    sock.setblocking(False)
    return sock


def _peer(request: web.Request) -> AdminCaller | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return AdminCaller(uid=int(uid), pid=int(pid))


def owner_only(audit: AuditLog) -> Any:
    """Middleware: refuse any peer that is neither this process's user nor root; name the
    caller (uid, pid) on the audit lines of its changes; audit every refused change."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        caller = _peer(request)
        if caller is not None and caller.uid not in (0, os.getuid()):
            log.warning("admin.refused", extra={F.UID: caller.uid, F.PID: caller.pid})
            refused = NotAuthorized("the admin API answers only the CA's own user")
            _audit_refused(audit, request, caller, refused.code, str(refused))
            raise refused
        with admin_caller(caller):
            try:
                response: web.StreamResponse = await handler(request)
            except S2SError as exc:
                if request.method not in _READS:
                    _audit_refused(audit, request, caller, exc.code, str(exc))
                raise
            except web.HTTPException as exc:
                if request.method not in _READS and exc.status >= 400:
                    _audit_refused(audit, request, caller, f"http_{exc.status}", exc.reason)
                raise
        return response

    return middleware


_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def _audit_refused(
    audit: AuditLog, request: web.Request, caller: AdminCaller | None, code: str, message: str
) -> None:
    entry_id = request.match_info.get("id")
    audit.admin_refused(
        method=request.method,
        path=request.path,
        error=code,
        detail=message,
        caller=caller,
        target=None if entry_id is None else unquote(entry_id),
    )


# ---- encoders -----------------------------------------------------------------------------


def entry_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """Typed keyword arguments for ``Registry.create_entry``/``update_entry`` from JSON."""
    unknown = sorted(set(body) - _ENTRY_FIELDS - {"revision"})
    if unknown:
        raise InvalidRequest(f"unknown entry field(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name in ("spiffe_id", "parent_id"):
        if name in body:
            out[name] = SpiffeId.parse(field(body, name))
    if "selectors" in body:
        out["selectors"] = parse_entry_selectors(_strings(body, "selectors"))
    for name in ("x509_svid_ttl", "jwt_svid_ttl"):
        if name in body:
            out[name] = seconds_field(body, name)
    if "dns_names" in body:
        out["dns_names"] = tuple(_strings(body, "dns_names"))
    if "hint" in body:
        out["hint"] = field(body, "hint")
    if "federates_with" in body:
        out["federates_with"] = _trust_domains(_strings(body, "federates_with"))
    return out


def _trust_domains(names: list[str]) -> frozenset[TrustDomain]:
    try:
        return frozenset(TrustDomain.parse(n) for n in names)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"federates_with: {exc}") from None


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    values: list[str] = field(body, name, list)
    if not all(isinstance(v, str) for v in values):
        raise InvalidRequest(f"{name!r} must be a list of strings")
    return values


def _spiffe_id_arg(value: object, name: str = "spiffe_id") -> SpiffeId:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name!r} is required")
    return SpiffeId.parse(value)


def _services(request: web.Request) -> ApiServices:
    return request.app[SERVICES]


# ---- entries ------------------------------------------------------------------------------


async def list_entries(request: web.Request) -> web.Response:
    """GET /v1/entries?parent_id=&spiffe_id=&selector=... (repeatable; the filters combine)."""
    snapshot = await _services(request).registry.list_entries(**entry_filters(request.query))
    entries = [e.to_json() for e in snapshot.entries]
    return json_response({"revision": snapshot.revision, "entries": entries})


def entry_filters(query: MultiMapping[str]) -> dict[str, Any]:
    """``Registry.list_entries`` filters from a query string, parsed (400 when malformed)."""
    _only(query, {"parent_id", "spiffe_id", "selector", "federates_with"})
    out: dict[str, Any] = {}
    for name in ("parent_id", "spiffe_id"):
        if name in query:
            out[name] = _spiffe_id_arg(query.get(name), name)
    if "selector" in query:
        out["selectors"] = parse_entry_selectors(query.getall("selector"))
    if "federates_with" in query:
        out["federates_with"] = _trust_domains(query.getall("federates_with"))
    return out


def agent_filters(query: MultiMapping[str]) -> dict[str, Any]:
    """``Registry.list_agents`` filters from a query string, parsed (400 when malformed)."""
    _only(query, {"attestation_type", "banned", "expires_before"})
    out: dict[str, Any] = {}
    if "attestation_type" in query:
        out["attestation_type"] = query["attestation_type"]
    if "banned" in query:
        if query["banned"] not in ("true", "false"):
            raise InvalidRequest("'banned' must be true or false")
        out["banned"] = query["banned"] == "true"
    if "expires_before" in query:
        try:
            when = datetime.fromisoformat(query["expires_before"])
        except ValueError:
            raise InvalidRequest(
                f"'expires_before' is not an ISO 8601 time: {query['expires_before']!r}"
            ) from None
        if when.tzinfo is None:
            raise InvalidRequest("'expires_before' needs a time zone (e.g. 2026-01-02T03:04Z)")
        out["expires_before"] = when
    return out


def _only(query: MultiMapping[str], known: set[str]) -> None:
    unknown = sorted(set(query) - known)
    if unknown:
        raise InvalidRequest(
            f"unknown filter(s): {', '.join(unknown)}; use {', '.join(sorted(known))}"
        )


async def create_entry(request: web.Request) -> web.Response:
    fields = entry_fields(await read_json(request))
    for required in ("spiffe_id", "parent_id", "selectors"):
        if required not in fields:
            raise InvalidRequest(f"missing field {required!r}")
    await check_federates_with(_services(request), fields.get("federates_with", ()))
    entry = await _services(request).registry.create_entry(**fields)
    return json_response(entry.to_json(), status=201)


async def show_entry(request: web.Request) -> web.Response:
    entry = await _services(request).registry.get_entry(unquote(request.match_info["id"]))
    return json_response(entry.to_json())


async def update_entry(request: web.Request) -> web.Response:
    body = await read_json(request)
    expected = body.get("revision")
    if expected is not None and (type(expected) is not int or expected < 0):
        raise InvalidRequest("'revision' must be a non-negative integer")
    fields = entry_fields(body)
    if not fields:
        raise InvalidRequest("nothing to update")
    await check_federates_with(_services(request), fields.get("federates_with", ()))
    registry = _services(request).registry
    entry = await registry.update_entry(
        unquote(request.match_info["id"]), expected_revision=expected, **fields
    )
    return json_response(entry.to_json())


async def delete_entry(request: web.Request) -> web.Response:
    entry_id = unquote(request.match_info["id"])
    await _services(request).registry.delete_entry(entry_id)
    return json_response({"id": entry_id, "deleted": True})


# ---- tokens and agents --------------------------------------------------------------------


async def generate_token(request: web.Request) -> web.Response:
    ttl = optional_ttl(await read_json(request))
    token = await _services(request).registry.generate_join_token(ttl=ttl)
    return json_response(
        {
            "token": token.token,
            "agent_id": str(token.agent_id),
            "expires_at": token.expires_at.isoformat(),
        },
        status=201,
    )


async def list_agents(request: web.Request) -> web.Response:
    """GET /v1/agents?attestation_type=&banned=true|false&expires_before=<ISO 8601>."""
    agents = await _services(request).registry.list_agents(**agent_filters(request.query))
    return json_response({"agents": [agent_to_json(a) for a in agents]})


async def show_agent(request: web.Request) -> web.Response:
    """GET /v1/agents/show?spiffe_id= -> the agent, its entries count, first and last seen."""
    spiffe_id = _spiffe_id_arg(request.query.get("spiffe_id"))
    return json_response((await _services(request).registry.agent_detail(spiffe_id)).to_json())


async def evict_agent(request: web.Request) -> web.Response:
    spiffe_id = _spiffe_id_arg((await read_json(request)).get("spiffe_id"))
    await _services(request).registry.evict_agent(spiffe_id)
    return json_response({"spiffe_id": str(spiffe_id), "evicted": True})


async def ban_agent(request: web.Request) -> web.Response:
    spiffe_id = _spiffe_id_arg((await read_json(request)).get("spiffe_id"))
    return json_response(agent_to_json(await _services(request).registry.ban_agent(spiffe_id)))


# ---- bundle, authorities, minting ---------------------------------------------------------


async def show_bundle(request: web.Request) -> web.Response:
    bundle = _services(request).authority.bundle
    fmt = request.query.get("format", "spiffe")
    if fmt == "pem":
        return web.Response(body=bundle.x509_pem(), content_type="application/x-pem-file")
    if fmt == "spiffe":
        return web.Response(body=bundle.encode(), content_type="application/json")
    raise InvalidRequest("format must be 'pem' or 'spiffe'")


async def list_authorities(request: web.Request) -> web.Response:
    found = await _services(request).authority.list_authorities()
    return json_response({"authorities": [a.to_json() for a in found]})


async def mint_x509(request: web.Request) -> web.Response:
    body = await read_json(request)
    spiffe_id = _spiffe_id_arg(body.get("spiffe_id"))
    dns_names = tuple(_strings(body, "dns_names")) if "dns_names" in body else ()
    services = _services(request)
    svid = await services.issuer.mint_x509_svid(
        spiffe_id, ttl=optional_ttl(body), dns_names=dns_names
    )
    services.metrics.count_issued("x509")
    out = svid_json(svid)
    out["chain_pem"] = out.pop("svid_chain")
    out["key_pem"] = svid.key_pem().decode("ascii")  # owner-only socket; never logged
    out["bundle_pem"] = services.authority.bundle.x509_pem().decode("ascii")
    return json_response(out, status=201)


async def mint_jwt(request: web.Request) -> web.Response:
    body = await read_json(request)
    spiffe_id = _spiffe_id_arg(body.get("spiffe_id"))
    audience = _strings(body, "audience")
    services = _services(request)
    svid = await services.issuer.mint_jwt_svid_for(spiffe_id, audience, ttl=optional_ttl(body))
    services.metrics.count_issued("jwt")
    return json_response(jwt_json(svid), status=201)


# ---- revocation ---------------------------------------------------------------------------

_REVOKE_TARGETS: Final = ("serial", "spiffe_id", "jti", "agent")


async def revoke(request: web.Request) -> web.Response:
    """POST /v1/revocations {serial|spiffe_id|jti|agent: text, reason?} -> RevocationResult."""
    body = await read_json(request)
    named = [t for t in _REVOKE_TARGETS if t in body]
    unknown = sorted(set(body) - set(_REVOKE_TARGETS) - {"reason"})
    if len(named) != 1 or unknown:
        raise InvalidRequest(f"give exactly one of {', '.join(_REVOKE_TARGETS)} (and a reason)")
    reason = field(body, "reason") if "reason" in body else ""
    service = _services(request).revocation_service()
    result = await service.revoke(named[0], field(body, named[0]), reason=reason)
    return json_response(result.to_json())


# ---- authority lifecycle and root rotation ------------------------------------------------

_LIFECYCLE_ACTIONS: Final = ("prepare", "activate", "taint", "revoke")


async def authority_action(request: web.Request) -> web.Response:
    """POST /v1/authorities/{prepare|activate|taint|revoke} {kind: x509|jwt, id?} -> authority."""
    action = request.match_info["action"]
    if action not in _LIFECYCLE_ACTIONS:
        raise NotFound(f"no authority action {action!r}; use {', '.join(_LIFECYCLE_ACTIONS)}")
    body = await read_json(request)
    unknown = sorted(set(body) - {"kind", "id"})
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
    try:
        kind = LifecycleKind(body.get("kind", "x509"))
    except ValueError:
        raise InvalidRequest("'kind' must be 'x509' or 'jwt'") from None
    lifecycle = _services(request).lifecycle
    if lifecycle is None:
        raise Unavailable("this CA has no authority lifecycle service")
    if action == "prepare":
        info = await lifecycle.prepare(kind)
    else:
        authority_id = field(body, "id") if body.get("id") is not None else None
        info = await getattr(lifecycle, action)(kind, authority_id)
    return json_response(info.to_json())


def _rotation(request: web.Request) -> RootRotation:
    rotation = _services(request).root_rotation
    if rotation is None:
        raise Unavailable("this CA cannot rotate its root")
    return rotation


async def root_rotation_status(request: web.Request) -> web.Response:
    """GET /v1/root-rotation -> RotationProgress JSON (changes nothing)."""
    return json_response((await _rotation(request).status()).to_json())


async def root_rotation_step(request: web.Request) -> web.Response:
    """POST /v1/root-rotation/step {new?: bool} -> RotationProgress JSON after one step."""
    body = await read_json(request)
    new = field(body, "new", bool) if "new" in body else False
    return json_response((await _rotation(request).step(new=new)).to_json())


def admin_app(services: ApiServices, *, audit: AuditLog | None = None) -> web.Application:
    """The admin application (serve it on :func:`bind_admin_socket`)."""
    guard = owner_only(audit if audit is not None else AuditLog())
    app = web.Application(middlewares=[error_middleware(services.metrics, admin=True), guard])
    app[SERVICES] = services
    r = app.router
    r.add_get("/healthz", get_healthz)
    r.add_get("/readyz", get_readyz)
    r.add_get("/v1/entries", list_entries)
    r.add_post("/v1/entries", create_entry)
    r.add_get("/v1/entries/{id}", show_entry)
    r.add_patch("/v1/entries/{id}", update_entry)
    r.add_delete("/v1/entries/{id}", delete_entry)
    r.add_post("/v1/tokens", generate_token)
    r.add_get("/v1/agents", list_agents)
    r.add_get("/v1/agents/show", show_agent)
    r.add_post("/v1/agents/evict", evict_agent)
    r.add_post("/v1/agents/ban", ban_agent)
    r.add_get("/v1/bundle", show_bundle)
    r.add_get("/v1/authorities", list_authorities)
    r.add_post("/v1/authorities/{action}", authority_action)
    r.add_get("/v1/root-rotation", root_rotation_status)
    r.add_post("/v1/root-rotation/step", root_rotation_step)
    r.add_post("/v1/x509/mint", mint_x509)
    r.add_post("/v1/jwt/mint", mint_jwt)
    r.add_post("/v1/revocations", revoke)
    r.add_get("/v1/revocations", get_revocations)
    r.add_get("/v1/crl", get_crl)
    add_client_routes(app)
    add_federation_routes(app)
    add_bundle_routes(app)
    return app
