"""A revocation feed that follows the agent: ``s2s.agent.v1.Revocations/WatchRevocations``.

The agent already follows the CA's revocations; this feed takes its set (serials, JWT
``jti``\\ s and SPIFFE IDs) from the agent's socket, through the :class:`WorkloadApiClient` of a
:class:`~s2s.verifier.source.JwtSource` (``JwtSource.revocations``). The feed asks for deltas: the
agent sends the whole set at once, then on every change only what changed since its previous
message (an agent that predates deltas sends the whole set again, which is taken as it comes),
and a heartbeat every few seconds. A delta is applied in O(change) (the new set is derived from the
one held); a delta whose base is not the revision held, or that names another store epoch than the
set held, is refused: the set is kept and the stream reopened, whose first message is the whole
set. A malformed message is refused the same way. Each message says how old the
agent's own knowledge is (``age``), so the set is confirmed complete as of ``now - age``: if the
agent's feed lags (its CA or etcd is unreachable), this one lags with it, and if the stream
breaks, this one ages from its last message. The staleness policy is :class:`RevocationFeed`'s:
lagging from the first missed update (a missed heartbeat, or the agent's own lag), failing closed
with :class:`RevocationsStale` past ``max_staleness``. The stream is reopened with capped
exponential backoff and jitter; the last set is kept meanwhile.

An agent that does not serve the extension (SPIRE, an older s2s agent) answers UNIMPLEMENTED:
the feed says so once (log ``revocations.agent_not_served``), sets :attr:`not_served`, and asks
again now and then (the agent may be upgraded). Until it has synced, :meth:`current` raises
:class:`RevocationsStale` naming the cause and both ways out, and
:func:`~s2s.verifier.revocation_choice.resolve_revocations` refuses to default to it, so a
``JwtValidator`` never silently checks nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from s2s.core.clock import Clock
from s2s.core.errors import S2SError, Unavailable
from s2s.core.revocation import RevocationSet
from s2s.verifier.feeds import DEFAULT_MAX_STALENESS, RevocationFeed, RevocationsStale
from s2s.verifier.workload_client import NotServed, RevocationsUpdate, WorkloadApiClient

__all__ = ["AgentRevocationFeed"]

log = logging.getLogger(__name__)

_ASSUMED_AGENT_LAG = 40.0  # seconds: an s2s agent's CA long-poll lag, until the agent says
_ASSUMED_HEARTBEAT = 5.0
_NOT_SERVED_RETRY = 60.0  # seconds between asking an agent that does not serve the extension
BIG_SET = 5000  # records; a set this large is built in a thread


class AgentRevocationFeed(RevocationFeed):
    """The agent's revocation set, followed over the Workload API socket (see the module doc).

    ``client`` returns the :class:`WorkloadApiClient` to use (the JwtSource's, created when the
    source starts); ``delay(attempt)`` the seconds before reconnect ``attempt`` (0-based).
    """

    name = "agent revocation feed"

    def __init__(
        self,
        client: Callable[[], WorkloadApiClient | None],
        *,
        delay: Callable[[int], float],
        max_staleness: float = DEFAULT_MAX_STALENESS,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(max_staleness=max_staleness, clock=clock)
        self._client = client
        self._delay = delay
        self._agent_lag = _ASSUMED_AGENT_LAG
        self._heartbeat = _ASSUMED_HEARTBEAT
        self._revision: int | None = None  # the agent revision of the records held (this stream)
        self._epoch = ""  # the store epoch the agent named with them
        self._received: RevocationSet | None = None  # the newest set received on this stream
        self._pending: RevocationSet | None = None  # received, not yet published
        self._pending_whole = False  # it came whole (it may equal the published set)
        self.not_served: str | None = None  # why the agent does not serve the stream
        self.settled = asyncio.Event()  # first set, a refusal or an error: start() may go on
        self.messages = 0
        self.deltas = 0  # deltas applied
        self.wholes = 0  # whole sets taken
        self.reconnects = 0

    @property
    def lag_after(self) -> float:
        """The agent's own lag threshold plus two heartbeats: past that, an update was missed
        either by the agent or on the stream."""
        return min(self.max_staleness, self._agent_lag + 2 * self._heartbeat)

    @property
    def unsupported(self) -> str | None:
        """Why this lookup cannot be used as a default (the agent does not serve it), if so."""
        return self.not_served if self.last_update is None else None

    def current(self) -> RevocationSet:
        reason = self.unsupported
        if reason is not None:
            raise RevocationsStale(_refusal(reason), age=None)
        return super().current()

    def status(self) -> str:
        return "not-served" if self.unsupported is not None else super().status()

    def ensure_started(self) -> None:
        """Start the task (idempotent); :meth:`start` would also wait for the first set."""
        if self._task is None:
            self._task = asyncio.create_task(self._guarded_run(), name=self.name)

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = self._client()
            if client is None:
                raise Unavailable("the agent revocation feed has no Workload API client")
            self._revision = self._received = None  # a new stream starts with a whole set
            try:
                async for update in client.watch_revocations(deltas=True):
                    await self._apply(update)
                    attempt = 0
                raise Unavailable("the agent closed the revocations stream")
            except NotServed as exc:
                self._not_served(str(exc))
                await asyncio.sleep(max(_NOT_SERVED_RETRY, self._delay(attempt)))
                continue
            except S2SError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a transport surprise: keep the set, say so, retry
                log.exception("revocations.agent_stream_crashed")
                self._failed(f"the revocations stream crashed: {type(exc).__name__}: {exc}")
            self.settled.set()
            self.reconnects += 1
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    async def _apply(self, update: RevocationsUpdate) -> None:
        received = self._now()
        self.messages += 1
        self._agent_lag, self._heartbeat = update.lag_after, update.heartbeat
        if self.not_served is not None:
            log.warning("revocations.agent_served", extra={"feed": self.name})
            self.not_served = None
        if update.base is not None:
            new = await self._derive(update)
            self._revision, self._received, self._pending = update.revision, new, new
            self._pending_whole = False
            self.deltas += 1
        elif update.records is not None:
            if len(update.records) > BIG_SET:
                new = await asyncio.to_thread(RevocationSet.of, update.records)
            else:
                new = RevocationSet.of(update.records)
            self._revision, self._received, self._pending = update.revision, new, new
            self._epoch, self._pending_whole = update.epoch, True
            self.wholes += 1
        elif update.revision != self._revision:
            raise Unavailable(
                f"the agent's heartbeat names revision {update.revision}, but its set "
                f"{self._revision} is the last one received"
            )
        if update.age is None:  # the agent has not synced its own feed yet: nothing to confirm
            self.last_error = "the agent has not synced its revocations yet"
            self.settled.set()  # an answer all the same: start() need not wait for the agent
            return
        if self._pending is not None:
            if not self._pending_whole or self._pending != self.snapshot():
                self._publish(self._pending)
            self._pending = None
        self._confirm(received - timedelta(seconds=update.age))
        self.settled.set()

    async def _derive(self, update: RevocationsUpdate) -> RevocationSet:
        """The set held with the delta ``update`` applied (refused when it is not for it)."""
        held = self._received
        if held is None or update.base != self._revision:
            raise Unavailable(
                f"the agent sent a delta from revision {update.base}, but revision "
                f"{self._revision} is held: the whole set is asked for again"
            )
        if update.epoch != self._epoch:
            raise Unavailable(
                f"the agent sent a delta for store epoch {update.epoch!r}, but the set held is of "
                f"epoch {self._epoch!r}: the whole set is asked for again"
            )
        put = update.records or ()
        if len(put) + len(update.removed) > BIG_SET:
            return await asyncio.to_thread(held.with_changes, put, update.removed)
        return held.with_changes(put, update.removed)

    def _not_served(self, message: str) -> None:
        if self.not_served is None:
            log.error(
                "revocations.agent_not_served",
                extra={"feed": self.name, "error": _refusal(message)},
            )
        self.not_served = message
        self.last_error = message
        self.settled.set()


def _refusal(reason: str) -> str:
    return (
        f"{reason}; JWT-SVID revocations cannot be checked through this agent: pass "
        "revocations=<a lookup> (an EtcdRevocationFeed or a CaRevocationFeed) or, to accept "
        "revoked tokens, revocations=no_revocation_check()"
    )
