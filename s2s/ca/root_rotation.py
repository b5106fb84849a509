"""Root rotation: a resumable state machine kept in the store.

    (idle) --prepare--> prepared --activate--> activated --retire--> done

* **prepare**: a new root (state PREPARED) joins the bundle; the bundle sequence grows to
  ``target_sequence``.
* **activate**, once every live agent (unexpired, not banned) reports holding a bundle of at least
  ``target_sequence`` (so every workload trusts the new root before anything chains to it): the new
  root becomes ACTIVE, the old one OLD. Each replica then switches to a new intermediate under the
  new root on its next authority check.
* **retire**, once no replica signs under the old root any more and the longest SVID lifetime
  (workload, agent, CA server) plus skew has passed since: the old root leaves the bundle (REVOKED).

The state is one JSON document under the store's CAS state key :data:`STATE_KEY`; every transition
is a compare-and-swap, and each step first re-reads the store, so a re-run after a crash between
any two writes finds where it was and carries on (an orphan prepared root is adopted, state moves
already made are tolerated).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from s2s.ca.audit import AuditField, AuditLog
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidConfig, NotFound, Unavailable
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState

__all__ = [
    "STATE_KEY",
    "Phase",
    "RootRotation",
    "RotationProgress",
    "RotationState",
    "duration_text",
]

log = logging.getLogger(__name__)

STATE_KEY: Final = "root.rotation"


class Phase(StrEnum):
    PREPARED = "prepared"
    ACTIVATED = "activated"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class RotationState:
    """What the store remembers of the current (or last) rotation."""

    phase: Phase
    old_root: str
    new_root: str
    target_sequence: int
    started_at: datetime
    activated_at: datetime | None = None
    switched_at: datetime | None = None  # first seen with no replica signing under old_root
    finished_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out

    def encode(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> RotationState:
        try:
            doc = json.loads(raw)
            times = {
                k: None if doc.get(k) is None else datetime.fromisoformat(doc[k])
                for k in ("started_at", "activated_at", "switched_at", "finished_at")
            }
            started = times.pop("started_at")
            if started is None:
                raise ValueError("started_at is missing")
            return cls(
                phase=Phase(doc["phase"]),
                old_root=str(doc["old_root"]),
                new_root=str(doc["new_root"]),
                target_sequence=int(doc["target_sequence"]),
                started_at=started,
                **times,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfig(f"the stored root rotation state is corrupt: {exc}") from exc


@dataclass(frozen=True, slots=True)
class RotationProgress:
    """One look at the rotation: where it is, what it waits for, and who holds it up."""

    state: RotationState | None
    changed: bool = False  # this call made a transition
    waiting_for: str = ""  # "", "federation", "agents", "replicas" or "lifetime"
    lagging_agents: tuple[tuple[str, int], ...] = ()  # (agent SPIFFE ID, sequence it reported)
    lagging_replicas: tuple[str, ...] = ()
    retire_at: datetime | None = None
    message: str = ""
    hold: timedelta = timedelta(0)  # how long the old root stays after the last replica switched
    hold_reason: str = ""  # which settings make up ``hold``
    eta: datetime | None = None  # the earliest the rotation can finish, seen from now

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.phase is Phase.DONE

    @property
    def phase(self) -> str:
        return "idle" if self.state is None else self.state.phase.value

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "state": None if self.state is None else self.state.to_json(),
            "changed": self.changed,
            "done": self.done,
            "waiting_for": self.waiting_for,
            "lagging_agents": [
                {"spiffe_id": a, "bundle_sequence": s} for a, s in self.lagging_agents
            ],
            "lagging_replicas": list(self.lagging_replicas),
            "retire_at": None if self.retire_at is None else self.retire_at.isoformat(),
            "message": self.message,
            "hold_seconds": int(self.hold.total_seconds()),
            "hold_reason": self.hold_reason,
            "eta": None if self.eta is None else self.eta.isoformat(),
        }


class RootRotation:
    """Drives the root rotation one step at a time (``s2s-ca rotate-root``)."""

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        authority: Authority,
        clock: Clock,
        audit: AuditLog | None = None,
        federation_lead: timedelta = timedelta(0),
    ) -> None:
        self._audit = audit if audit is not None else AuditLog()
        # With a bundle endpoint, federated trust domains must fetch the new root before anything
        # chains to it: activation waits this long after prepare (SPIFFE_Federation.md 4.1).
        self.federation_lead = federation_lead
        self._config = config
        self._store = store
        self._authority = authority
        self._clock = clock

    @property
    def hold(self) -> timedelta:
        """How long the old root stays after the last replica switched: the longest lifetime of
        anything signed under it, plus the clock skew allowance (the backdate)."""
        c = self._config
        longest = max(c.x509_svid_ttl, c.max_svid_ttl, c.agent_svid_ttl, c.server_svid_ttl)
        return longest + c.backdate

    @property
    def hold_reason(self) -> str:
        """Why :attr:`hold` is as long as it is, from the settings (said before a rotation)."""
        c = self._config
        lifetimes = {
            "agent_svid_ttl": c.agent_svid_ttl,
            "server_svid_ttl": c.server_svid_ttl,
            "max_svid_ttl": c.max_svid_ttl,
            "x509_svid_ttl": c.x509_svid_ttl,
        }
        name, longest = max(lifetimes.items(), key=lambda item: item[1])
        return (
            f"{duration_text(self.hold)} = the longest lifetime of anything signed under the old"
            f" root ({name} = {duration_text(longest)}) plus the clock-skew allowance"
            f" (backdate = {duration_text(c.backdate)}), counted from when the last replica"
            " signs under the new root"
        )

    async def status(self) -> RotationProgress:
        """Where the rotation is and what it waits for; changes nothing."""
        raw, state = await self._read()
        return self._explained(await self._status(raw, state))

    async def _status(self, raw: str | None, state: RotationState | None) -> RotationProgress:
        if state is None or state.phase is Phase.DONE:
            return RotationProgress(state, message=_idle_message(state))
        now = utc(self._clock.now())
        if state.phase is Phase.PREPARED:
            return (
                self._federation_progress(state, now)
                or await self._agents_progress(state, now)
                or RotationProgress(
                    state, message="every live agent holds the new root; ready to activate"
                )
            )
        return await self._retire_progress(state, now, write=False, raw=raw)

    async def step(self, *, new: bool = False) -> RotationProgress:
        """Make the next transition if its condition holds, else say what it waits for.

        ``new`` starts a rotation after a finished one (a plain re-run after ``done`` only
        reports, so re-running a command that crashed at its very end starts nothing); during a
        rotation that has not finished it is a :class:`Conflict` naming where that one is."""
        for _ in range(8):
            raw, state = await self._read()
            now = utc(self._clock.now())
            if new and state is not None and state.phase is not Phase.DONE:
                current = await self._status(raw, state)
                raise Conflict(
                    f"a root rotation to root {state.new_root} is under way (phase"
                    f" {state.phase.value}, started {state.started_at.isoformat()}):"
                    f" {current.message}; run s2s-ca rotate-root without --new to carry it on"
                )
            try:
                if state is None or (state.phase is Phase.DONE and new):
                    progress = await self._prepare(raw, now)
                elif state.phase is Phase.DONE:
                    progress = RotationProgress(state, message=_idle_message(state))
                elif state.phase is Phase.PREPARED:
                    progress = await self._activate(raw, state, now)
                else:
                    progress = await self._retire_progress(state, now, write=True, raw=raw)
            except Conflict:
                continue  # another caller moved the state; re-read and carry on
            return self._explained(progress)
        raise Unavailable("the root rotation state keeps changing under us; retry")

    def _explained(self, progress: RotationProgress) -> RotationProgress:
        """``progress`` with the hold, why, and the earliest finish (ETA) from now."""
        now = utc(self._clock.now())
        if progress.done or progress.state is None:
            eta = None
        elif progress.retire_at is not None:
            eta = max(progress.retire_at, now)
        else:  # agents or replicas first, then the whole hold
            eta = now + self.hold
        return dataclasses.replace(progress, hold=self.hold, hold_reason=self.hold_reason, eta=eta)

    # -- transitions -----------------------------------------------------------------------

    async def _prepare(self, raw: str | None, now: datetime) -> RotationProgress:
        roots = await self._store.list_authorities(kind=AuthorityKind.X509_ROOT)
        active = [r for r in roots if r.state is AuthorityState.ACTIVE]
        if not active:
            raise InvalidConfig("the store has no active root")
        old = active[-1]
        orphans = [r for r in roots if r.state is AuthorityState.PREPARED and r.not_after > now]
        new = orphans[-1] if orphans else await self._create_root(now)
        bundle = await self._authority.refresh_bundle()
        state = RotationState(Phase.PREPARED, old.id, new.id, bundle.sequence, now)
        await self._store.cas_state(STATE_KEY, raw, state.encode())
        self._audit.admin_change("root_rotation.prepare", target=new.id, details=_roots(state))
        log.info(
            "root_rotation.prepared",
            extra={F.AUTHORITY_ID: new.id, F.REVISION: state.target_sequence},
        )
        return RotationProgress(
            state,
            changed=True,
            message=f"new root {new.id} joined the bundle (sequence {bundle.sequence})",
        )

    async def _create_root(self, now: datetime) -> AuthorityRecord:
        record = self._authority.new_root_record(now)
        await self._store.create_authority(record)
        return record

    async def _activate(
        self, raw: str | None, state: RotationState, now: datetime
    ) -> RotationProgress:
        waiting = self._federation_progress(state, now) or await self._agents_progress(state, now)
        if waiting is not None:
            return waiting
        await self._move(state.new_root, AuthorityState.PREPARED, AuthorityState.ACTIVE)
        await self._move(state.old_root, AuthorityState.ACTIVE, AuthorityState.OLD)
        activated = dataclasses.replace(state, phase=Phase.ACTIVATED, activated_at=now)
        await self._store.cas_state(STATE_KEY, raw, activated.encode())
        self._audit.admin_change(
            "root_rotation.activate", target=state.new_root, details=_roots(state)
        )
        log.info("root_rotation.activated", extra={F.AUTHORITY_ID: state.new_root})
        await self._authority.rotate_if_due()  # this replica switches now; others on their check
        return RotationProgress(
            activated,
            changed=True,
            message=f"root {state.new_root} is active; replicas move to new intermediates",
        )

    async def _retire_progress(
        self, state: RotationState, now: datetime, *, write: bool, raw: str | None
    ) -> RotationProgress:
        replicas = await self._replicas_on_old_root(state, now)
        if replicas:
            return RotationProgress(
                state,
                waiting_for="replicas",
                lagging_replicas=replicas,
                message="waiting for replicas to sign under the new root: " + ", ".join(replicas),
            )
        if state.switched_at is None and write:
            switched = dataclasses.replace(state, switched_at=now)
            await self._store.cas_state(STATE_KEY, raw, switched.encode())
            state, raw = switched, switched.encode()
        retire_at = (state.switched_at or now) + self.hold
        if now < retire_at or not write:
            return RotationProgress(
                state,
                waiting_for="lifetime" if now < retire_at else "",
                retire_at=retire_at,
                message=f"the old root {state.old_root} stays in the bundle until"
                f" {retire_at.isoformat()} (longest SVID lifetime plus skew)",
            )
        await self._move(state.old_root, AuthorityState.OLD, AuthorityState.REVOKED)
        done = dataclasses.replace(state, phase=Phase.DONE, finished_at=now)
        await self._store.cas_state(STATE_KEY, raw, done.encode())
        self._audit.admin_change(
            "root_rotation.retire", target=state.old_root, details=_roots(state)
        )
        bundle = await self._authority.refresh_bundle()
        log.info("root_rotation.retired", extra={F.AUTHORITY_ID: state.old_root})
        return RotationProgress(
            done,
            changed=True,
            message=f"old root {state.old_root} left the bundle (sequence {bundle.sequence}); done",
        )

    # -- conditions ------------------------------------------------------------------------

    def _federation_progress(self, state: RotationState, now: datetime) -> RotationProgress | None:
        """None once federated trust domains have had ``federation_lead`` to fetch the new root
        from the bundle endpoint (three refresh hints); else when activation may happen."""
        ready_at = state.started_at + self.federation_lead
        if now >= ready_at:
            return None
        return RotationProgress(
            state,
            waiting_for="federation",
            message=f"federated trust domains fetch the new root from the bundle endpoint"
            f" first: activation not before {ready_at.isoformat()}",
        )

    async def _agents_progress(
        self, state: RotationState, now: datetime
    ) -> RotationProgress | None:
        """None when every live agent holds the new bundle; else who does not."""
        agents = await self._store.list_agents()
        lagging = tuple(
            (str(a.spiffe_id), a.bundle_sequence)
            for a in agents
            if not a.banned and a.not_after > now and a.bundle_sequence < state.target_sequence
        )
        if not lagging:
            return None
        names = ", ".join(f"{a} (holds {s})" for a, s in lagging[:10])
        more = f" and {len(lagging) - 10} more" if len(lagging) > 10 else ""
        return RotationProgress(
            state,
            waiting_for="agents",
            lagging_agents=lagging,
            message=f"waiting for {len(lagging)} agent(s) to pick up bundle sequence"
            f" {state.target_sequence}: {names}{more}",
        )

    async def _replicas_on_old_root(self, state: RotationState, now: datetime) -> tuple[str, ...]:
        records = await self._store.list_authorities(kind=AuthorityKind.X509_INTERMEDIATE)
        return tuple(
            sorted(
                {
                    r.owner
                    for r in records
                    if r.state is AuthorityState.ACTIVE
                    and r.issuer_id == state.old_root
                    and r.not_after > now
                }
            )
        )

    # -- store -------------------------------------------------------------------------------

    async def _read(self) -> tuple[str | None, RotationState | None]:
        raw = await self._store.get_state(STATE_KEY)
        return raw, None if raw is None else RotationState.decode(raw)

    async def _move(self, authority_id: str, expected: AuthorityState, new: AuthorityState) -> None:
        """Idempotent state move: already in ``new`` is fine (a re-run after a crash)."""
        try:
            await self._store.cas_authority_state(authority_id, expected, new)
        except Conflict:
            current = await self._store.get_authority(authority_id)
            if current.state is not new:
                raise InvalidConfig(
                    f"root {authority_id} is {current.state.value}, expected {expected.value}:"
                    " the rotation state and the authorities disagree"
                ) from None
        except NotFound:
            raise InvalidConfig(
                f"root {authority_id} of the rotation is gone from the store"
            ) from None


def _roots(state: RotationState) -> dict[AuditField, Any]:
    return {
        AuditField.OLD_ROOT: state.old_root,
        AuditField.NEW_ROOT: state.new_root,
        AuditField.BUNDLE_SEQUENCE: state.target_sequence,
    }


def duration_text(value: timedelta) -> str:
    """A duration for people, exact to the second.

    >>> duration_text(timedelta(hours=1, seconds=30))
    '1h0m30s'
    >>> duration_text(timedelta(minutes=5))
    '5m0s'
    """
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _idle_message(state: RotationState | None) -> str:
    if state is None:
        return "no root rotation has run; start one with s2s-ca rotate-root"
    finished = state.finished_at.isoformat() if state.finished_at else "?"
    return (
        f"the last rotation (to root {state.new_root}) finished at {finished}; --new starts another"
    )
