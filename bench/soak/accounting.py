"""Classifying a soak run's calls and measuring how fast revocations take effect (no I/O).

Inputs are the workloads' JSON records (see :mod:`bench.soak.workload`) and the harness's own
log of what it did (revocations with the time ``s2s-ca revoke`` was started and returned,
planned downtime of a workload). Times are wall-clock seconds (one machine, one clock).

A call is **legitimate** unless a credential it presented (the caller's SVID or JWT-SVID, or the
server's SVID) was revoked when it was refused. Which SVID a caller presented is read from the
server's verdict for that handshake (the server knows the serial it accepted or refused); when no
verdict tells, a failed call counts as failed. A revoked credential is *covered* by a revocation:

* ``serial``: that certificate;
* ``jti``: that JWT-SVID;
* ``spiffe_id``: everything issued to the ID before the revocation (an SVID's issue time is its
  notBefore plus the CA's backdate; a JWT-SVID's is its ``iat``);
* ``agent``: everything its workloads hold (the agent is banned: nothing new is issued), so
  every call from or to such a workload after the revocation is an expected refusal.

For refusals the cover is read leniently (issued before ``revoke`` returned), for acceptances
strictly (issued before ``revoke`` started, less a second), so the uncertain second in between
never counts against the system either way.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "Credential",
    "Downtime",
    "Revocation",
    "classify",
    "percentile",
    "revocation_latencies",
]

SLACK: Final = 0.05  # seconds around a call in which its handshake's verdicts are looked for


@dataclass(frozen=True, slots=True)
class Revocation:
    """One ``s2s-ca revoke`` the harness ran."""

    kind: str  # serial, jti, spiffe_id, agent
    value: str
    t_start: float
    t_done: float
    covers_ids: frozenset[str] = frozenset()  # agent: the SPIFFE IDs of its workloads
    target: str = ""  # the workload whose credential it was (for the report)


@dataclass(frozen=True, slots=True)
class Downtime:
    """A workload stopped on purpose (restarted from scratch) from ``t_from`` to ``t_to``."""

    workload: str
    t_from: float
    t_to: float


@dataclass(frozen=True, slots=True)
class Credential:
    """What a revocation can cover: an SVID (serial, notBefore) or a JWT-SVID (jti, iat)."""

    spiffe_id: str
    serial: str = ""
    not_before: float | None = None
    jti: str = ""
    iat: float | None = None

    def issued_at(self, backdate: float) -> float | None:
        if self.jti:
            return self.iat
        return None if self.not_before is None else self.not_before + backdate


def _norm(serial: str) -> str:
    return serial.lower().lstrip("0") or "0"


def covers(r: Revocation, cred: Credential, at: float, *, backdate: float, strict: bool) -> bool:
    """Whether ``r`` covers ``cred`` at time ``at`` (see the module docstring)."""
    if at < r.t_start:
        return False
    if r.kind == "serial":
        return bool(cred.serial) and _norm(cred.serial) == _norm(r.value)
    if r.kind == "jti":
        return bool(cred.jti) and cred.jti == r.value
    if r.kind == "agent":
        return cred.spiffe_id in r.covers_ids
    if r.kind == "spiffe_id":
        if cred.spiffe_id != r.value:
            return False
        issued = cred.issued_at(backdate)
        if issued is None:
            return not strict
        return issued < (r.t_start - 1.0 if strict else r.t_done + 1.0)
    return False


class RevocationIndex:
    """The run's revocations, looked up by serial, jti and SPIFFE ID."""

    def __init__(self, revocations: Iterable[Revocation]) -> None:
        self.all = tuple(revocations)
        self._serial: dict[str, list[Revocation]] = defaultdict(list)
        self._jti: dict[str, list[Revocation]] = defaultdict(list)
        self._by_id: dict[str, list[Revocation]] = defaultdict(list)
        for r in self.all:
            if r.kind == "serial":
                self._serial[_norm(r.value)].append(r)
            elif r.kind == "jti":
                self._jti[r.value].append(r)
            elif r.kind == "spiffe_id":
                self._by_id[r.value].append(r)
            else:
                for sid in r.covers_ids:
                    self._by_id[sid].append(r)

    def candidates(self, cred: Credential) -> Iterable[Revocation]:
        if cred.serial:
            yield from self._serial.get(_norm(cred.serial), ())
        if cred.jti:
            yield from self._jti.get(cred.jti, ())
        yield from self._by_id.get(cred.spiffe_id, ())

    def covered_by(
        self, cred: Credential, at: float, *, backdate: float, strict: bool
    ) -> Revocation | None:
        for r in self.candidates(cred):
            if covers(r, cred, at, backdate=backdate, strict=strict):
                return r
        return None


def credential_of(verdict: Mapping[str, Any]) -> Credential:
    """The credential a verdict is about."""
    if verdict.get("kind") == "jwt":
        iat = verdict.get("iat")
        return Credential(str(verdict.get("peer") or ""), jti=str(verdict.get("jti") or ""),
                          iat=float(iat) if isinstance(iat, int | float) else None)  # fmt: skip
    nb = verdict.get("nb")
    return Credential(str(verdict.get("peer") or ""), serial=str(verdict.get("serial") or ""),
                      not_before=float(nb) if isinstance(nb, int | float) else None)  # fmt: skip


class _Index:
    """Verdicts by (workload, side, kind, peer key), sorted by time, for window look-ups."""

    def __init__(self, verdicts: Iterable[Mapping[str, Any]]) -> None:
        self._by: dict[tuple[str, ...], tuple[list[float], list[Mapping[str, Any]]]] = {}
        grouped: dict[tuple[str, ...], list[Mapping[str, Any]]] = defaultdict(list)
        for v in verdicts:
            key = str(v.get("jti") or "") if v.get("kind") == "jwt" else str(v.get("peer") or "")
            grouped[(str(v["w"]), str(v["side"]), str(v["kind"]), key)].append(v)
        for k, vs in grouped.items():
            vs.sort(key=lambda v: float(v["t"]))
            self._by[k] = ([float(v["t"]) for v in vs], vs)

    def window(self, key: tuple[str, ...], t0: float, t1: float) -> list[Mapping[str, Any]]:
        times, vs = self._by.get(key, ([], []))
        lo = bisect.bisect_left(times, t0 - SLACK)
        hi = bisect.bisect_right(times, t1 + SLACK)
        return vs[lo:hi]


@dataclass(slots=True)
class CallTally:
    """The calls of a run, by class."""

    attempted: int = 0  # legitimate calls
    ok: int = 0
    failed: int = 0
    expected_refusals: int = 0
    banned_agent_calls: int = 0  # from or to the revoked agent's workload, after its revocation
    accepted_while_revoked: int = 0  # ok on a revoked credential (past the bound: see latencies)
    planned_downtime: int = 0  # calls to a workload stopped on purpose (connection refused)
    outside_window: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first few, in full
    failure_causes: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "legitimate_attempted": self.attempted,
            "legitimate_ok": self.ok,
            "legitimate_failed": self.failed,
            "expected_refusals": self.expected_refusals,
            "banned_agent_workload_calls": self.banned_agent_calls,
            "accepted_while_revoked": self.accepted_while_revoked,
            "planned_downtime": self.planned_downtime,
            "by_kind": dict(self.by_kind),
            "failure_causes": dict(self.failure_causes.most_common(20)),
            "failures_sample": self.failures[:20],
        }


def classify(
    records: Sequence[Mapping[str, Any]],
    revocations: Sequence[Revocation],
    *,
    ids: Mapping[str, str],
    window: tuple[float, float],
    downtime: Sequence[Downtime] = (),
    backdate: float,
) -> CallTally:
    """Count every call of the run (see the module docstring); ``ids``: workload -> SPIFFE ID."""
    verdicts = [r for r in records if r.get("k") == "verdict"]
    index = _Index(verdicts)
    revoked = RevocationIndex(revocations)
    own_nb: dict[tuple[str, str], float] = {}
    for r in records:
        if r.get("k") == "svid":
            own_nb[(str(r["w"]), _norm(str(r["serial"])))] = float(r["nb"])
    tally = CallTally()
    for call in records:
        if call.get("k") != "call":
            continue
        t0, t1 = float(call["t0"]), float(call["t"])
        if t0 < window[0] or t0 > window[1]:
            tally.outside_window += 1
            continue
        _classify_one(call, t0, t1, index, revoked, ids, downtime, own_nb, backdate, tally)
    return tally


def _classify_one(
    call: Mapping[str, Any], t0: float, t1: float, index: _Index,
    revoked: RevocationIndex, ids: Mapping[str, str], downtime: Sequence[Downtime],
    own_nb: Mapping[tuple[str, str], float], backdate: float, tally: CallTally,
) -> None:  # fmt: skip
    caller, server, kind = str(call["w"]), str(call["to"]), str(call["kind"])
    caller_id, server_id = ids.get(caller, ""), ids.get(server, "")
    creds: list[tuple[Credential, float, bool | None]] = []  # (credential, when, accepted?)
    if kind == "jwt":
        jti = str(call.get("jti") or "")
        for v in index.window((server, "server", "jwt", jti), t0, t1):
            creds.append((credential_of(v), float(v["t"]), bool(v["ok"])))
        if not creds and jti:
            iat = call.get("iat")
            cred = Credential(caller_id, jti=jti, iat=float(iat) if iat is not None else None)
            creds.append((cred, t1, None))
    else:
        for v in index.window((server, "server", "x509", caller_id), t0, t1):
            creds.append((credential_of(v), float(v["t"]), bool(v["ok"])))
        for v in index.window((caller, "client", "x509", server_id), t0, t1):
            creds.append((credential_of(v), float(v["t"]), bool(v["ok"])))
        if not any(c.spiffe_id == caller_id for c, _, _ in creds) and call.get("probe"):
            serial = str(call.get("serial") or "")  # a probe presents exactly this SVID
            nb = own_nb.get((caller, _norm(serial)))
            creds.append((Credential(caller_id, serial=serial, not_before=nb), t1, None))
    tally.by_kind[kind] += 1
    if call.get("ok"):
        if any(revoked.covered_by(c, at, backdate=backdate, strict=True) for c, at, _ in creds):
            tally.accepted_while_revoked += 1
            return
        tally.attempted += 1
        tally.ok += 1
        return
    error = str(call.get("error") or "")
    if "Connect call failed" in error and any(
        d.workload == server and d.t_from <= t0 <= d.t_to for d in downtime
    ):
        tally.planned_downtime += 1
        return
    refused = [(c, at) for c, at, accepted in creds if accepted is not True]
    if any(revoked.covered_by(c, at, backdate=backdate, strict=False) for c, at in refused):
        tally.expected_refusals += 1
        return
    banned = (Credential(caller_id), Credential(server_id))
    if any(r.kind == "agent" and t0 >= r.t_start for c in banned for r in revoked.candidates(c)):
        tally.banned_agent_calls += 1  # the banned agent's workload has no valid identity left
        return
    tally.attempted += 1
    tally.failed += 1
    reasons = sorted({str(v) for v in _reasons(index, call, caller_id, server_id, t0, t1)})
    cause = f"{kind}: " + (",".join(reasons) if reasons else _short(error or call.get("reason")))
    tally.failure_causes[cause] += 1
    if len(tally.failures) < 50:
        tally.failures.append({**call, "verdict_reasons": reasons})


def _reasons(
    index: _Index, call: Mapping[str, Any], caller_id: str, server_id: str, t0: float, t1: float
) -> Iterable[object]:
    caller, server = str(call["w"]), str(call["to"])
    if call["kind"] == "jwt":
        keys = [(server, "server", "jwt", str(call.get("jti") or ""))]
    else:
        keys = [(server, "server", "x509", caller_id), (caller, "client", "x509", server_id),
                (caller, "client", "x509", "")]  # fmt: skip
    for key in keys:
        for v in index.window(key, t0, t1):
            if not v.get("ok"):
                yield f"{key[1]} refused: {v.get('reason')}"


def _short(text: object) -> str:
    s = str(text or "no verdict")
    for cut in (" [", " ssl:", "("):
        s = s.split(cut, maxsplit=1)[0]
    return s[:80]


# -- revocation latencies ---------------------------------------------------------------------


def _path_of(verdict: Mapping[str, Any]) -> str:
    return "jwt" if verdict.get("kind") == "jwt" else str(verdict.get("path"))


@dataclass(slots=True)
class PathLatency:
    first_refusal: list[float] = field(default_factory=list)  # seconds after revoke returned
    last_acceptance: list[float] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)  # acceptances past the bound
    not_presented: int = 0  # revocations whose credential no verifier of this path saw after

    def to_json(self) -> dict[str, Any]:
        return {
            "revocations_observed": len(self.first_refusal),
            "first_refusal_p50_s": percentile(self.first_refusal, 50),
            "first_refusal_p99_s": percentile(self.first_refusal, 99),
            "first_refusal_max_s": max(self.first_refusal, default=None),
            "last_acceptance_p50_s": percentile(self.last_acceptance, 50),
            "last_acceptance_p99_s": percentile(self.last_acceptance, 99),
            "last_acceptance_max_s": max(self.last_acceptance, default=None),
            "late_acceptances": len(self.late),
            "late_sample": self.late[:10],
        }


def revocation_latencies(
    records: Sequence[Mapping[str, Any]],
    revocations: Sequence[Revocation],
    *,
    bounds: Mapping[str, float],
    backdate: float,
    until: float,
    horizon: float = 90.0,
) -> dict[str, PathLatency]:
    """Per path (crl, etcd, ca, jwt): for each revocation, the first refusal and the last
    acceptance of a credential it covers, in seconds after ``revoke`` returned (a refusal may
    come before it returns: the record is live once written); acceptances past the bound.

    A covered credential expires within ``horizon`` seconds of its revocation, so only verdicts
    about the covered SPIFFE IDs (``Revocation.covers_ids``) in that span are read."""
    out: dict[str, PathLatency] = defaultdict(PathLatency)
    by_peer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for v in records:
        if v.get("k") == "verdict" and float(v["t"]) <= until:
            by_peer[str(v.get("peer") or "")].append(v)
    times: dict[str, list[float]] = {}
    for peer, vs in by_peer.items():
        vs.sort(key=lambda v: float(v["t"]))
        times[peer] = [float(v["t"]) for v in vs]
    for r in revocations:
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for peer in r.covers_ids:
            lo = bisect.bisect_left(times.get(peer, []), r.t_start)
            hi = bisect.bisect_right(times.get(peer, []), r.t_done + horizon)
            for v in by_peer.get(peer, [])[lo:hi]:
                _observe(r, v, first, last, out, bounds, backdate)
        for path in bounds:
            if path in first:
                out[path].first_refusal.append(round(first[path] - r.t_done, 4))
                out[path].last_acceptance.append(round(last.get(path, r.t_start) - r.t_done, 4))
            elif path in last:
                out[path].last_acceptance.append(round(last[path] - r.t_done, 4))
    return dict(out)


def _observe(
    r: Revocation, v: Mapping[str, Any], first: dict[str, float], last: dict[str, float],
    out: dict[str, PathLatency], bounds: Mapping[str, float], backdate: float,
) -> None:  # fmt: skip
    t = float(v["t"])
    path = _path_of(v)
    if path not in bounds:
        return
    cred = credential_of(v)
    if v.get("ok"):
        if covers(r, cred, t, backdate=backdate, strict=True):
            last[path] = max(last.get(path, t), t)
            if t > r.t_done + bounds[path]:
                out[path].late.append(
                    {"revocation": f"{r.kind} {r.value}", "after_s": round(t - r.t_done, 3), **v}
                )
    elif covers(r, cred, t, backdate=backdate, strict=False):
        first[path] = min(first.get(path, t), t)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile (nearest rank), None when there are no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank] if pct != 50 else statistics.median(ordered)
