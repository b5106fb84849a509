"""s2s.verifier: what every service imports to prove who it is and check who it talks to.

The everyday names are here; integrations live in their own modules so that importing the
verifier does not pull them in: ``s2s.verifier.aiohttp`` (server site, client connector),
``s2s.verifier.jwt_aiohttp`` (Bearer JWT-SVID middleware), ``s2s.verifier.access_token_aiohttp``
(Bearer OAuth access-token middleware), ``s2s.verifier.access_token_fetch`` (the authorization
server's JWKS over HTTPS), ``s2s.verifier.pyopenssl`` (blocking servers that reject inside the
handshake), ``s2s.verifier.feeds_etcd`` and ``s2s.verifier.feeds_ca`` (revocation feeds).
"""

from __future__ import annotations

from s2s.verifier.access_token import AccessTokenValidator, require_scopes
from s2s.verifier.access_token_claims import AccessToken
from s2s.verifier.authorize import (
    Authorizer,
    authorize_any,
    authorize_id,
    authorize_if,
    authorize_member_of,
    authorize_one_of,
)
from s2s.verifier.jwt import JwtValidator, ValidatedJwt
from s2s.verifier.peer import PeerRejected, verify_peer
from s2s.verifier.revocations import CrlFileRevocations, InMemoryRevocations
from s2s.verifier.source import JwtSource, X509Source
from s2s.verifier.source_pem import PemFileX509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.sync import SyncJwtSource, SyncX509Source, open_jwt_source, open_x509_source
from s2s.verifier.tls import client_context, peer_spiffe_id_of, server_context
from s2s.verifier.workload_client import WorkloadApiClient
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = [
    "AccessToken",
    "AccessTokenValidator",
    "Authorizer",
    "CrlFileRevocations",
    "InMemoryRevocations",
    "JwtSource",
    "JwtValidator",
    "PeerRejected",
    "PemFileX509Source",
    "StaticX509Source",
    "SyncJwtSource",
    "SyncX509Source",
    "ValidatedJwt",
    "WorkloadApiClient",
    "X509Context",
    "X509Source",
    "X509SourceLike",
    "authorize_any",
    "authorize_id",
    "authorize_if",
    "authorize_member_of",
    "authorize_one_of",
    "client_context",
    "open_jwt_source",
    "open_x509_source",
    "peer_spiffe_id_of",
    "require_scopes",
    "server_context",
    "verify_peer",
]
