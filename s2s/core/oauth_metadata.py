"""Discovery documents: OpenID Connect discovery for JWT-SVIDs, RFC 8414 metadata for the
authorization server, and JWKS in the form generic JOSE libraries accept (``use: sig``, ``alg``).

The SPIFFE bundle marks its JWT keys ``use: jwt-svid``; libraries that honour ``use`` (RFC 7517
section 4.2) then find "no applicable key", so the JWKS served at ``jwks_uri`` says ``sig``.

>>> check_issuer("https://ca.example.org")
'https://ca.example.org'
>>> openid_configuration("https://ca.example.org")["jwks_uri"]
'https://ca.example.org/.well-known/jwks.json'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from s2s.core.errors import InvalidConfig
from s2s.core.jwk import public_jwk

__all__ = [
    "ACCESS_TOKEN_ALGORITHM",
    "AUTH_METHODS",
    "INTROSPECTION_PATH",
    "JWKS_PATH",
    "OAUTH_JWKS_PATH",
    "OAUTH_METADATA_PATH",
    "OIDC_PATH",
    "REVOCATION_PATH",
    "TOKEN_PATH",
    "authorization_server_metadata",
    "check_issuer",
    "openid_configuration",
    "signing_jwks",
]

ACCESS_TOKEN_ALGORITHM: Final = "ES256"  # noqa: S105 (an algorithm name)
OIDC_PATH: Final = "/.well-known/openid-configuration"
OAUTH_METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
JWKS_PATH: Final = "/.well-known/jwks.json"  # the JWT-SVID keys
OAUTH_JWKS_PATH: Final = "/oauth/jwks.json"  # the authorization server's access-token keys
TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 (a path)
INTROSPECTION_PATH: Final = "/oauth/introspect"
REVOCATION_PATH: Final = "/oauth/revoke"
# RFC 8414 section 2 names; private_key_jwt is the JWT-SVID client_assertion (RFC 7523 2.2).
AUTH_METHODS: Final = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
)


def check_issuer(url: str, *, setting: str = "issuer") -> str:
    """An issuer identifier: an https URL with a host and no query or fragment (RFC 8414
    section 2), and no path, since the CA serves its discovery documents and endpoints at the
    root; a trailing slash is removed so that ``iss`` compares exactly."""
    if not isinstance(url, str) or not url:
        raise InvalidConfig(f"{setting} must be an https URL")
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if parts.scheme != "https" or not parts.hostname or path or parts.query or parts.fragment:
        # the CA serves discovery and its endpoints at the root: issuer + "/.well-known/..."
        raise InvalidConfig(
            f"{setting} must be https://HOST[:PORT] (no path, query or fragment), got {url!r}"
        )
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise InvalidConfig(f"{setting} has a bad port: {url!r}") from exc
    return url.rstrip("/")


def signing_jwks(keys: Iterable[tuple[str, PublicKeyTypes]]) -> bytes:
    """A JWKS of ``(kid, public key)`` with ``use: sig`` and ``alg: ES256`` on each key."""
    out = [
        {"kid": kid, "use": "sig", "alg": ACCESS_TOKEN_ALGORITHM, **public_jwk(key)}
        for kid, key in keys
    ]
    return json.dumps({"keys": out}, separators=(",", ":"), sort_keys=True).encode()


def openid_configuration(issuer: str) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 section 3 for JWT-SVIDs: the REQUIRED fields (JWT-SVIDs are
    ID-token-like JWTs with ``sub`` = the SPIFFE ID; there is no authorization endpoint)."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ACCESS_TOKEN_ALGORITHM],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
    }


def authorization_server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 section 2 metadata of the token service (client credentials only)."""
    return {
        "issuer": issuer,
        "token_endpoint": issuer + TOKEN_PATH,
        "jwks_uri": issuer + OAUTH_JWKS_PATH,
        "introspection_endpoint": issuer + INTROSPECTION_PATH,
        "revocation_endpoint": issuer + REVOCATION_PATH,
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": [ACCESS_TOKEN_ALGORITHM],
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "tls_client_certificate_bound_access_tokens": True,
    }
