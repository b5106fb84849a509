"""The service objects the CA's HTTP adapters call, as one value stored on the aiohttp app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as field_
from typing import Final

from aiohttp import web

from s2s.ca.agent_sync import AgentSync
from s2s.ca.attestation import AgentAttestor
from s2s.ca.authority import Authority
from s2s.ca.config import ServerLimits
from s2s.ca.crl import CrlPublisher
from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.federation_refresher import FederationRefresher
from s2s.ca.http_guard import LongPollSlots
from s2s.ca.issuance import Issuer
from s2s.ca.lifecycle import AuthorityLifecycle
from s2s.ca.metrics import CaMetrics
from s2s.ca.oauth_service import TokenService
from s2s.ca.registry import Registry
from s2s.ca.revocations import RevocationService
from s2s.ca.root_rotation import RootRotation
from s2s.ca.store_health import StoreHealth
from s2s.core.errors import NotFound, Unavailable

__all__ = ["SERVICES", "ApiServices"]


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
    jwt_issuer: str | None = None  # ``iss`` of JWT-SVIDs and of the OIDC discovery document
    oauth: TokenService | None = None  # the OAuth 2.0 token service (oauth_issuer set)
    federation: FederationRefresher | None = None  # relationships and their refresher
    federated_bundles: FederatedBundles | None = None  # other trust domains' bundles
    store_health: StoreHealth | None = None  # None: always served (a store that cannot go away)
    long_polls: LongPollSlots = field_(
        default_factory=lambda: LongPollSlots(ServerLimits().max_long_polls)
    )

    def revocation_service(self) -> RevocationService:
        if self.revocations is None:
            raise Unavailable("this CA serves no revocation data")
        return self.revocations

    def token_service(self) -> TokenService:
        if self.oauth is None:
            raise NotFound("this CA runs no token service (set oauth_issuer or jwt_issuer)")
        return self.oauth

    def federation_bundles(self) -> FederatedBundles:
        if self.federated_bundles is None:
            raise Unavailable("this CA keeps no federated bundles")
        return self.federated_bundles

    def crl_publisher(self) -> CrlPublisher:
        if self.crls is None:
            raise Unavailable("this CA serves no CRLs")
        return self.crls


SERVICES: Final = web.AppKey("services", ApiServices)
