"""Issuance: X509-SVIDs from agents' CSRs, JWT-SVIDs, the CA's own server SVID, admin mints.

Build, sign, check (CONVENTIONS 7): the CA takes the SPIFFE ID, DNS names and TTL from the
registration entry, never from the CSR (only the CSR's public key and signature are used); it
builds the leaf from precomputed parts of the active intermediate, signs it, and runs
:func:`check_x509_svid` on the result before anything is returned. Every X.509 serial goes into
the store's issued-serial index (revocation by ID or agent expands to serials there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from s2s.ca.audit import AuditLog
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.registry import AgentRecord, Registry
from s2s.core.clock import Clock
from s2s.core.errors import S2SError
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid

if TYPE_CHECKING:
    from s2s.store.base import Store

__all__ = [
    "MAX_BATCH",
    "MAX_CSR_BYTES",
    "CsrRequest",
    "Issuer",
    "JwtSvid",
    "RevocationLookup",
    "X509SvidResult",
]

MAX_BATCH = 500
MAX_CSR_BYTES = 16 * 1024
MAX_AUDIENCES = 16


class RevocationLookup(Protocol):
    """Where the issuer learns what is revoked (the revocation service of the CA)."""

    def current(self) -> RevocationSet: ...


@dataclass(frozen=True, slots=True)
class CsrRequest:
    """One item of a batch: the entry to issue for and the agent-generated CSR (DER)."""

    entry_id: str
    csr_der: bytes


@dataclass(frozen=True, slots=True)
class X509SvidResult:
    """Per-item outcome of a batch: exactly one of ``svid`` (leaf + intermediate, no private key)
    and ``error`` is set, so one bad CSR does not fail its neighbours."""

    entry_id: str
    svid: X509Svid | None = None
    error: S2SError | None = None


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A minted JWT-SVID. ``token`` is a secret: never log it."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    jti: str

    def __repr__(self) -> str:
        return f"JwtSvid(spiffe_id={self.spiffe_id!s}, audience={self.audience}, jti={self.jti})"


class Issuer:
    """Signs SVIDs with the authority's active keys; the only place leaves are built."""

    def __init__(
        self,
        *,
        config: CaConfig,
        authority: Authority,
        registry: Registry,
        store: Store,
        clock: Clock,
        audit: AuditLog | None = None,
        revocations: RevocationLookup | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        raise NotImplementedError

    # -- agent API -------------------------------------------------------------------------

    async def sign_x509_svids(
        self, agent: AgentRecord, requests: Sequence[CsrRequest]
    ) -> tuple[X509SvidResult, ...]:
        """Sign a batch of workload CSRs for ``agent`` (already authorized).

        Per item: :class:`NotFound` for an unknown entry, :class:`NotAuthorized` for an entry
        parented by another agent, :class:`InvalidRequest` for a bad CSR (signature, key type or
        size), :class:`Revoked` for a revoked SPIFFE ID. The whole call raises
        :class:`InvalidRequest` for an empty or oversized batch and :class:`Revoked` if the agent
        itself is revoked.
        """
        raise NotImplementedError

    async def mint_jwt_svid(
        self,
        agent: AgentRecord,
        entry_id: str,
        audience: Sequence[str],
        *,
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """A JWT-SVID for an entry parented by ``agent``; TTL defaults to the entry's, capped."""
        raise NotImplementedError

    # -- CA-internal and admin ---------------------------------------------------------------

    def sign_csr(
        self,
        csr_der: bytes,
        *,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        dns_names: Sequence[str] = (),
        now: datetime | None = None,
    ) -> X509Svid:
        """Build, sign and check one leaf for an already-authorized ID (sync, in-process).

        Records nothing and logs nothing: callers (the async methods) index and audit.
        """
        raise NotImplementedError

    def sign_agent_csr(self, csr: x509.CertificateSigningRequest, agent_id: SpiffeId) -> X509Svid:
        """The agent SVID (agent_svid_ttl) for a parsed, signature-checked CSR."""
        raise NotImplementedError

    async def issue_server_svid(self, *, dns_names: Sequence[str] = ()) -> X509Svid:
        """The CA's own SVID ``spiffe://<td>/s2s/ca/<replica>`` with a fresh key kept in memory
        (``server_svid_ttl``, capped by the intermediate); for the HTTPS listener."""
        raise NotImplementedError

    async def mint_x509_svid(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> X509Svid:
        """``s2s-ca x509 mint``: a workload SVID with a key generated here (returned with it)."""
        raise NotImplementedError

    async def mint_jwt_svid_for(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        *,
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """``s2s-ca jwt mint``: a JWT-SVID for a workload ID in the trust domain."""
        raise NotImplementedError
