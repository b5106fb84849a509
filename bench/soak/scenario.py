"""The timeline of a soak run: revocations every few seconds, faults and ``rotate-root``.

Everything the harness does is logged with its wall-clock start and end, so that the accounting
can tell expected refusals from failures. After each restart the harness checks that nothing was
lost: every revocation record still in force is listed, every entry is intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from bench.soak.accounting import Downtime, Revocation
from bench.soak.plan import Plan
from bench.soak.system import SoakFailed, System

__all__ = ["Scenario"]

# Seconds both replicas stay down before they are started again (starting takes a few more):
# the whole outage stays under half the SVID lifetime, the margin half-life renewal gives.
CA_OUTAGE: Final = 4.0
REVOKE_KINDS: Final = ("serial", "jti", "spiffe_id")
TARGETS: Final = ("alpha", "bravo", "charlie", "delta")


@dataclass(slots=True)
class Scenario:
    system: System
    plan: Plan
    say: Callable[[str], None]
    revocations: list[Revocation] = field(default_factory=list)
    revoked_records: list[dict[str, Any]] = field(default_factory=list)
    downtime: list[Downtime] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rotate_root: list[dict[str, Any]] = field(default_factory=list)
    persistence_checks: int = 0
    skipped_revocations: list[str] = field(default_factory=list)  # a fault downed the CAs
    banned: set[str] = field(default_factory=set)  # processes expected to exit (revoked agent)
    _root_task: asyncio.Task[None] | None = None
    _killed: int = 0
    _etcd_stopped: int = 0

    async def run(self, t_begin: float) -> None:
        """Run the timeline until ``plan.duration`` seconds after ``t_begin``."""
        end = t_begin + self.plan.duration
        async with asyncio.TaskGroup() as group:
            group.create_task(self._revoke_loop(end))
            group.create_task(self._event_loop(t_begin, end))
        if self._root_task is not None:
            await self._root_task

    # -- revocations ----------------------------------------------------------------------------

    async def _revoke_loop(self, end: float) -> None:
        n = 0
        while time.time() + self.plan.revoke_every < end - 5:
            await asyncio.sleep(self.plan.revoke_every)
            if not self.system.any_ca_running():
                continue  # both replicas are down (an outage): nothing can be revoked
            kind = REVOKE_KINDS[n % len(REVOKE_KINDS)]
            target = TARGETS[(n // len(REVOKE_KINDS)) % len(TARGETS)]
            n += 1
            value = self._value_for(kind, target)
            if value is None:
                continue
            await self.revoke(kind, value, frozenset({self.system.spiffe_id(target)}), target)

    def _value_for(self, kind: str, target: str) -> str | None:
        records = self.system.records
        if kind == "spiffe_id":
            return self.system.spiffe_id(target)
        for r in reversed(records):
            if r.get("w") != target:
                continue
            if kind == "serial" and r.get("k") == "svid":
                return str(r["serial"])
            if kind == "jti" and _own_jwt_call(r):
                return str(r["jti"])
        return None

    async def revoke(self, kind: str, value: str, covers: frozenset[str], target: str) -> None:
        flag = {"spiffe_id": "--spiffe-id"}.get(kind, f"--{kind}")
        t_start = time.time()
        kills = self.system.ca_kills
        try:
            result = await self.system.ca("revoke", flag, value, "--reason", "soak", "--json")
        except SoakFailed as exc:
            if self.system.ca_kills != kills:
                # A fault took the replicas down while the command ran: the CLI said so clearly
                # and nothing was revoked; the loop revokes something else next time.
                self.skipped_revocations.append(f"{kind} {value}: {exc}".strip())
                return
            self.problems.append(f"revoke {kind} {value}: {exc}")
            return
        t_done = time.time()
        self.revocations.append(Revocation(kind, value, t_start, t_done, covers, target))
        with contextlib.suppress(ValueError, KeyError):
            self.revoked_records += json.loads(result.stdout)["records"]
        self.say(f"revoked {kind} {value[:40]} ({target}) in {t_done - t_start:.2f} s")

    # -- events ---------------------------------------------------------------------------------

    async def _event_loop(self, t_begin: float, end: float) -> None:
        for at, name in self.plan.events:
            delay = t_begin + at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.time() > end:
                return
            t0 = time.time()
            try:
                detail = await getattr(self, "_" + name.replace("-", "_"))()
            except SoakFailed as exc:
                self.problems.append(f"{name}: {exc}")
                detail = f"FAILED: {exc}"
            self.events.append({"event": name, "t": t0, "took_s": round(time.time() - t0, 2),
                                "detail": detail})  # fmt: skip
            self.say(f"{name}: {detail}")

    async def _kill_ca(self) -> str:
        name = f"ca-{self._killed % 2}"
        await self.system.kill_proc(name)
        return f"{name} killed with SIGKILL"

    async def _restart_ca(self) -> str:
        name = f"ca-{self._killed % 2}"
        self._killed += 1
        await self.system.start_ca(int(name[-1]))
        return f"{name} restarted; {await self.check_persistence()}"

    async def _stop_etcd(self) -> str:
        member = self.system.etcd.members[self._etcd_stopped % 3]
        await asyncio.to_thread(member.stop)
        return f"etcd member {member.name} stopped"

    async def _start_etcd(self) -> str:
        member = self.system.etcd.members[self._etcd_stopped % 3]
        self._etcd_stopped += 1
        await asyncio.to_thread(member.start)
        if member._process is not None:
            self.system.etcd_pids.append(member._process.pid)
        return f"etcd member {member.name} back; {await self.check_persistence()}"

    async def _restart_agent(self) -> str:
        await self.system.stop_proc("agent-a")
        await self.system.restart("agent-a")
        return "agent-a stopped and started again (same data dir, no new token)"

    async def _restart_workload(self) -> str:
        spec = next(w for w in self.plan.workloads if w.name == "delta")
        t_from = time.time()
        await self.system.stop_proc(spec.name)
        await self.system.start_workload(spec)
        await self.system.wait_ready(spec.name)
        await self.system.go(spec.name)
        self.downtime.append(Downtime(spec.name, t_from, time.time()))
        return f"{spec.name} stopped and started from scratch ({time.time() - t_from:.1f} s)"

    async def _ca_outage(self) -> str:
        t0 = time.time()
        for i in (0, 1):
            await self.system.kill_proc(f"ca-{i}")
        await asyncio.sleep(CA_OUTAGE)
        await asyncio.gather(*(self.system.start_ca(i) for i in (0, 1)))
        down = time.time() - t0
        return f"both CA replicas down for {down:.1f} s, back; {await self.check_persistence()}"

    async def _revoke_agent(self) -> str:
        spare = next(w for w in self.plan.workloads if w.agent == "c")
        agent_id = self.system.agent_ids["c"]
        await self.revoke("agent", agent_id, frozenset({self.system.spiffe_id(spare.name)}), "c")
        self.banned.add("agent-c")  # a banned agent stops with a clear error: that is expected
        return f"agent c ({agent_id}) revoked; its workload {spare.name} loses its identity"

    async def _rotate_root(self) -> str:
        if self._root_task is not None and not self._root_task.done():
            return "a root rotation is still running; skipped"
        self._root_task = asyncio.create_task(self._drive_root_rotation())
        return "s2s-ca rotate-root started"

    async def _drive_root_rotation(self) -> None:
        """``s2s-ca rotate-root`` to the end; re-run (it resumes) if its replica went away."""
        t0 = time.time()
        again = bool(self.rotate_root)
        entry: dict[str, Any] = {"t_start": t0, "done": False, "attempts": 0}
        self.rotate_root.append(entry)
        while time.time() - t0 < 600:
            args = ["rotate-root", "--poll", "1", "--timeout", "300"]
            if again and entry["attempts"] == 0:
                args.append("--new")
            entry["attempts"] += 1
            result = await self.system.ca(*args, timeout=320, check=False)
            entry["output"] = (result.stdout + result.stderr)[-1500:]
            if result.code == 0:
                entry["done"] = "[done]" in result.stdout
                break
            await asyncio.sleep(1)
        entry["t_end"] = time.time()
        entry["took_s"] = round(entry["t_end"] - t0, 1)
        self.say(f"rotate-root finished={entry['done']} after {entry['took_s']} s")

    # -- checks ---------------------------------------------------------------------------------

    async def check_persistence(self) -> str:
        """Every revocation record still in force is listed; every entry is intact."""
        self.persistence_checks += 1
        listed = json.loads((await self.system.ca("revocations", "list", "--json")).stdout)
        have = {(r["kind"], r["value"]) for r in listed["records"]}
        soon = time.time() + 3
        missing = [
            r for r in self.revoked_records
            if datetime.fromisoformat(r["expires_at"]).timestamp() > soon
            and (r["kind"], r["value"]) not in have
        ]  # fmt: skip
        entries = json.loads((await self.system.ca("entry", "list", "--json")).stdout)
        ids = {e["spiffe_id"] for e in entries}
        lost = [w.name for w in self.plan.workloads if self.system.spiffe_id(w.name) not in ids]
        if missing:
            self.problems.append(f"revocation records lost: {missing[:5]}")
        if lost:
            self.problems.append(f"entries lost: {lost}")
        return (
            f"{len(have)} revocation records listed, {len(missing)} missing; "
            f"{len(ids)} entries, {len(lost)} lost"
        )


def _own_jwt_call(record: dict[str, Any]) -> bool:
    """A JWT call that presented the token the agent gave (not a held one)."""
    jwt_call = record.get("k") == "call" and record.get("kind") == "jwt"
    return bool(jwt_call and record.get("jti") and not record.get("probe"))
