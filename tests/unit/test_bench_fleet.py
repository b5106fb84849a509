"""The fleet benchmark's pieces that need no fleet: Prometheus sums, /proc readings, the tables
and their section of RESULTS.md (replaced in place, appended when absent, other sections kept)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bench.fleet_report import HEADING, render, write_results
from bench.fleet_system import cpu_seconds, prom_sum, rss_mb

EXPOSITION = """# HELP grpc_server_handled_total x
grpc_server_handled_total{grpc_method="Range",grpc_code="OK"} 10
grpc_server_handled_total{grpc_method="Txn",grpc_code="OK"} 5
grpc_server_handled_total_other 99
s2s_ca_svids_issued_total{kind="x509"} 7.0
s2s_ca_svids_issued_total{kind="jwt"} 3.0
"""


def test_prom_sum_adds_matching_samples_only() -> None:
    assert prom_sum(EXPOSITION, "grpc_server_handled_total") == 15
    assert prom_sum(EXPOSITION, "s2s_ca_svids_issued_total", kind="x509") == 7
    assert prom_sum(EXPOSITION, "s2s_ca_svids_issued_total", kind="agent") == 0
    assert prom_sum(EXPOSITION, "absent") == 0


def test_proc_readings_of_this_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert 1 < rss_mb(os.getpid()) < 100_000


def _phase(**extra: Any) -> dict[str, Any]:
    base = {"seconds": 10.0, "cpu": {"ca-0": 1.0}, "x509": {"ca-0": 100.0},
            "jwt": {"ca-0": 5.0}, "fleet": {"renewals": 100, "expired": 0},
            "etcd_rps": 50.0, "etcd_bps": 4096.0}  # fmt: skip
    return {**base, **extra}


def _measured(failover: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "size": 1000, "replicas": 3 if failover else 1, "agents": 10, "live": 30,
        "fill_seconds": 4.0,
        "idle": {"ca-0": 0.01},
        "steady": _phase(cpu_per_renewal={"ca-0": 0.002}, cpu_per_renewal_all={"ca-0": 0.003},
                         rss_mb={"ca-0": 80.0}, batch=1.4),
        "changes": _phase(latency=(0.05, 0.2, 5), answers_per_change=10.0,
                          cpu_per_change={"ca-0": 0.004}),
        "revocations": _phase(latency=(0.06, 0.3, 50), to_all=(0.1, 0.3, 5),
                              cpu_per_revocation={"ca-0": math.nan}),
        "jwt": _phase(jwt_per_s=2.0),
        "fleet_total": {"expired": 0, "entry_answers": 40, "entry_deltas": 30,
                        "revocation_answers": 20, "revocation_deltas": 5, "crl_fetches": 50},
    }  # fmt: skip
    if failover:
        config["failover"] = {**_phase(), "killed": "ca-2"}
        config["after_changes"] = config["changes"]
        config["after_revocations"] = config["revocations"]
    return {
        "shape": {"agents": 10, "entries": 3, "ttl": 20, "processes": 2},
        "baseline": {"1": 0.0015},
        "configs": [config],
        "wall_seconds": 60.0,
        "quick": True,
        "date": "2030-01-01",
    }


def test_render_has_every_table_and_the_failover_row() -> None:
    text = render(_measured(failover=True))
    assert text.startswith(HEADING)
    assert "| 1,000 | 3 | ca-0 | 1.0 | 10.0 | 3.00 | 2.00 | 1.33 | 4.00 | - | 80 |" in text
    assert "| 1,000 | 3 | entry changes | 10 | 50 / 200 | 10 | - | - | 50 | 4 | 0 / 0 |" in text
    assert "| 1,000 | 3 | revocations | 10 | - | - | 60 / 300 (n=10) | 100 / 300 |" in text
    assert "| 1,000 | 3 | ca-2 | 100 | 0 | 0 | 2.0 |" in text
    assert "whole run: 0." in text
    without = render(_measured(failover=False))  # twin: one replica, no failover row
    assert "killed replica" not in without
    assert "| ca-2 |" not in without


def test_write_results_replaces_the_section_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## CA\n\nca figures\n")
    write_results(f"{HEADING}\n\nfirst\n", path)
    assert path.read_text() == f"# Results\n\n## CA\n\nca figures\n\n{HEADING}\n\nfirst\n"
    path.write_text(path.read_text() + "\n## Soak\n\nsoak figures\n")
    write_results(f"{HEADING}\n\nsecond\n", path)
    text = path.read_text()
    assert "first" not in text
    assert text.count(HEADING) == 1
    assert "ca figures" in text
    assert text.endswith("## Soak\n\nsoak figures\n")


def test_growth_compares_the_smallest_and_largest_registry() -> None:
    measured = _measured(failover=False)
    large = json.loads(json.dumps(measured["configs"][0]))
    large["size"] = 10_000
    large["changes"]["cpu_per_change"] = {"ca-0": 0.04}
    measured["configs"].append(large)
    text = render(measured)
    assert "- 1 replica(s), registry 1,000 -> 10,000: CPU per entry change 4.00 -> 40.00" in text
    assert "(x10.0)" in text
    assert "Growth with the registry size" not in render(_measured(failover=False))  # one size
