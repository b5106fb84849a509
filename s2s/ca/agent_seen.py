"""When and from where each agent last called the CA, for ``s2s-ca agent show``.

An agent calls the CA every few seconds (sync long-polls, renewals); writing the store on every
call would double its load. :class:`AgentSeen` writes an agent's record (a state key per agent:
last seen time and peer address) at most once per ``interval`` per replica, and at once when the
address changes. "Last seen" is therefore exact to ``interval``. First seen is the agent record's
``created_at`` (its attestation). Several replicas may write the same key: the newest time wins,
and a lost compare-and-swap is dropped (the other replica saw the agent at least as recently).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, S2SError
from s2s.core.spiffe_id import SpiffeId
from s2s.store.base import Store

__all__ = ["DEFAULT_SEEN_INTERVAL", "AgentSeen", "SeenRecord", "seen_key"]

DEFAULT_SEEN_INTERVAL: Final = timedelta(seconds=60)
_PREFIX: Final = "agent.seen/"


def seen_key(agent_id: SpiffeId) -> str:
    """The state key of an agent's last-seen record.

    >>> seen_key(SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a1"))
    'agent.seen/spiffe://example.org/s2s/agent/join_token/a1'
    """
    return _PREFIX + str(agent_id)


@dataclass(frozen=True, slots=True)
class SeenRecord:
    """The last call an agent made to the CA (as recorded, to within the write interval)."""

    last_seen: datetime
    address: str

    def encode(self) -> str:
        return json.dumps({"last_seen": self.last_seen.isoformat(), "address": self.address})

    @classmethod
    def decode(cls, raw: str) -> SeenRecord | None:
        """None for a record this version cannot read (it is only informative)."""
        try:
            doc: Any = json.loads(raw)
            return cls(datetime.fromisoformat(doc["last_seen"]), str(doc["address"]))
        except (ValueError, KeyError, TypeError):
            return None


class AgentSeen:
    """Records agents' calls, throttled to one store write per agent per ``interval``."""

    def __init__(
        self, *, store: Store, clock: Clock, interval: timedelta = DEFAULT_SEEN_INTERVAL
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._written: dict[SpiffeId, SeenRecord] = {}  # what this replica wrote last

    async def saw(self, agent_id: SpiffeId, address: str | None) -> None:
        """An agent called from ``address``; writes the store only when due. Never raises:
        a failed write is retried on a later call."""
        now = utc(self._clock.now())
        address = address or ""
        last = self._written.get(agent_id)
        if last is not None and last.address == address and now - last.last_seen < self._interval:
            return
        record = SeenRecord(now, address)
        self._written[agent_id] = record  # before the write: concurrent calls do not pile up
        key = seen_key(agent_id)
        try:
            raw = await self._store.get_state(key)
            stored = None if raw is None else SeenRecord.decode(raw)
            if stored is not None and stored.last_seen >= now and stored.address == address:
                return
            await self._store.cas_state(key, raw, record.encode())
        except Conflict:
            return  # another replica wrote it just now
        except S2SError:
            self._written.pop(agent_id, None)  # retry on the next call

    async def last_seen(self, agent_id: SpiffeId) -> SeenRecord | None:
        """The recorded last call, or None if the agent has not called since attesting."""
        raw = await self._store.get_state(seen_key(agent_id))
        return None if raw is None else SeenRecord.decode(raw)

    async def forget(self, agent_id: SpiffeId) -> None:
        """Drop an evicted agent's record."""
        self._written.pop(agent_id, None)
        raw = await self._store.get_state(seen_key(agent_id))
        if raw is not None:
            with contextlib.suppress(Conflict):
                await self._store.cas_state(seen_key(agent_id), raw, None)
