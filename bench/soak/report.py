"""The soak's verdict: a JSON report (what CI asserts on) and a readable summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bench.soak.accounting import CallTally, PathLatency

__all__ = ["build_report", "summary"]


def _rotations(ca_events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    count: Counter[str] = Counter()
    for e in ca_events:
        event = e.get("event")
        if event == "authority.activated":
            kind = str(e.get("kind", "?"))
            count["jwt_key_activated" if kind == "jwt" else "intermediate_activated"] += 1
        elif event in ("root_rotation.activated", "root_rotation.retired"):
            count[str(event).split(".")[1] + "_root"] += 1
    return dict(count)


def build_report(
    *,
    plan: Any,
    tally: CallTally,
    latencies: Mapping[str, PathLatency],
    bounds: Mapping[str, float],
    scenario: Any,
    ca_events: Sequence[Mapping[str, Any]],
    workload_svids: Mapping[str, int],
    processes: Mapping[str, Any],
    wall_s: float,
    traffic_s: float,
    setup_error: str | None,
) -> dict[str, Any]:
    """Everything measured, and ``failures``: each reason the run did not pass."""
    rotations = _rotations(ca_events)
    revoked_kinds = Counter(r.kind for r in scenario.revocations) if scenario else Counter()
    roots = scenario.rotate_root if scenario else []
    failures: list[str] = []
    if setup_error:
        failures.append(f"setup: {setup_error}")
    if tally.failed:
        failures.append(f"{tally.failed} legitimate call(s) failed")
    if tally.attempted == 0:
        failures.append("no legitimate call was made")
    for path, lat in sorted(latencies.items()):
        if lat.late:
            failures.append(f"{len(lat.late)} acceptance(s) of revoked credentials past the "
                            f"{bounds[path]:g} s bound on the {path} path")  # fmt: skip
    if scenario is not None:
        failures += scenario.problems
        for kind in ("serial", "jti", "spiffe_id", "agent"):
            if not revoked_kinds.get(kind):
                failures.append(f"no revocation by {kind} was made")
        if not any(r.get("done") for r in roots):
            failures.append("no rotate-root reached [done]")
    if not rotations.get("intermediate_activated"):
        failures.append("no intermediate rotation was seen")
    failures += processes.get("crashed", [])
    if processes.get("left_behind"):
        failures.append(f"processes left behind: {processes['left_behind']}")
    return {
        "passed": not failures,
        "failures": failures,
        "plan": {
            "short": plan.short,
            "duration_s": plan.duration,
            "svid_ttl_s": plan.svid_ttl,
            "intermediate_ttl_s": plan.intermediate_ttl,
            "interval_s": plan.interval,
            "revoke_every_s": plan.revoke_every,
        },
        "wall_s": round(wall_s, 1),
        "traffic_s": round(traffic_s, 1),
        "calls": tally.to_json(),
        "revocations": {
            "count": dict(revoked_kinds),
            "log": [
                {
                    "kind": r.kind,
                    "value": r.value,
                    "target": r.target,
                    "t_start": round(r.t_start, 3),
                    "took_s": round(r.t_done - r.t_start, 3),
                }
                for r in (scenario.revocations if scenario else [])
            ],
            "bounds_s": dict(bounds),
            "by_path": {p: lat.to_json() for p, lat in sorted(latencies.items())},
        },
        "lifecycle": {
            "rotations": rotations,
            "workload_svids_seen": dict(workload_svids),
            "rotate_root": [
                {k: v for k, v in r.items() if k != "output"}
                | {"output_tail": str(r.get("output", ""))[-400:]}
                for r in roots
            ],
        },
        "faults": scenario.events if scenario else [],
        "revocations_skipped_during_outages": scenario.skipped_revocations if scenario else [],
        "persistence_checks": scenario.persistence_checks if scenario else 0,
        "processes": processes,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def summary(report: Mapping[str, Any]) -> str:
    """A few lines for people."""
    c = report["calls"]
    lines = [
        f"soak {'PASSED' if report['passed'] else 'FAILED'} "
        f"({report['traffic_s']:.0f} s of traffic, {report['wall_s']:.0f} s wall)",
        f"calls: legitimate {c['legitimate_attempted']}, failed {c['legitimate_failed']}; "
        f"expected refusals {c['expected_refusals']} (and {c['banned_agent_workload_calls']} "
        "from or to the revoked agent's workload); accepted on a revoked credential "
        f"{c['accepted_while_revoked']}; planned downtime {c['planned_downtime']}",
    ]
    r = report["revocations"]
    lines.append(f"revocations: {r['count']}")
    for path, p in r["by_path"].items():
        bound = r["bounds_s"].get(path, 0)
        lines.append(
            f"  {path:5} bound {bound:g} s: observed {p['revocations_observed']}, first refusal "
            f"p50 {_fmt(p['first_refusal_p50_s'])} p99 {_fmt(p['first_refusal_p99_s'])} s, "
            f"last acceptance p50 {_fmt(p['last_acceptance_p50_s'])} p99 "
            f"{_fmt(p['last_acceptance_p99_s'])} max {_fmt(p['last_acceptance_max_s'])} s, "
            f"late {p['late_acceptances']}"
        )
    life = report["lifecycle"]
    roots = ", ".join(f"done={x.get('done')} in {x.get('took_s')} s" for x in life["rotate_root"])
    lines.append(f"rotations: {life['rotations']}; rotate-root: {roots or 'none'}")
    lines.append("faults: " + ", ".join(f["event"] for f in report["faults"]))
    procs = report["processes"]
    lines.append(f"processes: {procs.get('started', 0)} started, left behind: "
                 f"{procs.get('left_behind') or 'none'}")  # fmt: skip
    for failure in report["failures"]:
        lines.append(f"FAILURE: {failure}")
    if c["failure_causes"]:
        lines.append(f"failure causes: {c['failure_causes']}")
    return "\n".join(lines)
