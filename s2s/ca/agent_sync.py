"""What an agent's entries long-poll carries besides its entries, and what the agent reports.

Agents report the bundle sequence they hold (``GET /v1/agent/entries?bundle_sequence=N``); it is
recorded on the agent's record, where root rotation reads it (``root_rotation.py``: the new
root is activated only once every live agent holds it). The answer tells agents the CA's bundle
sequence (they re-fetch the bundle when it moved) and the tainted authorities (they re-issue, at
once, every SVID under a tainted intermediate and drop JWT-SVIDs signed by a tainted key), as of
``authorities_revision``; an agent passing that revision back (``authorities=R``) gets an answer
as soon as authorities change, without waiting for an entry change.

Federation: the answer carries the federated bundles of every trust domain the agent's entries
federate with (``federated_bundles``, SPIFFE bundle JSON by trust domain name) as of
``federated_revision``; an agent passing that back (``federated=R``) is answered as soon as a
federated bundle changes or goes away.

Entries are answered from this replica's snapshot only while it is current enough to be
honest: never while the replica cannot reach its store (503, the agent moves to another
replica; the HTTP adapter wakes a held long-poll to say so), and never at a revision older than
one the agent already holds from this store (an agent that moved here from a replica further
ahead would be sent back in time: 503 until this replica has caught up). A revision the store
itself has not reached (another store's, after a restore) still gets the full list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

from s2s.ca.authority import Authority
from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.lifecycle import AuthorityLifecycle, TaintedAuthorities
from s2s.ca.registry import Registry
from s2s.ca.store_health import StoreHealth
from s2s.core.bundle import BundleSet
from s2s.core.errors import Conflict, NotFound, StoreError
from s2s.core.registration import RegistrationEntry
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
    federated_revision: int | None = None  # None: this CA keeps no federated bundles
    federated: BundleSet = field(default_factory=BundleSet)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bundle_sequence": self.bundle_sequence,
            "authorities_revision": self.tainted.revision,
            "tainted": self.tainted.to_json(),
        }
        if self.federated_revision is not None:
            out["federated_revision"] = self.federated_revision
            out["federated_bundles"] = {
                str(b.trust_domain): json.loads(b.encode()) for b in self.federated
            }
        return out


class AgentSync:
    """Records agents' bundle sequences and builds the authority view of entries answers."""

    def __init__(
        self,
        *,
        store: Store,
        authority: Authority,
        registry: Registry,
        lifecycle: AuthorityLifecycle,
        federated: FederatedBundles | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self._store = store
        self._health = health
        self._federated = federated
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

    async def view(self, entries: Iterable[RegistrationEntry] = ()) -> AgentView:
        """The current bundle sequence and tainted authorities (the bundle is re-read from the
        store when authorities changed since the last look, so the sequence is current), and
        the federated bundles ``entries`` federate with."""
        tainted = await self._lifecycle.tainted()
        if tainted.revision != self._seen_revision:
            await self._authority.refresh_bundle()
            self._seen_revision = tainted.revision
        if self._federated is None:
            return AgentView(self._authority.bundle.sequence, tainted)
        revision = await self._federated.revision()  # before the read: a change wakes again
        wanted = frozenset(td for e in entries for td in e.federates_with)
        federated = (
            await self._federated.bundle_set(wanted, revision=revision) if wanted else BundleSet()
        )
        return AgentView(self._authority.bundle.sequence, tainted, revision, federated)

    async def check_current(self, revision: int, since: int) -> None:
        """Refuse (:class:`StoreError`, 503) to answer with entries as of ``revision`` when they
        may be stale: the store is unreachable, or the agent holds ``since``, a later revision
        of this store than this replica has seen."""
        if self._health is not None:
            self._health.check()
        if since <= revision:
            return
        stored = await self._store.revision(Topic.ENTRIES)  # only when the agent is ahead
        if stored > revision:
            raise StoreError(
                f"this CA replica holds entries revision {revision}, behind the store "
                f"({stored}) and the agent ({since}): retry, or use another CA replica"
            )

    def moved(self, view: AgentView | None, authorities_seen: int, federated_seen: int) -> bool:
        """Whether ``view`` is newer than what the agent said it holds."""
        if view is None:
            return False
        authorities = authorities_seen >= 0 and view.tainted.revision != authorities_seen
        federated = (
            federated_seen >= 0
            and view.federated_revision is not None
            and view.federated_revision != federated_seen
        )
        return authorities or federated

    async def wait(
        self,
        entries: Awaitable[object],
        authorities_after: int,
        timeout: float,
        federated_after: int = -1,
    ) -> None:
        """Until ``entries`` completes, authorities move past ``authorities_after`` or the
        federated bundles past ``federated_after`` (a negative revision: not waited on)."""
        waits = [entries]
        if authorities_after >= 0:
            waits.append(self._store.wait_for_change(Topic.AUTHORITIES, authorities_after, timeout))
        if federated_after >= 0 and self._federated is not None:
            waits.append(self._federated.wait_for_change(federated_after, timeout))
        if len(waits) == 1:
            await entries
            return
        tasks = {asyncio.ensure_future(w) for w in waits}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
