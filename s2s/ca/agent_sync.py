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

The long-poll itself (``wait_for_entries``) is decided here: the agent is answered at once when
its entries, the authorities or its federated bundles moved past what it holds; else the wait
goes on until one of them does. A change to other agents' entries moves the revision but is
nothing to this agent: the wait goes on (one held long-poll per agent of the fleet would
otherwise be answered per change). How one wait is held (a long-poll slot, shutdown, the client
going away) is the caller's (``hold``, ``stop``).

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
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from s2s.ca.authority import Authority
from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.lifecycle import AuthorityLifecycle, TaintedAuthorities
from s2s.ca.registry import Registry
from s2s.ca.registry_cache import EntryDelta, EntrySnapshot
from s2s.ca.store_health import StoreHealth
from s2s.core.bundle import BundleSet
from s2s.core.errors import Conflict, NotFound, StoreError
from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AgentRecord, Topic

__all__ = ["AgentSync", "AgentView", "EntriesAnswer", "Hold"]

log = logging.getLogger(__name__)

Hold = Callable[[Callable[[], Awaitable[object]]], Awaitable[None]]
"""How a caller holds one wait: it awaits ``waiting()`` or gives up sooner (at once when it
holds too many waits already; on shutdown)."""


async def _wait_directly(waiting: Callable[[], Awaitable[object]]) -> None:
    await waiting()


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


@dataclass(frozen=True, slots=True)
class EntriesAnswer:
    """What an entries long-poll answers with: the agent's entries and the authority view."""

    snapshot: EntrySnapshot
    view: AgentView


class AgentSync:
    """Records agents' bundle sequences, builds the authority view of entries answers and holds
    an agent's entries long-poll until something of its own changed."""

    def __init__(
        self,
        *,
        store: Store,
        authority: Authority,
        registry: Registry,
        lifecycle: AuthorityLifecycle,
        federated: FederatedBundles | None = None,
        health: StoreHealth | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
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

    async def wait_for_entries(
        self,
        agent_id: SpiffeId,
        *,
        since: int,
        timeout: float,
        authorities_seen: int = -1,
        federated_seen: int = -1,
        hold: Hold = _wait_directly,
        stop: asyncio.Event | None = None,
    ) -> EntriesAnswer:
        """The entries of agent ``agent_id`` and the authority view, once they are news to it:
        at once when its entries moved past ``since`` (or ``timeout`` is 0), the authorities
        past ``authorities_seen`` or its federated bundles past ``federated_seen``; else when
        one of them does, ``timeout`` seconds pass, ``stop`` is set or a wait ends without a
        change (``hold`` gave up). :class:`StoreError` when this replica's entries may be stale
        (see :meth:`check_current`)."""
        answer = await self._answer(agent_id, since)
        if timeout <= 0 or answer.snapshot.revision > since:
            return answer
        if self.moved(answer.view, authorities_seen, federated_seen):
            return answer
        deadline = self._monotonic() + timeout
        after = since
        while True:
            left = max(0.0, deadline - self._monotonic())

            def waiting(after: int = after, left: float = left) -> Awaitable[object]:
                entries = self._registry.wait_for_entries(after, left)
                return self.wait(entries, authorities_seen, left, federated_seen)

            await hold(waiting)
            answer = await self._answer(agent_id, since)
            revision = answer.snapshot.revision
            if (
                revision <= after
                or self._monotonic() >= deadline
                or (stop is not None and stop.is_set())
                or self.moved(answer.view, authorities_seen, federated_seen)
                or not _untouched(self._registry.entry_delta(agent_id, after, revision))
            ):
                return answer
            after = revision

    async def _answer(self, agent_id: SpiffeId, since: int) -> EntriesAnswer:
        snapshot = await self._registry.entries_for_agent(agent_id)
        await self.check_current(snapshot.revision, since)  # 503 when this replica is stale
        return EntriesAnswer(snapshot, await self.view(snapshot.entries))


def _untouched(changes: EntryDelta | None) -> bool:
    """Whether a delta says for certain that nothing of the agent's changed (None: unknown)."""
    return changes is not None and not changes.changed and not changes.removed
