"""What an agent's entries long-poll carries besides its entries, and what the agent reports.

Agents report the bundle sequence they hold (``GET /v1/agent/entries?bundle_sequence=N``); it is
recorded on the agent's record, where root rotation reads it (``root_rotation.py``: the new
root is activated only once every live agent holds it). The answer tells agents the CA's bundle
sequence (they re-fetch the bundle when it moved) and the tainted authorities (they re-issue, at
once, every SVID under a tainted intermediate and drop JWT-SVIDs signed by a tainted key), as of
``authorities_revision``; an agent passing that revision back (``authorities=R``) gets an answer
as soon as authorities change, without waiting for an entry change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from s2s.ca.authority import Authority
from s2s.ca.lifecycle import AuthorityLifecycle, TaintedAuthorities
from s2s.ca.registry import Registry
from s2s.core.errors import Conflict, NotFound
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AgentRecord, Topic

__all__ = ["AgentSync", "AgentView"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentView:
    """The authority side of an entries answer."""

    bundle_sequence: int
    tainted: TaintedAuthorities

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle_sequence": self.bundle_sequence,
            "authorities_revision": self.tainted.revision,
            "tainted": self.tainted.to_json(),
        }


class AgentSync:
    """Records agents' bundle sequences and builds the authority view of entries answers."""

    def __init__(
        self,
        *,
        store: Store,
        authority: Authority,
        registry: Registry,
        lifecycle: AuthorityLifecycle,
    ) -> None:
        self._store = store
        self._registry = registry
        self._authority = authority
        self._lifecycle = lifecycle
        self._seen_revision = -1

    async def report_bundle_sequence(self, agent: AgentRecord, sequence: int) -> AgentRecord:
        """Record that ``agent`` holds bundle ``sequence`` (a lost race is logged, not fatal:
        the agent reports again on its next long-poll)."""
        try:
            return await self._registry.record_bundle_sequence(agent, sequence)
        except (Conflict, NotFound) as exc:
            log.warning(
                "agent.bundle_report_lost",
                extra={F.AGENT_ID: str(agent.spiffe_id), F.ERROR: str(exc)},
            )
            return agent

    async def view(self) -> AgentView:
        """The current bundle sequence and tainted authorities (the bundle is re-read from the
        store when authorities changed since the last look, so the sequence is current)."""
        tainted = await self._lifecycle.tainted()
        if tainted.revision != self._seen_revision:
            await self._authority.refresh_bundle()
            self._seen_revision = tainted.revision
        return AgentView(self._authority.bundle.sequence, tainted)

    async def wait(
        self, entries: Awaitable[object], authorities_after: int, timeout: float
    ) -> None:
        """Until ``entries`` completes or authorities move past ``authorities_after`` (only
        ``entries`` when the agent did not say which authorities revision it saw)."""
        if authorities_after < 0:
            await entries
            return
        tasks = {
            asyncio.ensure_future(entries),
            asyncio.ensure_future(
                self._store.wait_for_change(Topic.AUTHORITIES, authorities_after, timeout)
            ),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
