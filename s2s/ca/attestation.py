"""Agent attestation: join token + CSR -> agent SVID + bundle, and renewal of an agent SVID.

The agent SVID (``spiffe://<td>/s2s/agent/join_token/<id>``, 1 h) is issued from the agent's CSR;
its key never leaves the node. Renewal issues a new SVID and stages its serial as the agent's
``next_serial``; the first call made with it promotes it (SPIRE does the same), so a renewal whose
response is lost does not lock the agent out.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.ca.audit import AuditLog
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import Issuer
from s2s.ca.registry import AgentRecord, Registry
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock
from s2s.core.x509svid import X509Svid

__all__ = ["AgentAttestor", "AgentSvidResult"]


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
        config: CaConfig,
        authority: Authority,
        registry: Registry,
        issuer: Issuer,
        clock: Clock,
        audit: AuditLog | None = None,
    ) -> None:
        raise NotImplementedError

    async def attest_join_token(self, token: str, csr_der: bytes) -> AgentSvidResult:
        """Consume ``token``, sign the CSR as the agent SVID and record the agent.

        :class:`AttestationFailed` for an unknown/used/expired token; :class:`InvalidRequest` for
        a bad CSR (checked before the token is burnt); :class:`NotAuthorized` if banned.
        """
        raise NotImplementedError

    async def renew_agent(self, agent: AgentRecord, csr_der: bytes) -> AgentSvidResult:
        """Issue a new agent SVID to an agent already authorized with its current SVID."""
        raise NotImplementedError
