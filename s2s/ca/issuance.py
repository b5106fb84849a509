"""Issuance: X509-SVIDs from agents' CSRs, JWT-SVIDs, the CA's own server SVID, admin mints.

Build, sign, check: the CA takes the SPIFFE ID, DNS names and TTL from the
registration entry, never from the CSR (only the CSR's public key and signature are used); the
active intermediate and its key stay loaded in memory (``X509Signer``); the leaf is built from the
core template, signed, and run through :func:`check_x509_svid` before anything is returned. Every
X.509 serial goes into the store's issued-serial index (revocation by ID or agent expands to
serials there).

Issuance and an ID or agent revocation may run at once. The revocation stores its ID record and
then lists the index; issuance indexes its serials and then re-reads the revocations
(:meth:`Issuer._withdraw_revoked`). Whichever order the store sees, one side sees the other: the
revocation lists the new serial, or issuance finds the record and withdraws the certificate before
it leaves the CA. So a certificate issued concurrently with a revocation of its ID is covered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Unpack

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from s2s.ca.authority import Authority
from s2s.ca.issued_index import IssuedIndex
from s2s.ca.registry import Registry
from s2s.ca.service import CaService, ServiceArgs
from s2s.ca.signers import (
    JwtSvid,
    parse_csr,
)
from s2s.core.b64 import b64url_encode
from s2s.core.clock import utc
from s2s.core.errors import (
    InvalidRequest,
    NotAuthorized,
    Revoked,
    S2SError,
)
from s2s.core.registration import RegistrationEntry
from s2s.core.reserved import ca_server_id
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.core.x509templates import serial_from_entropy
from s2s.log import F
from s2s.store.records import AgentRecord, IssuedKind, IssuedSerial

log = logging.getLogger(__name__)

__all__ = [
    "MAX_BATCH",
    "CsrRequest",
    "Issuer",
    "X509SvidResult",
]

MAX_BATCH = 500
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


class Issuer(CaService):
    """Signs SVIDs with the authority's active keys; the only place leaves are built."""

    def __init__(
        self, *, authority: Authority, registry: Registry, **kwargs: Unpack[ServiceArgs]
    ) -> None:
        # the registry must see the same revocations: it refuses revoked agents on every call
        super().__init__(**kwargs)
        self._authority = authority
        self._registry = registry
        self._issued = IssuedIndex(self._store, self._revocations)

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
        await self._registry.check_agent_not_revoked(agent)
        snapshot = await self._registry.entries_for_agent(agent.spiffe_id, exact_revision=False)
        entries = {e.id: e for e in snapshot.entries}
        now = utc(self._clock.now())
        results: list[X509SvidResult] = []
        issued: list[tuple[X509Svid, RegistrationEntry]] = []
        for i, request in enumerate(requests):
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                entry = entries.get(request.entry_id) or await self._entry_of(request, agent)
                svid = self._sign_for_entry(entry, request.csr_der, now)
            except S2SError as exc:
                results.append(X509SvidResult(request.entry_id, error=exc))
                continue
            results.append(X509SvidResult(request.entry_id, svid=svid))
            issued.append((svid, entry))
        current = await self._index(
            [(svid, IssuedKind.X509_SVID, agent.spiffe_id) for svid, _ in issued], now
        )
        svids = [svid for svid, _ in issued]
        withdrawn = await self._withdraw_revoked(svids, now, current, agent=agent)
        if withdrawn:
            results = [_withdrawn_result(r, withdrawn) for r in results]
            issued = [(svid, entry) for svid, entry in issued if svid.serial not in withdrawn]
        for svid, entry in issued:
            self._audit.x509_issued(
                serial=svid.serial,
                spiffe_id=svid.spiffe_id,
                not_after=svid.not_after,
                agent_id=agent.spiffe_id,
                entry_id=entry.id,
            )
        return tuple(results)

    async def _entry_of(self, request: CsrRequest, agent: AgentRecord) -> RegistrationEntry:
        """An entry id not in the agent's snapshot: read it (it may be brand new), or say why
        the agent may not use it."""
        if not isinstance(request.entry_id, str) or not request.entry_id:
            raise InvalidRequest("every CSR needs an entry_id")
        entry = await self._registry.get_entry(request.entry_id)  # NotFound if unknown
        if entry.parent_id != agent.spiffe_id:
            raise NotAuthorized(
                f"entry {entry.id} is parented by {entry.parent_id}, not by agent {agent.spiffe_id}"
            )
        return entry

    def _sign_for_entry(self, entry: RegistrationEntry, csr_der: bytes, now: datetime) -> X509Svid:
        self._check_id_not_revoked(entry.spiffe_id, now)
        ttl = min(entry.x509_svid_ttl, self._config.max_svid_ttl)  # a lowered cap applies at once
        public_key = parse_csr(csr_der)
        return self._issue(
            public_key, entry.spiffe_id, ttl, entry.dns_names, now=now, hint=entry.hint
        )

    async def mint_jwt_svid(
        self,
        agent: AgentRecord,
        entry_id: str,
        audience: Sequence[str],
        *,
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """A JWT-SVID for an entry parented by ``agent``; TTL defaults to the entry's, capped."""
        await self._registry.check_agent_not_revoked(agent)
        entry = await self._registry.get_entry(entry_id)
        if entry.parent_id != agent.spiffe_id:
            raise NotAuthorized(
                f"entry {entry.id} is parented by {entry.parent_id}, not by agent {agent.spiffe_id}"
            )
        now = utc(self._clock.now())
        self._check_id_not_revoked(entry.spiffe_id, now)
        limit = min(entry.jwt_svid_ttl, self._config.max_svid_ttl)  # a lowered cap applies at once
        ttl = self._capped_ttl(ttl, default=limit, entry_ttl=entry.jwt_svid_ttl)
        token = self.sign_jwt(
            entry.spiffe_id,
            audience,
            ttl,
            self._jwt_issue_time(entry.spiffe_id, now),
            agent=agent.spiffe_id,
        )
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

    async def _withdraw_revoked(
        self,
        svids: Sequence[X509Svid],
        now: datetime,
        current: RevocationSet,
        *,
        agent: AgentRecord | None = None,
    ) -> dict[int, Revoked]:
        """After indexing ``svids`` (issued at ``now``), with ``current`` the revocations read
        after that write: name those an ID revocation stored meanwhile covers (its instant is
        after ``now``), so they are withdrawn rather than returned. :class:`Revoked` when
        ``agent`` was revoked meanwhile."""
        if not svids:
            return {}
        if agent is not None:
            await self._registry.check_agent_not_revoked(agent)
        withdrawn = {
            svid.serial: Revoked(
                f"SPIFFE ID {svid.spiffe_id} was revoked while its SVID was being issued",
                spiffe_id=str(svid.spiffe_id),
            )
            for svid in svids
            if current.is_spiffe_id_revoked(svid.spiffe_id, now)
        }
        for serial, error in withdrawn.items():
            log.warning(
                "x509_svid.withdrawn",
                extra={F.SERIAL: format(serial, "x"), F.SPIFFE_ID: error.spiffe_id},
            )
        return withdrawn

    def _check_id_not_revoked(self, spiffe_id: SpiffeId, now: datetime) -> None:
        if self._revocations.current().is_spiffe_id_revoked(spiffe_id, now):
            raise Revoked(
                f"SPIFFE ID {spiffe_id} is revoked for credentials issued now",
                spiffe_id=str(spiffe_id),
            )

    def _jwt_issue_time(self, spiffe_id: SpiffeId, now: datetime) -> datetime:
        """``now``, unless the ID was revoked earlier in this very second: JWT ``iat`` is whole
        seconds (rounded down), so a token minted just after the revocation would read as issued
        before it and be refused everywhere. It is then dated the next whole second (less than a
        second ahead, well inside every validator's leeway)."""
        second = now.replace(microsecond=0)
        if second == now or not self._revocations.current().is_spiffe_id_revoked(spiffe_id, second):
            return now
        return second + timedelta(seconds=1)

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
        return self._issue(public_key, spiffe_id, ttl, dns_names, now=now)

    def _issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        dns_names: Sequence[str],
        *,
        now: datetime | None,
        hint: str = "",
    ) -> X509Svid:
        return self._authority.x509_signer.issue(
            public_key,
            spiffe_id,
            ttl=ttl,
            now=utc(now if now is not None else self._clock.now()),
            serial=serial_from_entropy(self._entropy(16)),
            dns_names=dns_names,
            backdate=self._config.backdate,
            hint=hint,
        )

    async def issue_agent_svid(
        self, agent_id: SpiffeId, public_key: CertificateIssuerPublicKeyTypes
    ) -> X509Svid:
        """The agent SVID (``agent_svid_ttl``) for a key taken from a checked CSR; indexed.

        Auditing is the caller's (attestation records attest vs renew)."""
        now = utc(self._clock.now())
        svid = self._issue(public_key, agent_id, self._config.agent_svid_ttl, (), now=now)
        current = await self._index([(svid, IssuedKind.AGENT_SVID, agent_id)], now)
        if withdrawn := await self._withdraw_revoked([svid], now, current):
            raise withdrawn[svid.serial]
        return svid

    async def issue_server_svid(
        self, *, dns_names: Sequence[str] = (), spiffe_id: SpiffeId | None = None
    ) -> X509Svid:
        """The CA's own SVID ``spiffe://<td>/s2s/ca/<replica>`` (or ``spiffe_id``, the bundle
        endpoint's) with a fresh key kept in memory (``server_svid_ttl``, capped by the
        intermediate); for the HTTPS listener."""
        if spiffe_id is None:
            spiffe_id = ca_server_id(self._config.trust_domain, self._config.replica_name)
        elif spiffe_id.trust_domain != self._config.trust_domain:
            raise InvalidRequest(f"{spiffe_id} is not in trust domain {self._config.trust_domain}")
        now = utc(self._clock.now())
        ttl = self._config.server_svid_ttl
        return await self._issue_with_new_key(
            spiffe_id, ttl, dns_names, now=now, kind=IssuedKind.CA_SVID, audit_kind="server"
        )

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
        return await self._issue_with_new_key(
            spiffe_id, ttl, dns_names, now=now, kind=IssuedKind.X509_SVID, audit_kind="admin"
        )

    async def _issue_with_new_key(
        self,
        spiffe_id: SpiffeId,
        ttl: timedelta,
        dns_names: Sequence[str],
        *,
        now: datetime,
        kind: IssuedKind,
        audit_kind: str,
    ) -> X509Svid:
        """An SVID for a P-256 key generated here (returned with it), indexed and audited."""
        key = ec.generate_private_key(ec.SECP256R1())
        svid = self._issue(key.public_key(), spiffe_id, ttl, tuple(dns_names), now=now)
        current = await self._index([(svid, kind, None)], now)
        if withdrawn := await self._withdraw_revoked([svid], now, current):
            raise withdrawn[svid.serial]
        self._audit.x509_issued(
            serial=svid.serial, spiffe_id=spiffe_id, not_after=svid.not_after, kind=audit_kind
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
        token = self.sign_jwt(spiffe_id, audience, ttl, self._jwt_issue_time(spiffe_id, now))
        self._audit.jwt_issued(
            spiffe_id=spiffe_id,
            audience=token.audience,
            not_after=token.expires_at,
            jti=token.jti,
            kind="admin",
        )
        return token

    # -- helpers -------------------------------------------------------------------------------

    def _capped_ttl(
        self, ttl: timedelta | None, *, default: timedelta, entry_ttl: timedelta | None = None
    ) -> timedelta:
        """``ttl`` if given and allowed (never silently lowered), else ``default``."""
        if ttl is None:
            return default
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise InvalidRequest("the TTL must be a positive duration")
        cap = self._config.max_svid_ttl
        if ttl > cap:
            raise InvalidRequest(f"a TTL of {_secs(ttl)} is above the cap of {_secs(cap)}")
        if entry_ttl is not None and ttl > entry_ttl:
            raise InvalidRequest(
                f"a TTL of {_secs(ttl)} is above the entry's TTL of {_secs(entry_ttl)}"
            )
        return ttl

    def sign_jwt(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: timedelta,
        now: datetime | None = None,
        *,
        agent: SpiffeId | None = None,
    ) -> JwtSvid:
        """Mint one JWT-SVID for an already-authorized ID (sync, in-process; no audit).

        ES256 with ``kid`` and ``typ: JWT``; the TTL is clipped so the token never outlives
        its signing key in the bundle. ``agent`` (the agent that asked) goes into the token's
        agent claim, so that revoking the agent revokes the token.
        """
        jti = b64url_encode(self._entropy(16))
        now = utc(now if now is not None else self._clock.now())
        return self._authority.jwt_signer.mint(
            spiffe_id, audience, ttl=ttl, now=now, jti=jti, agent=agent
        )

    async def _index(
        self, items: Sequence[tuple[X509Svid, IssuedKind, SpiffeId | None]], now: datetime
    ) -> RevocationSet:
        """Index ``items`` (grouped with concurrent issuances into one store write), then the
        revocations as read after that write."""
        issuer_id = self._authority.x509_signer.authority_id
        return await self._issued.add(
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


def _withdrawn_result(result: X509SvidResult, withdrawn: dict[int, Revoked]) -> X509SvidResult:
    if result.svid is None or result.svid.serial not in withdrawn:
        return result
    return X509SvidResult(result.entry_id, error=withdrawn[result.svid.serial])


def _secs(ttl: timedelta) -> str:
    return f"{int(ttl.total_seconds())}s"
