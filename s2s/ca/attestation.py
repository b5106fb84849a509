"""Agent attestation: join token + CSR -> agent SVID + bundle, and renewal of an agent SVID.

The agent SVID (``spiffe://<td>/s2s/agent/join_token/<id>``, 1 h) is issued from the agent's CSR;
its key never leaves the node. The CSR is checked before the token is burnt, so a typo in a CSR
does not cost the operator a token. Using a token marks it used by the SHA-256 of the CSR's
SubjectPublicKeyInfo; until the token expires, a CSR for that same key (only whoever made the
first attempt holds it) may use it again and gets the same agent ID and a new SVID, so an
attestation whose answer was lost (a store error after the token was used, a replica killed, a
dropped connection) does not cost the node its token. Any other key is refused. Renewal issues
a new SVID and stages its serial as the agent's ``next_serial``; the first call made with it
promotes it (SPIRE does the same), so a renewal whose response is lost does not lock the agent
out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from s2s.ca.audit import AuditEvent, AuditLog
from s2s.ca.authority import Authority
from s2s.ca.issuance import Issuer
from s2s.ca.registry import JOIN_TOKEN_ATTESTATION, Registry
from s2s.ca.signers import parse_csr
from s2s.core.bundle import Bundle
from s2s.core.errors import NotAuthorized, S2SError
from s2s.core.x509svid import X509Svid
from s2s.store.records import AgentRecord

__all__ = ["AgentAttestor", "AgentSvidResult", "FaultHook"]

FaultHook = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AgentSvidResult:
    """What the agent gets back: its record, its SVID (leaf + intermediate, no key), the bundle."""

    agent: AgentRecord
    svid: X509Svid
    bundle: Bundle


class AgentAttestor:
    """Attests agents with join tokens and renews their SVIDs."""

    def __init__(
        self,
        *,
        authority: Authority,
        registry: Registry,
        issuer: Issuer,
        audit: AuditLog | None = None,
    ) -> None:
        self._authority = authority
        # A test seam, never set by the composition root: awaited with "burnt" after the token
        # is used and "registered" after the agent is recorded, so a test can fail one of them
        # as a store error or a lost answer would.
        self.fault_hook: FaultHook | None = None
        self._registry = registry
        self._issuer = issuer
        self._audit = audit if audit is not None else AuditLog()

    async def attest_join_token(self, token: str, csr_der: bytes) -> AgentSvidResult:
        """Use ``token`` for the CSR's key, sign the CSR as the agent SVID and record the agent.

        A retry with the same token and a CSR for the same key (the first answer was lost) gets
        the same agent ID and a new SVID, unless the agent was banned or its ID revoked
        meanwhile. :class:`AttestationFailed` for an unknown/expired token or one used by
        another key; :class:`InvalidRequest` for a bad CSR (checked before the token is
        touched); :class:`NotAuthorized` if banned; :class:`Revoked` if revoked.
        """
        public_key = parse_csr(csr_der)
        key_hash = hashlib.sha256(
            public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).digest()
        use = await self._registry.consume_join_token(token, key_hash=key_hash)
        agent_id = use.agent_id
        if use.retry:
            try:
                await self._registry.check_reattest_allowed(agent_id)
            except S2SError as exc:
                self._audit.agent_refused(agent_id=agent_id, reason=str(exc))
                raise
        await self._fault("burnt")
        svid = await self._issuer.issue_agent_svid(agent_id, public_key)
        agent = await self._registry.register_agent(
            agent_id,
            serial=svid.serial,
            not_after=svid.not_after,
            attestation_type=JOIN_TOKEN_ATTESTATION,
            again=use.retry,
        )
        await self._fault("registered")
        event = AuditEvent.AGENT_REATTESTED if use.retry else AuditEvent.AGENT_ATTESTED
        self._audit.agent_event(event, agent_id=agent_id, serial=svid.serial)
        return AgentSvidResult(agent=agent, svid=svid, bundle=self._authority.bundle)

    async def _fault(self, stage: str) -> None:
        if self.fault_hook is not None:
            await self.fault_hook(stage)

    async def renew_agent(self, agent: AgentRecord, csr_der: bytes) -> AgentSvidResult:
        """Issue a new agent SVID to an agent authorized with its current SVID.

        ``agent`` is the record :meth:`Registry.authorize_agent` returned for this call.
        :class:`NotAuthorized` if it was banned meanwhile; :class:`Revoked` if its SVID or ID is
        revoked; :class:`Conflict` if the record changed concurrently (the agent retries).
        """
        if agent.banned:
            raise NotAuthorized(f"agent {agent.spiffe_id} is banned")
        await self._registry.check_agent_not_revoked(agent)  # never renew what is revoked
        public_key = parse_csr(csr_der)
        svid = await self._issuer.issue_agent_svid(agent.spiffe_id, public_key)
        staged = await self._registry.stage_agent_serial(
            agent, next_serial=svid.serial, not_after=svid.not_after
        )
        self._audit.agent_event(
            AuditEvent.AGENT_RENEWED, agent_id=agent.spiffe_id, serial=svid.serial
        )
        return AgentSvidResult(agent=staged, svid=svid, bundle=self._authority.bundle)
