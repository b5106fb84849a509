"""Admin API routes for federation relationships (on the admin Unix socket, like entries):

- ``GET  /v1/federation`` -> ``{"relationships": [...]}``
- ``GET  /v1/federation/show?trust_domain=TD``
- ``POST /v1/federation`` ``{trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id?,
  bundle?}`` -> 201 (``bundle``: SPIFFE bundle JSON or PEM text, bootstraps https_spiffe)
- ``POST /v1/federation/update`` ``{trust_domain, bundle_endpoint_url?, profile?,
  endpoint_spiffe_id?, bundle?}``
- ``POST /v1/federation/delete`` ``{trust_domain}``
- ``POST /v1/federation/refresh`` ``{trust_domain}``: fetch now; the answer is the relationship
  with its bundle, or the error that kept the last good bundle

Each relationship is shown with the bundle held for its trust domain (sequence, source, when it
was last fetched and how old that is) and the refresher's status.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from s2s.ca.federated_bundles import FederatedBundleRecord
from s2s.ca.federation import FederationRelationships
from s2s.ca.federation_refresher import FederationRefresher
from s2s.ca.http_json import field, json_response, read_json
from s2s.ca.http_services import SERVICES
from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.clock import utc
from s2s.core.errors import InvalidRequest, InvalidSpiffeId, NotFound
from s2s.core.federation import EndpointProfile, FederationRelationship
from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = ["add_federation_routes", "parse_bundle_text"]

_BODY_LIMIT: Final = MAX_BUNDLE_BYTES
_FIELDS: Final = frozenset(
    {"trust_domain", "bundle_endpoint_url", "profile", "endpoint_spiffe_id", "bundle"}
)


def _refresher(request: web.Request) -> FederationRefresher:
    federation = request.app[SERVICES].federation
    if federation is None:
        raise NotFound("this CA keeps no federation relationships")
    return federation


def _relationships(request: web.Request) -> FederationRelationships:
    return _refresher(request).relationships


def parse_bundle_text(trust_domain: TrustDomain, text: object) -> Bundle:
    """A bundle of ``trust_domain`` from SPIFFE bundle JSON or PEM certificates."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("'bundle' must be SPIFFE bundle JSON or PEM certificates")
    if text.lstrip().startswith("-----BEGIN"):
        return Bundle.from_x509_pem(trust_domain, text.encode())
    return Bundle.decode(trust_domain, text)


def _trust_domain(value: object) -> TrustDomain:
    if not isinstance(value, str):
        raise InvalidRequest("give trust_domain")
    try:
        return TrustDomain.parse(value)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"trust_domain: {exc}") from None


def _profile(value: object) -> EndpointProfile:
    try:
        return EndpointProfile(str(value))
    except ValueError:
        raise InvalidRequest("profile must be https_spiffe or https_web") from None


def _spiffe_id(value: object) -> SpiffeId | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("endpoint_spiffe_id must be a SPIFFE ID")
    try:
        return SpiffeId.parse(value)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"endpoint_spiffe_id: {exc}") from None


async def _shown(request: web.Request, relationship: FederationRelationship) -> dict[str, Any]:
    refresher = _refresher(request)
    held = await refresher.bundles.get(relationship.trust_domain)
    out = relationship.to_json()
    out["bundle"] = None if held is None else _bundle_json(held, refresher)
    return out


def _bundle_json(held: FederatedBundleRecord, refresher: FederationRefresher) -> dict[str, Any]:
    origin = held.refreshed_at or held.updated_at
    now = utc(refresher.clock.now())
    return {
        "sequence": held.bundle.sequence,
        "refresh_hint": held.bundle.refresh_hint,
        "source": held.source,
        "x509_authorities": len(held.bundle.x509_authorities),
        "jwt_authorities": len(held.bundle.jwt_authorities),
        "updated_at": held.updated_at.isoformat(),
        "refreshed_at": None if held.refreshed_at is None else held.refreshed_at.isoformat(),
        "age_seconds": max(int((now - origin).total_seconds()), 0),
    }


async def list_relationships(request: web.Request) -> web.Response:
    found = await _relationships(request).list()
    return json_response({"relationships": [await _shown(request, r) for r in found]})


async def show_relationship(request: web.Request) -> web.Response:
    td = _trust_domain(request.query.get("trust_domain"))
    return json_response(await _shown(request, await _relationships(request).get(td)))


def _checked(body: dict[str, Any]) -> TrustDomain:
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}")
    return _trust_domain(body.get("trust_domain"))


async def create_relationship(request: web.Request) -> web.Response:
    body = await read_json(request, limit=_BODY_LIMIT)
    td = _checked(body)
    bundle = parse_bundle_text(td, body["bundle"]) if body.get("bundle") is not None else None
    created = await _relationships(request).create(
        td,
        url=field(body, "bundle_endpoint_url"),
        profile=_profile(body.get("profile")),
        endpoint_spiffe_id=_spiffe_id(body.get("endpoint_spiffe_id")),
        bundle=bundle,
    )
    return json_response(await _shown(request, created), status=201)


async def update_relationship(request: web.Request) -> web.Response:
    body = await read_json(request, limit=_BODY_LIMIT)
    td = _checked(body)
    bundle = parse_bundle_text(td, body["bundle"]) if body.get("bundle") is not None else None
    changes: dict[str, Any] = {}
    if "endpoint_spiffe_id" in body:
        changes["endpoint_spiffe_id"] = _spiffe_id(body["endpoint_spiffe_id"])
    if body.get("profile") is not None:
        changes["profile"] = _profile(body["profile"])
    if body.get("bundle_endpoint_url") is not None:
        changes["url"] = field(body, "bundle_endpoint_url")
    if not changes and bundle is None:
        raise InvalidRequest("nothing to update")
    updated = await _relationships(request).update(td, bundle=bundle, **changes)
    return json_response(await _shown(request, updated))


async def delete_relationship(request: web.Request) -> web.Response:
    body = await read_json(request)
    td = _checked(body)
    return json_response((await _relationships(request).delete(td)).to_json())


async def refresh_relationship(request: web.Request) -> web.Response:
    body = await read_json(request)
    td = _checked(body)
    refresher = _refresher(request)
    await refresher.refresh(td)
    return json_response(await _shown(request, await refresher.relationships.get(td)))


def add_federation_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/federation", list_relationships)
    r.add_get("/v1/federation/show", show_relationship)
    r.add_post("/v1/federation", create_relationship)
    r.add_post("/v1/federation/update", update_relationship)
    r.add_post("/v1/federation/delete", delete_relationship)
    r.add_post("/v1/federation/refresh", refresh_relationship)
