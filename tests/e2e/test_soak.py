"""The soak's short form as a user runs it: ``python -m bench.soak --short`` as a subprocess,
judged by its JSON report (and its twins: the accounting counts what must fail as failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.soak.accounting import Downtime, Revocation, classify, revocation_latencies

ROOT = Path(__file__).resolve().parents[2]
WALL_LIMIT = 300.0  # the short form must stay under 5 minutes on a 2-core machine
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="the soak runs each workload under its own uid: needs root"
)


@pytest.fixture(scope="module")
def soak_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("soak")
    report = directory / "report.json"
    argv = [sys.executable, "-m", "bench.soak", "--short", "--dir", str(directory / "run"),
            "--report", str(report)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=WALL_LIMIT + 60, check=False
    )
    wall = time.monotonic() - started
    assert report.exists(), f"no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    data = json.loads(report.read_text())
    data["_exit_code"], data["_wall"], data["_stdout"] = done.returncode, wall, done.stdout
    return data


@ROOT_ONLY
@pytest.mark.slow
@pytest.mark.timeout(WALL_LIMIT + 120)
def test_short_soak_passes_with_no_failed_legitimate_call(soak_report: dict[str, Any]) -> None:
    summary = soak_report["_stdout"]
    assert soak_report["failures"] == [], summary
    assert soak_report["passed"] is True
    assert soak_report["_exit_code"] == 0, summary
    calls = soak_report["calls"]
    assert calls["legitimate_failed"] == 0, calls["failures_sample"]
    assert calls["legitimate_attempted"] > 2000, calls
    assert calls["by_kind"]["x509"] > 0 and calls["by_kind"]["jwt"] > 0  # noqa: PT018
    assert calls["expected_refusals"] > 0  # revoked credentials were presented, and refused
    assert soak_report["_wall"] < WALL_LIMIT, summary


@ROOT_ONLY
@pytest.mark.slow
@pytest.mark.timeout(WALL_LIMIT + 120)
def test_every_revocation_kind_is_refused_within_its_bound_on_every_path(
    soak_report: dict[str, Any],
) -> None:
    revocations = soak_report["revocations"]
    assert set(revocations["count"]) == {"serial", "jti", "spiffe_id", "agent"}, revocations
    for path in ("crl", "etcd", "ca", "jwt"):
        seen = revocations["by_path"][path]
        assert seen["revocations_observed"] > 0, (path, seen)
        assert seen["late_acceptances"] == 0, (path, seen["late_sample"])
        assert seen["first_refusal_p99_s"] <= revocations["bounds_s"][path], (path, seen)


@ROOT_ONLY
@pytest.mark.slow
@pytest.mark.timeout(WALL_LIMIT + 120)
def test_lifecycles_and_faults_are_crossed_and_nothing_is_left(
    soak_report: dict[str, Any],
) -> None:
    life = soak_report["lifecycle"]
    assert life["rotations"].get("intermediate_activated", 0) >= 1, life
    assert any(r["done"] for r in life["rotate_root"]), life["rotate_root"]
    faults = [f["event"] for f in soak_report["faults"]]
    assert {"kill-ca", "restart-ca", "rotate-root", "revoke-agent"} <= set(faults), faults
    assert soak_report["persistence_checks"] >= 1
    processes = soak_report["processes"]
    assert processes["left_behind"] == [], processes
    assert processes["started"] >= 13, processes


# -- the accounting's twins: what must count as a failure does -------------------------------

CLIENT, SERVER = "spiffe://t/w/client", "spiffe://t/w/server"
IDS = {"client": CLIENT, "server": SERVER}


def _call(t: float, ok: bool, **extra: Any) -> dict[str, Any]:
    return {"k": "call", "w": "client", "to": "server", "kind": "x509", "t0": t, "t": t + 0.1,
            "ok": ok, "serial": "aa", "probe": False, **extra}  # fmt: skip


def _verdict(t: float, ok: bool, serial: str = "aa", **extra: Any) -> dict[str, Any]:
    return {"k": "verdict", "w": "server", "side": "server", "kind": "x509", "path": "etcd",
            "t": t, "ok": ok, "peer": CLIENT, "serial": serial, "nb": t - 40, **extra}  # fmt: skip


def _classify(records: list[dict[str, Any]], revocations: list[Revocation]) -> Any:
    return classify(records, revocations, ids=IDS, window=(0, 1000), backdate=30)


def test_a_refusal_of_a_revoked_serial_is_expected() -> None:
    revoked = Revocation("serial", "AA", 100, 100.3, frozenset({CLIENT}))
    tally = _classify([_call(101, False), _verdict(101.05, False, reason="revoked")], [revoked])
    assert (tally.expected_refusals, tally.failed) == (1, 0)


def test_a_refusal_of_an_unrevoked_serial_is_a_failure() -> None:
    other = Revocation("serial", "bb", 100, 100.3, frozenset({CLIENT}))
    tally = _classify([_call(101, False), _verdict(101.05, False, reason="revoked")], [other])
    assert (tally.expected_refusals, tally.failed) == (0, 1)
    assert tally.failure_causes == {"x509: server refused: revoked": 1}


def test_a_refusal_before_the_revocation_is_a_failure() -> None:
    later = Revocation("serial", "aa", 200, 200.3, frozenset({CLIENT}))
    tally = _classify([_call(101, False), _verdict(101.05, False, reason="revoked")], [later])
    assert tally.failed == 1


def test_a_failed_call_without_a_verdict_counts_as_failed() -> None:
    revoked = Revocation("spiffe_id", CLIENT, 100, 100.3, frozenset({CLIENT}))
    tally = _classify([_call(101, False, error="ServerDisconnectedError")], [revoked])
    assert tally.failed == 1  # which SVID was presented is unknown: we want to see it


def test_an_id_revocation_covers_only_what_was_issued_before_it() -> None:
    revoked = Revocation("spiffe_id", CLIENT, 100, 100.3, frozenset({CLIENT}))
    old = _verdict(101.05, False, reason="revoked", nb=60)  # issued at 90
    new = _verdict(121.05, False, reason="revoked", nb=75, serial="bb")  # issued at 105
    tally = _classify([_call(101, False), old, _call(121, False), new], [revoked])
    assert (tally.expected_refusals, tally.failed) == (1, 1)


def test_calls_to_a_workload_stopped_on_purpose_are_not_failures_but_others_are() -> None:
    refused = "ClientConnectorError: Cannot connect [Connect call failed ('127.0.0.1', 1)]"
    records = [_call(101, False, error=refused), _call(131, False, error=refused)]
    tally = classify(records, [], ids=IDS, window=(0, 1000), backdate=30,
                     downtime=[Downtime("server", 100, 110)])  # fmt: skip
    assert (tally.planned_downtime, tally.failed) == (1, 1)


def test_calls_from_and_to_a_revoked_agents_workload_are_expected_refusals() -> None:
    banned = Revocation("agent", "spiffe://t/s2s/agent/x", 100, 100.3, frozenset({SERVER}))
    before, after = _call(99, False, error="Server disconnected"), _call(101, False, error="x")
    tally = _classify([before, after], [banned])
    assert (tally.banned_agent_calls, tally.failed) == (1, 1)


def test_an_acceptance_past_the_bound_is_late_and_one_within_is_not() -> None:
    revoked = Revocation("serial", "aa", 100, 100.3, frozenset({CLIENT}))
    records = [_verdict(101.0, True), _verdict(103.0, True), _verdict(103.5, False)]
    latency = revocation_latencies(records, [revoked], bounds={"etcd": 2.0}, backdate=30,
                                   until=1000)["etcd"]  # fmt: skip
    assert [v["t"] for v in latency.late] == [103.0]
    assert latency.first_refusal == [3.2]
    assert latency.last_acceptance == [2.7]


def test_bad_arguments_get_a_clear_error_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "5"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--duration must be at least 60 seconds" in done.stderr
    assert "Traceback" not in done.stderr
