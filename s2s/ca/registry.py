"""The registry: registration entries, single-use join tokens and attested agents.

Rules (issue 3, item 3): an entry's SPIFFE ID is in the trust domain, has a path, and is outside
the reserved ``/s2s/`` path; its parent is in the trust domain; TTLs are positive and at most the
configured cap. Join tokens are random, only their SHA-256 is stored, and consuming one is a
compare-and-swap. An agent attested with a join token gets
``spiffe://<td>/s2s/agent/join_token/<sha256(token)[:32]>``, so the operator learns the agent ID
(the parent ID of its entries) when the token is generated. Every agent call is authorized against
the agent's record (:meth:`Registry.authorize_agent`). ``AgentRecord`` is the store's record
(``s2s.store.records``), re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from s2s.ca.audit import AuditLog
from s2s.ca.config import CaConfig
from s2s.core.clock import Clock
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import AgentRecord

if TYPE_CHECKING:
    from s2s.store.base import Store

__all__ = [
    "AGENT_PATH_PREFIX",
    "RESERVED_PATH",
    "AgentRecord",
    "EntrySnapshot",
    "JoinToken",
    "Registry",
]

RESERVED_PATH = "/s2s"
AGENT_PATH_PREFIX = "/s2s/agent/join_token/"


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A new join token. ``token`` is the secret: shown once, never stored or logged."""

    token: str
    agent_id: SpiffeId
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class EntrySnapshot:
    """Entries as of a store revision (the agent long-polls for a revision above it)."""

    entries: tuple[RegistrationEntry, ...]
    revision: int


class Registry:
    """Entries, join tokens and agents, validated and persisted in the store."""

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        clock: Clock,
        audit: AuditLog | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        raise NotImplementedError

    # -- entries ---------------------------------------------------------------------------

    async def create_entry(
        self,
        *,
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        selectors: Iterable[Selector],
        x509_svid_ttl: timedelta | None = None,
        jwt_svid_ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        hint: str = "",
    ) -> RegistrationEntry:
        """Validate and store a new entry (TTLs default to the config). :class:`InvalidRequest`."""
        raise NotImplementedError

    async def update_entry(
        self,
        entry_id: str,
        *,
        expected_revision: int | None = None,
        spiffe_id: SpiffeId | None = None,
        parent_id: SpiffeId | None = None,
        selectors: Iterable[Selector] | None = None,
        x509_svid_ttl: timedelta | None = None,
        jwt_svid_ttl: timedelta | None = None,
        dns_names: Sequence[str] | None = None,
        hint: str | None = None,
    ) -> RegistrationEntry:
        """Change the given fields (None = keep). :class:`NotFound`, :class:`Conflict` on a
        stale ``expected_revision``, :class:`InvalidRequest` on bad values."""
        raise NotImplementedError

    async def delete_entry(self, entry_id: str) -> None:
        """Delete an entry; :class:`NotFound` if there is none."""
        raise NotImplementedError

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        """One entry; :class:`NotFound` if unknown."""
        raise NotImplementedError

    async def list_entries(self) -> EntrySnapshot:
        """All entries with the entries revision."""
        raise NotImplementedError

    async def entries_for_agent(self, agent_id: SpiffeId) -> EntrySnapshot:
        """Entries whose parent is ``agent_id``, with the entries revision."""
        raise NotImplementedError

    async def wait_for_entries(self, after_revision: int, timeout: float) -> int:
        """Wait until the entries revision exceeds ``after_revision`` or ``timeout`` seconds pass;
        return the current revision (long-poll support)."""
        raise NotImplementedError

    # -- join tokens -----------------------------------------------------------------------

    async def generate_join_token(self, *, ttl: timedelta | None = None) -> JoinToken:
        """A new single-use join token (default TTL from the config, 10 min)."""
        raise NotImplementedError

    async def consume_join_token(self, token: str) -> SpiffeId:
        """Burn ``token`` (compare-and-swap) and return the agent ID it grants.

        :class:`AttestationFailed` if it is unknown, already used or expired.
        """
        raise NotImplementedError

    # -- agents ----------------------------------------------------------------------------

    async def register_agent(
        self,
        agent_id: SpiffeId,
        *,
        serial: int,
        not_after: datetime,
        attestation_type: str = "join_token",
    ) -> AgentRecord:
        """Create (or re-attest) an agent's record; :class:`NotAuthorized` if it is banned."""
        raise NotImplementedError

    async def stage_agent_serial(
        self, agent: AgentRecord, *, next_serial: int, not_after: datetime
    ) -> AgentRecord:
        """Record a renewed agent SVID's serial as ``next_serial`` (compare-and-swap on the
        record the caller was authorized with; :class:`Conflict` if it changed)."""
        raise NotImplementedError

    async def authorize_agent(self, spiffe_id: SpiffeId, serial: int) -> AgentRecord:
        """The agent's record if it may call the CA with the SVID of this serial.

        ``serial == next_serial`` promotes it to ``serial``. :class:`NotAuthorized` for an unknown
        (evicted) agent, a banned one, or any other serial.
        """
        raise NotImplementedError

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        """One agent; :class:`NotFound` if unknown."""
        raise NotImplementedError

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        raise NotImplementedError

    async def evict_agent(self, spiffe_id: SpiffeId) -> None:
        """Forget an agent: its SVID stops working at once; it may re-attest with a new token."""
        raise NotImplementedError

    async def ban_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        """Ban an agent: every call is refused and it cannot re-attest under this ID."""
        raise NotImplementedError
