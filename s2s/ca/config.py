"""The CA's configuration: one frozen value, built once at the edge (CLI flags, TOML, env).

Default lifetimes: X509-SVID and JWT-SVID 5 min, agent SVID 1 h, intermediate 24 h, root 1 year
(docs/architecture.md, "Lifetimes"). The SVID cap (``max_svid_ttl``) bounds every
X509-SVID and JWT-SVID the CA issues, whatever an entry or an admin asks for.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from s2s.core.errors import InvalidConfig
from s2s.core.oauth_metadata import check_issuer
from s2s.core.spiffe_id import TrustDomain

__all__ = [
    "DEFAULT_ACCESS_TOKEN_TTL",
    "DEFAULT_AGENT_SVID_TTL",
    "DEFAULT_BACKDATE",
    "DEFAULT_INTERMEDIATE_TTL",
    "DEFAULT_JOIN_TOKEN_TTL",
    "DEFAULT_JWT_KEY_TTL",
    "DEFAULT_JWT_SVID_TTL",
    "DEFAULT_MAX_SVID_TTL",
    "DEFAULT_ROOT_TTL",
    "DEFAULT_SERVER_SVID_TTL",
    "DEFAULT_X509_SVID_TTL",
    "KEK_FILENAME",
    "STORE_FILENAME",
    "CaConfig",
    "ServerLimits",
]

DEFAULT_X509_SVID_TTL = timedelta(minutes=5)
DEFAULT_JWT_SVID_TTL = timedelta(minutes=5)
DEFAULT_MAX_SVID_TTL = timedelta(minutes=5)
DEFAULT_AGENT_SVID_TTL = timedelta(hours=1)
DEFAULT_SERVER_SVID_TTL = timedelta(hours=1)
DEFAULT_INTERMEDIATE_TTL = timedelta(hours=24)
DEFAULT_JWT_KEY_TTL = timedelta(hours=24)
DEFAULT_ROOT_TTL = timedelta(days=365)
DEFAULT_BACKDATE = timedelta(seconds=30)
DEFAULT_JOIN_TOKEN_TTL = timedelta(minutes=10)
DEFAULT_ACCESS_TOKEN_TTL = timedelta(minutes=5)
MAX_ACCESS_TOKEN_TTL = timedelta(minutes=5)

KEK_FILENAME = "kek.bin"
STORE_FILENAME = "s2s.db"

# A replica name becomes a SPIFFE ID path segment (spiffe://<td>/s2s/ca/<name>).
_REPLICA_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class CaConfig:
    """Everything the CA services need to know, fixed for the life of the process.

    >>> cfg = CaConfig(trust_domain=TrustDomain.parse("example.org"), data_dir=Path("/d"))
    >>> cfg.x509_svid_ttl, cfg.kek_path.name
    (datetime.timedelta(seconds=300), 'kek.bin')
    """

    trust_domain: TrustDomain
    data_dir: Path
    replica_name: str = "ca-0"
    x509_svid_ttl: timedelta = DEFAULT_X509_SVID_TTL
    jwt_svid_ttl: timedelta = DEFAULT_JWT_SVID_TTL
    max_svid_ttl: timedelta = DEFAULT_MAX_SVID_TTL
    agent_svid_ttl: timedelta = DEFAULT_AGENT_SVID_TTL
    server_svid_ttl: timedelta = DEFAULT_SERVER_SVID_TTL
    intermediate_ttl: timedelta = DEFAULT_INTERMEDIATE_TTL
    jwt_key_ttl: timedelta = DEFAULT_JWT_KEY_TTL
    root_ttl: timedelta = DEFAULT_ROOT_TTL
    backdate: timedelta = DEFAULT_BACKDATE
    join_token_ttl: timedelta = DEFAULT_JOIN_TOKEN_TTL
    kek_file: Path | None = field(default=None)
    store_file: Path | None = field(default=None)
    jwt_issuer: str | None = None  # ``iss`` of JWT-SVIDs and of the OIDC discovery document
    oauth_issuer: str | None = None  # the token service's issuer (default: jwt_issuer)
    access_token_ttl: timedelta = DEFAULT_ACCESS_TOKEN_TTL

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidConfig("trust_domain must be a TrustDomain (parse it at the edge)")
        if _REPLICA_NAME.fullmatch(self.replica_name) is None:
            raise InvalidConfig(
                f"replica name {self.replica_name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        for name in (
            "x509_svid_ttl",
            "jwt_svid_ttl",
            "max_svid_ttl",
            "agent_svid_ttl",
            "server_svid_ttl",
            "intermediate_ttl",
            "jwt_key_ttl",
            "root_ttl",
            "join_token_ttl",
            "access_token_ttl",
        ):
            if getattr(self, name) <= timedelta(0):
                raise InvalidConfig(f"{name} must be positive")
        if self.backdate < timedelta(0) or self.backdate > timedelta(minutes=10):
            raise InvalidConfig("backdate must be between 0 and 10 minutes")
        for name in ("x509_svid_ttl", "jwt_svid_ttl"):
            if getattr(self, name) > self.max_svid_ttl:
                raise InvalidConfig(f"{name} is above max_svid_ttl; raise the cap explicitly")
        if self.intermediate_ttl >= self.root_ttl:
            raise InvalidConfig("intermediate_ttl must be shorter than root_ttl")
        if self.agent_svid_ttl > self.intermediate_ttl / 2:
            raise InvalidConfig("agent_svid_ttl must be at most half of intermediate_ttl")
        if self.access_token_ttl > MAX_ACCESS_TOKEN_TTL:
            raise InvalidConfig("access_token_ttl must be at most 5 minutes (RFC 9068 tokens)")
        for name in ("jwt_issuer", "oauth_issuer"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_issuer(value, setting=name))

    @property
    def access_token_lifetime(self) -> timedelta:
        """``access_token_ttl`` within ``max_svid_ttl``: a revoked token's jti record lives as
        long as the longest JWT-SVID can, so no access token may live longer."""
        return min(self.access_token_ttl, self.max_svid_ttl)

    @property
    def token_service_issuer(self) -> str | None:
        """The authorization server's issuer: ``oauth_issuer``, else ``jwt_issuer``."""
        return self.oauth_issuer or self.jwt_issuer

    @property
    def kek_path(self) -> Path:
        """The key-encryption key file (``<data_dir>/kek.bin`` unless set)."""
        return self.kek_file if self.kek_file is not None else self.data_dir / KEK_FILENAME

    @property
    def store_path(self) -> Path:
        """The SQLite store file (``<data_dir>/s2s.db`` unless set)."""
        return self.store_file if self.store_file is not None else self.data_dir / STORE_FILENAME


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How much the HTTPS listener lets any client hold (seconds and counts).

    Without them a slow or idle client holds a connection (a descriptor) for as long as it likes;
    enough of them stop every agent's renewal, and with 5-minute SVIDs the fleet's identities
    expire soon after. Connections count from accept, before the TLS handshake.

    >>> ServerLimits().max_connections_per_ip <= ServerLimits().max_connections
    True
    """

    tls_handshake_timeout: float = 10.0  # accept -> handshake done
    header_timeout: float = 10.0  # connection ready or first byte of a request -> its headers
    body_timeout: float = 10.0  # headers -> the whole JSON body read
    # idle between requests: longer than agents keep an idle connection (170 s, past the 165 s
    # between two renewals of a 5-minute SVID), so renewals reuse it instead of a new handshake
    keepalive_timeout: float = 180.0
    max_connections: int = 4096  # open at once, all clients
    max_connections_per_ip: int = 256  # open at once from one address
    max_long_polls: int = 2048  # requests held waiting for a change; more are answered at once

    def __post_init__(self) -> None:
        for name in (
            "tls_handshake_timeout",
            "header_timeout",
            "body_timeout",
            "keepalive_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidConfig(f"{name} must be a positive number of seconds")
        for name in ("max_connections", "max_connections_per_ip", "max_long_polls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfig(f"{name} must be a positive whole number")
        if self.max_connections_per_ip > self.max_connections:
            raise InvalidConfig("max_connections_per_ip must be at most max_connections")
        if self.max_long_polls > self.max_connections:
            raise InvalidConfig("max_long_polls must be at most max_connections")

    def within(self, descriptors: int, *, reserve: int = 128) -> ServerLimits:
        """These limits with ``max_connections`` (and the counts under it) at most
        ``descriptors - reserve``: the reserve keeps descriptors for the store, the admin socket
        and logs.

        >>> ServerLimits().within(1024).max_connections
        896
        >>> ServerLimits().within(100_000) == ServerLimits()
        True
        """
        room = max(descriptors - reserve, 1)
        if self.max_connections <= room:
            return self
        return dataclasses.replace(
            self,
            max_connections=room,
            max_connections_per_ip=min(self.max_connections_per_ip, room),
            max_long_polls=min(self.max_long_polls, room),
        )
