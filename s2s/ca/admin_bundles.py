"""Admin API routes for federated bundles (on the admin Unix socket, like entries):

- ``GET  /v1/federation/bundles`` -> ``{"bundles": [...]}``
- ``GET  /v1/federation/bundles/show?trust_domain=TD`` -> one record
- ``POST /v1/federation/bundles`` ``{trust_domain, bundle, format?}`` (``bundle``: the SPIFFE
  bundle JSON document as text, or with ``format: "pem"`` the X.509 roots as PEM, as SPIRE's
  ``bundle set -format pem`` takes) -> the record (201 when the trust domain had none)
- ``POST /v1/federation/bundles/delete`` ``{trust_domain, force?}`` (409 while entries federate
  with it, unless ``force``)

A record is shown with its bundle as a JSON object, its sequence and the count of each kind of
authority. :func:`check_federates_with` is what entries naming ``federates_with`` must pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web

from s2s.ca.federated_bundles import SOURCE_MANUAL, FederatedBundleRecord, FederatedBundles
from s2s.ca.http_json import field, json_response, read_json
from s2s.ca.http_services import SERVICES, ApiServices
from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.errors import Conflict, InvalidBundle, InvalidRequest, InvalidSpiffeId, NotFound
from s2s.core.federation import validate_fetched_bundle
from s2s.core.spiffe_id import TrustDomain

__all__ = ["add_bundle_routes", "check_federates_with", "record_view"]

_PATH: Final = "/v1/federation/bundles"
# The bundle travels as a JSON string: escaping can grow it; the bundle itself is checked after.
_BODY_LIMIT: Final = 2 * MAX_BUNDLE_BYTES + 4096


def record_view(record: FederatedBundleRecord) -> dict[str, Any]:
    """A record as the admin API shows it."""
    out = record.to_json()
    out["bundle"] = json.loads(out["bundle"])
    out["sequence"] = record.bundle.sequence
    out["refresh_hint"] = record.bundle.refresh_hint
    out["x509_authorities"] = len(record.bundle.x509_authorities)
    out["jwt_authorities"] = len(record.bundle.jwt_authorities)
    return out


async def check_federates_with(services: ApiServices, trust_domains: Iterable[TrustDomain]) -> None:
    """Refuse (InvalidRequest) a trust domain this CA holds no federated bundle and no federation
    relationship for: an entry federates only with trust domains it can deliver a bundle of (as
    SPIRE requires)."""
    federated = services.federated_bundles
    missing = []
    for td in sorted(trust_domains, key=str):
        if federated is not None:
            federated.check_foreign(td)  # our own: the clearer refusal
        if not await _held_or_federated(services, td):
            missing.append(str(td))
    if missing:
        raise InvalidRequest(
            f"no federated bundle for {', '.join(missing)}: set one first "
            "(s2s-ca bundle set --trust-domain TD --file F, or a federation relationship)"
        )


async def _held_or_federated(services: ApiServices, td: TrustDomain) -> bool:
    """A bundle of ``td`` is held, or a federation relationship will fetch one."""
    federated = services.federated_bundles
    if federated is not None and await federated.get(td) is not None:
        return True
    return services.federation is not None and (
        await services.federation.relationships.find(td) is not None
    )


def _bundles(request: web.Request) -> FederatedBundles:
    return request.app[SERVICES].federation_bundles()


def _trust_domain(value: object) -> TrustDomain:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'trust_domain' is required")
    try:
        return TrustDomain.parse(value)
    except InvalidSpiffeId as exc:
        raise InvalidRequest(f"trust_domain: {exc}") from None


async def list_bundles(request: web.Request) -> web.Response:
    records = await _bundles(request).list()
    return json_response({"bundles": [record_view(r) for r in records]})


async def show_bundle(request: web.Request) -> web.Response:
    td = _trust_domain(request.query.get("trust_domain"))
    record = await _bundles(request).get(td)
    if record is None:
        raise NotFound(f"no federated bundle for {td}")
    return json_response(record_view(record))


async def set_bundle(request: web.Request) -> web.Response:
    body = await read_json(request, limit=_BODY_LIMIT)
    td = _trust_domain(body.get("trust_domain"))
    text: str = field(body, "bundle")
    fmt = body.get("format", "spiffe")
    if fmt not in ("spiffe", "pem"):
        raise InvalidRequest("'format' must be 'spiffe' or 'pem'")
    data = text.encode("utf-8", "surrogatepass")
    bundles = _bundles(request)
    bundles.check_foreign(td)
    try:
        if fmt == "pem":  # X.509 roots only; checked as the SPIFFE document they make
            data = Bundle.from_x509_pem(td, data).encode()
        # The checks of a fetched bundle, but a bundle set by hand may go back in sequence.
        bundle = validate_fetched_bundle(td, data, previous=None)
    except InvalidBundle as exc:
        raise InvalidRequest(f"the bundle for {td} is refused: {exc}") from None
    existed = await bundles.get(td) is not None
    record = await bundles.put(bundle, source=SOURCE_MANUAL)
    return json_response(record_view(record), status=200 if existed else 201)


async def delete_bundle(request: web.Request) -> web.Response:
    """Refused (409) while entries federate with the trust domain, unless ``force`` (as SPIRE's
    restrict mode): their workloads would stop trusting it. Their ``federates_with`` is kept, so a
    bundle set again is delivered again."""
    body = await read_json(request)
    td = _trust_domain(body.get("trust_domain"))
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("'force' must be true or false")
    bundles = _bundles(request)
    if await bundles.get(td) is None:
        raise NotFound(f"no federated bundle for trust domain {td}")
    users = (await request.app[SERVICES].registry.list_entries(federates_with=[td])).entries
    if users and not force:
        raise Conflict(
            f"{len(users)} {'entry federates' if len(users) == 1 else 'entries federate'} with "
            f"{td} (e.g. "
            f"{users[0].id}); their workloads would stop trusting it: update them first, or "
            "delete with force"
        )
    await bundles.delete(td)
    return json_response({"trust_domain": str(td), "deleted": True, "entries": len(users)})


def add_bundle_routes(app: web.Application) -> None:
    """Add the federated bundle routes to the admin app."""
    r = app.router
    r.add_get(_PATH, list_bundles)
    r.add_get(f"{_PATH}/show", show_bundle)
    r.add_post(_PATH, set_bundle)
    r.add_post(f"{_PATH}/delete", delete_bundle)
