"""Issuance: X509-SVIDs from agents' CSRs, JWT-SVIDs, the CA's own server SVID, admin mints.

Build, sign, check (CONVENTIONS 7): the CA takes the SPIFFE ID, DNS names and TTL from the
registration entry, never from the CSR (only the CSR's public key and signature are used); it
builds the leaf from precomputed parts of the active intermediate, signs it, and runs
:func:`check_x509_svid` on the result before anything is returned. Every X.509 serial goes into
the store's issued-serial index (revocation by ID or agent expands to serials there).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from s2s.ca.audit import AuditLog
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.registry import AgentRecord, Registry
from s2s.core.clock import Clock, utc
from s2s.core.errors import (
    InvalidRequest,
    InvalidSvid,
    NotAuthorized,
    NotFound,
    Revoked,
    S2SError,
)
from s2s.core.jwtsvid import build_jwt_claims
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationLookup, StaticRevocations
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import (
    X509Svid,
    check_public_key,
    check_x509_svid,
    leaf_template,
    serial_from_entropy,
    sign_certificate,
)
from s2s.store.base import Store
from s2s.store.records import IssuedKind, IssuedSerial

log = logging.getLogger(__name__)

__all__ = [
    "MAX_BATCH",
    "MAX_CSR_BYTES",
    "parse_csr",
    "CsrRequest",
    "Issuer",
    "JwtSvid",
    "RevocationLookup",
    "X509SvidResult",
]

MAX_BATCH = 500
MAX_CSR_BYTES = 16 * 1024
MAX_AUDIENCES = 16
MAX_AUDIENCE_CHARS = 512
_YIELD_EVERY = 16  # let other requests run between CSRs of a large batch


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
        self._config = config
        self._authority = authority
        self._registry = registry
        self._store = store
        self._clock = clock
        self._audit = audit if audit is not None else AuditLog()
        self._revocations = revocations if revocations is not None else StaticRevocations()
        self._entropy = entropy

    # -- agent API -------------------------------------------------------------------------

    async def sign_x509_svids(
        self, agent: AgentRecord, requests: Sequence[CsrRequest]
    ) -> tuple[X509SvidResult, ...]:
        """Sign a batch of workload CSRs for ``agent`` (already authorized).

        Per item: :class:`NotFound` for an unknown entry, :class:`NotAuthorized` for an entry
        parented by another agent, :class:`InvalidRequest` for a bad CSR (signature, key type or
        size), :class:`Revoked` for a revoked SPIFFE ID. The whole call raises
        :class:`InvalidRequest` for an empty or oversized batch and :class:`Revoked` if the agent
        itself is revoked. Serials are indexed in one store transaction before anything is
        returned; if that fails the whole call fails (no unindexed certificate leaves the CA).
        """
        if not 0 < len(requests) <= MAX_BATCH:
            raise InvalidRequest(f"a batch holds 1 to {MAX_BATCH} CSRs, got {len(requests)}")
        await self._check_agent_not_revoked(agent)
        entries = {e.id: e for e in await self._store.list_entries(parent_id=agent.spiffe_id)}
        now = utc(self._clock.now())
        results: list[X509SvidResult] = []
        issued: list[tuple[X509Svid, RegistrationEntry]] = []
        for i, request in enumerate(requests):
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                entry = entries.get(request.entry_id) or await self._foreign_entry(request, agent)
                svid = self._sign_for_entry(entry, request.csr_der, now)
            except S2SError as exc:
                results.append(X509SvidResult(request.entry_id, error=exc))
                continue
            results.append(X509SvidResult(request.entry_id, svid=svid))
            issued.append((svid, entry))
        await self._index(
            [(svid, IssuedKind.X509_SVID, agent.spiffe_id) for svid, _ in issued], now
        )
        for svid, entry in issued:
            self._audit.x509_issued(
                serial=svid.serial,
                spiffe_id=svid.spiffe_id,
                not_after=svid.not_after,
                agent_id=agent.spiffe_id,
                entry_id=entry.id,
            )
        return tuple(results)

    async def _foreign_entry(self, request: CsrRequest, agent: AgentRecord) -> RegistrationEntry:
        """Explain why an entry id is not among the agent's entries (always raises)."""
        if not isinstance(request.entry_id, str) or not request.entry_id:
            raise InvalidRequest("every CSR needs an entry_id")
        entry = await self._store.get_entry(request.entry_id)  # NotFound if unknown
        raise NotAuthorized(
            f"entry {entry.id} is parented by {entry.parent_id}, not by agent {agent.spiffe_id}"
        )

    def _sign_for_entry(self, entry: RegistrationEntry, csr_der: bytes, now: datetime) -> X509Svid:
        self._check_id_not_revoked(entry.spiffe_id, now)
        ttl = min(entry.x509_svid_ttl, self._config.max_svid_ttl)  # a lowered cap applies at once
        svid = self.sign_csr(
            csr_der, spiffe_id=entry.spiffe_id, ttl=ttl, dns_names=entry.dns_names, now=now
        )
        return X509Svid(svid.spiffe_id, svid.cert_chain, hint=entry.hint)

    async def mint_jwt_svid(
        self,
        agent: AgentRecord,
        entry_id: str,
        audience: Sequence[str],
        *,
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """A JWT-SVID for an entry parented by ``agent``; TTL defaults to the entry's, capped."""
        await self._check_agent_not_revoked(agent)
        entry = await self._store.get_entry(entry_id)
        if entry.parent_id != agent.spiffe_id:
            raise NotAuthorized(
                f"entry {entry.id} is parented by {entry.parent_id}, not by agent {agent.spiffe_id}"
            )
        now = utc(self._clock.now())
        self._check_id_not_revoked(entry.spiffe_id, now)
        ttl = self._capped_ttl(ttl, default=min(entry.jwt_svid_ttl, self._config.max_svid_ttl))
        token = self.sign_jwt(entry.spiffe_id, audience, ttl, now)
        self._audit.jwt_issued(
            spiffe_id=token.spiffe_id,
            audience=token.audience,
            not_after=token.expires_at,
            jti=token.jti,
            agent_id=agent.spiffe_id,
            entry_id=entry.id,
        )
        return token

    # -- revocation checks ---------------------------------------------------------------------

    async def _check_agent_not_revoked(self, agent: AgentRecord) -> None:
        revoked = self._revocations.current()
        if revoked.is_serial_revoked(agent.serial):
            raise Revoked(f"the SVID of agent {agent.spiffe_id} is revoked", serial=agent.serial)
        # Cheap test first: nothing revoked after the agent attested means its SVIDs are fine.
        if not revoked.is_spiffe_id_revoked(agent.spiffe_id, agent.created_at):
            return
        try:
            issued_at = (await self._store.get_issued(agent.serial)).issued_at
        except NotFound:
            issued_at = agent.created_at
        if revoked.is_spiffe_id_revoked(agent.spiffe_id, issued_at):
            raise Revoked(f"agent {agent.spiffe_id} is revoked", spiffe_id=str(agent.spiffe_id))

    def _check_id_not_revoked(self, spiffe_id: SpiffeId, now: datetime) -> None:
        if self._revocations.current().is_spiffe_id_revoked(spiffe_id, now):
            raise Revoked(
                f"SPIFFE ID {spiffe_id} is revoked for credentials issued now",
                spiffe_id=str(spiffe_id),
            )

    # -- the core: build, sign, check ----------------------------------------------------------

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
        public_key = parse_csr(csr_der)
        return self._issue(public_key, spiffe_id, ttl, dns_names, now)

    def _issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        dns_names: Sequence[str],
        now: datetime | None,
    ) -> X509Svid:
        signer = self._authority.x509_signer
        builder = leaf_template(
            spiffe_id=spiffe_id,
            public_key=public_key,
            issuer=signer.certificate,
            now=utc(now if now is not None else self._clock.now()),
            ttl=ttl,
            serial=serial_from_entropy(self._entropy(16)),
            dns_names=dns_names,
            backdate=self._config.backdate,
        )
        cert = sign_certificate(builder, signer.private_key)
        chain = (cert, *signer.chain)
        try:
            checked = check_x509_svid(chain)
        except InvalidSvid:
            log.exception("issuance.profile_violation", extra={"spiffe_id": str(spiffe_id)})
            raise
        return X509Svid(checked, chain)

    async def issue_agent_svid(
        self, agent_id: SpiffeId, public_key: CertificateIssuerPublicKeyTypes
    ) -> X509Svid:
        """The agent SVID (``agent_svid_ttl``) for a key taken from a checked CSR; indexed.

        Auditing is the caller's (attestation records attest vs renew)."""
        now = utc(self._clock.now())
        svid = self._issue(public_key, agent_id, self._config.agent_svid_ttl, (), now)
        await self._index([(svid, IssuedKind.AGENT_SVID, agent_id)], now)
        return svid

    async def issue_server_svid(self, *, dns_names: Sequence[str] = ()) -> X509Svid:
        """The CA's own SVID ``spiffe://<td>/s2s/ca/<replica>`` with a fresh key kept in memory
        (``server_svid_ttl``, capped by the intermediate); for the HTTPS listener."""
        spiffe_id = self._config.trust_domain.child("s2s", "ca", self._config.replica_name)
        key = ec.generate_private_key(ec.SECP256R1())
        now = utc(self._clock.now())
        svid = self._issue(
            key.public_key(), spiffe_id, self._config.server_svid_ttl, dns_names, now
        )
        await self._index([(svid, IssuedKind.CA_SVID, None)], now)
        self._audit.x509_issued(
            serial=svid.serial, spiffe_id=spiffe_id, not_after=svid.not_after, kind="server"
        )
        return X509Svid(spiffe_id, svid.cert_chain, private_key=key)

    # -- admin mints ---------------------------------------------------------------------------

    async def mint_x509_svid(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> X509Svid:
        """``s2s-ca x509 mint``: a workload SVID with a key generated here (returned with it)."""
        self._registry.check_workload_id(spiffe_id)
        ttl = self._capped_ttl(ttl, default=self._config.x509_svid_ttl)
        now = utc(self._clock.now())
        self._check_id_not_revoked(spiffe_id, now)
        key = ec.generate_private_key(ec.SECP256R1())
        svid = self._issue(key.public_key(), spiffe_id, ttl, tuple(dns_names), now)
        await self._index([(svid, IssuedKind.X509_SVID, None)], now)
        self._audit.x509_issued(
            serial=svid.serial, spiffe_id=spiffe_id, not_after=svid.not_after, kind="admin"
        )
        return X509Svid(spiffe_id, svid.cert_chain, private_key=key)

    async def mint_jwt_svid_for(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        *,
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """``s2s-ca jwt mint``: a JWT-SVID for a workload ID in the trust domain."""
        self._registry.check_workload_id(spiffe_id)
        ttl = self._capped_ttl(ttl, default=self._config.jwt_svid_ttl)
        now = utc(self._clock.now())
        self._check_id_not_revoked(spiffe_id, now)
        token = self.sign_jwt(spiffe_id, audience, ttl, now)
        self._audit.jwt_issued(
            spiffe_id=spiffe_id,
            audience=token.audience,
            not_after=token.expires_at,
            jti=token.jti,
            kind="admin",
        )
        return token

    # -- helpers -------------------------------------------------------------------------------

    def _capped_ttl(self, ttl: timedelta | None, *, default: timedelta) -> timedelta:
        if ttl is None:
            return default
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise InvalidRequest("the TTL must be a positive duration")
        cap = self._config.max_svid_ttl
        if ttl > cap:
            raise InvalidRequest(
                f"a TTL of {int(ttl.total_seconds())}s is above the cap of "
                f"{int(cap.total_seconds())}s"
            )
        return ttl

    def sign_jwt(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: timedelta,
        now: datetime | None = None,
    ) -> JwtSvid:
        """Mint one JWT-SVID for an already-authorized ID (sync, in-process; no audit).

        ES256 with ``kid`` and ``typ: JWT``; the TTL is clipped so the token never outlives
        its signing key in the bundle.
        """
        now = utc(now if now is not None else self._clock.now())
        audiences = _audiences(audience)
        signer = self._authority.jwt_signer
        ttl = min(ttl, signer.not_after - now)  # a token never outlives its key in the bundle
        if ttl <= timedelta(0):
            raise InvalidRequest("the JWT signing key has expired; the CA must rotate it first")
        jti = base64.urlsafe_b64encode(self._entropy(16)).decode("ascii").rstrip("=")
        claims = build_jwt_claims(
            spiffe_id=spiffe_id, audience=audiences, now=now, ttl=ttl, jti=jti
        )
        token = jwt.encode(
            claims,
            signer.private_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": "JWT"},
        )
        return JwtSvid(
            token=token,
            spiffe_id=spiffe_id,
            audience=audiences,
            issued_at=datetime.fromtimestamp(claims["iat"], tz=now.tzinfo),
            expires_at=datetime.fromtimestamp(claims["exp"], tz=now.tzinfo),
            jti=jti,
        )

    async def _index(
        self, items: Sequence[tuple[X509Svid, IssuedKind, SpiffeId | None]], now: datetime
    ) -> None:
        if not items:
            return
        issuer_id = self._authority.x509_signer.authority_id
        await self._store.add_issued(
            [
                IssuedSerial(
                    serial=svid.serial,
                    kind=kind,
                    spiffe_id=svid.spiffe_id,
                    issuer_id=issuer_id,
                    issued_at=now,
                    not_after=svid.not_after,
                    agent_id=agent_id,
                )
                for svid, kind, agent_id in items
            ]
        )


def parse_csr(csr_der: bytes) -> CertificateIssuerPublicKeyTypes:
    """The public key of a DER PKCS#10 CSR whose self-signature verifies and whose key is
    supported (``check_public_key``). Everything else in the CSR is ignored: the CA takes the
    SPIFFE ID, DNS names and TTL from the registration entry. :class:`InvalidRequest` otherwise.
    """
    if not isinstance(csr_der, bytes | bytearray) or not csr_der:
        raise InvalidRequest("the CSR is missing (expected DER bytes)")
    if len(csr_der) > MAX_CSR_BYTES:
        raise InvalidRequest(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(bytes(csr_der))
        public_key = csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidRequest(f"the CSR is not a valid DER PKCS#10 request: {exc}") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd keys
        raise InvalidRequest(f"the CSR key cannot be used: {exc}") from exc
    check_public_key(public_key)
    try:
        valid = csr.is_signature_valid
    except Exception as exc:
        raise InvalidRequest(f"the CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise InvalidRequest("the CSR signature does not verify (it must be signed by its own key)")
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public_key


def _audiences(audience: Sequence[str]) -> tuple[str, ...]:
    if isinstance(audience, str):
        raise InvalidRequest("audience must be a list of strings, not one string")
    auds = tuple(dict.fromkeys(audience))
    if not 0 < len(auds) <= MAX_AUDIENCES:
        raise InvalidRequest(f"a JWT-SVID needs 1 to {MAX_AUDIENCES} audiences")
    for aud in auds:
        if not isinstance(aud, str) or not 0 < len(aud) <= MAX_AUDIENCE_CHARS:
            raise InvalidRequest(
                f"each audience is a non-empty string of at most {MAX_AUDIENCE_CHARS} characters"
            )
    return auds
