"""Admin API routes for OAuth clients (on the admin Unix socket, like entries):

- ``GET  /v1/oauth/clients`` -> ``{"clients": [...]}``
- ``GET  /v1/oauth/clients/show?client_id=ID``
- ``POST /v1/oauth/clients`` ``{spiffe_id | client_id, scopes: [...], audiences: [...]}`` -> 201,
  with ``client_secret`` once for a secret client
- ``POST /v1/oauth/clients/update`` ``{client_id, scopes?, audiences?}``
- ``POST /v1/oauth/clients/delete`` ``{client_id}``
- ``POST /v1/oauth/clients/rotate-secret`` ``{client_id, finish?}``: a new secret beside the
  current one (returned once), or with ``finish`` only the newest kept

Secret hashes never leave the CA.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from s2s.ca.http_json import field, json_response, read_json
from s2s.ca.http_services import SERVICES
from s2s.ca.oauth_clients import ClientRegistry
from s2s.core.errors import InvalidRequest

__all__ = ["add_client_routes"]


def _clients(request: web.Request) -> ClientRegistry:
    return request.app[SERVICES].token_service().clients


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{name!r} must be a list of strings")
    return value


def _with_secret(record: Any, secret: str | None) -> dict[str, Any]:
    out: dict[str, Any] = record.to_json()
    if secret is not None:
        out["client_secret"] = secret
    return out


async def list_clients(request: web.Request) -> web.Response:
    records = await _clients(request).list()
    return json_response({"clients": [r.to_json() for r in records]})


async def show_client(request: web.Request) -> web.Response:
    client_id = request.query.get("client_id")
    if not client_id:
        raise InvalidRequest("give ?client_id=")
    return json_response((await _clients(request).get(client_id)).to_json())


async def create_client(request: web.Request) -> web.Response:
    body = await read_json(request)
    unknown = sorted(set(body) - {"spiffe_id", "client_id", "scopes", "audiences"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}")
    record, secret = await _clients(request).create(
        spiffe_id=body.get("spiffe_id"),
        client_id=body.get("client_id"),
        scopes=_strings(body, "scopes") or [],
        audiences=_strings(body, "audiences") or [],
    )
    return json_response(_with_secret(record, secret), status=201)


async def update_client(request: web.Request) -> web.Response:
    body = await read_json(request)
    record = await _clients(request).update(
        field(body, "client_id"),
        scopes=_strings(body, "scopes"),
        audiences=_strings(body, "audiences"),
    )
    return json_response(record.to_json())


async def delete_client(request: web.Request) -> web.Response:
    body = await read_json(request)
    record = await _clients(request).delete(field(body, "client_id"))
    return json_response(record.to_json())


async def rotate_secret(request: web.Request) -> web.Response:
    body = await read_json(request)
    finish = field(body, "finish", bool) if "finish" in body else False
    record, secret = await _clients(request).rotate_secret(field(body, "client_id"), finish=finish)
    return json_response(_with_secret(record, secret))


def add_client_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/oauth/clients", list_clients)
    r.add_get("/v1/oauth/clients/show", show_client)
    r.add_post("/v1/oauth/clients", create_client)
    r.add_post("/v1/oauth/clients/update", update_client)
    r.add_post("/v1/oauth/clients/delete", delete_client)
    r.add_post("/v1/oauth/clients/rotate-secret", rotate_secret)
