"""The fleet simulator as a user runs it: ``python -m bench.fleet --smoke`` (and ``--faults
--smoke``) as a subprocess on a real 3-member etcd and real CA replicas, judged by the tables
it prints and the JSON figures it keeps; its twins: bad arguments are usage errors, not
tracebacks, and RESULTS.md is left alone with ``--no-write``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE_LIMIT = 90.0  # the smoke form: under a minute on a quiet machine (this one is shared)
FAULTS_LIMIT = 180.0


def _run(tmp: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    # The run's sockets go under --dir: pytest's own temp paths are too long for them.
    where = [] if "--dir" in args else ["--dir", str(tmp / "run")]
    argv = [sys.executable, "-m", "bench.fleet", *args, "--no-write", *where]
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done, time.monotonic() - started


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp directory with a short path (Unix socket paths are at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def smoke() -> Iterator[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done, wall = _run(tmp, "--smoke", timeout=SMOKE_LIMIT + 120)
    figures = tmp / "run" / "fleet.json"
    assert figures.exists(), f"no figures (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    unchanged = (ROOT / "bench" / "RESULTS.md").read_bytes() == results
    yield {"done": done, "wall": wall, "m": json.loads(figures.read_text()),
           "results_unchanged": unchanged}  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_LIMIT + 180)
def test_smoke_prints_every_table_with_no_expired_svid(smoke: dict[str, Any]) -> None:
    done, m = smoke["done"], smoke["m"]
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert smoke["wall"] < SMOKE_LIMIT, out
    assert "| 200 | 1 | ca-0 |" in out  # the cost row of the one replica
    for phase in ("steady", "entry changes", "revocations"):
        assert f"| 200 | 1 | {phase} |" in out
    assert "SVIDs expired before their replacement, whole run: 0." in out
    (config,) = m["configs"]
    total = config["fleet_total"]
    assert total["expired"] == 0
    assert total["crashed"] == 0
    assert total["ready"] == 6
    assert total["renewals"] > 6  # renewed at half-life, beyond the first issue
    assert config["changes"]["missed"] == 0
    assert config["revocations"]["delivered"] == "18/18"  # 3 revocations x 6 subscribers
    # The simulated agents ask as the real agent does: deltas once synced.
    assert total["entry_deltas"] > 0
    assert total["revocation_deltas"] > 0
    assert smoke["results_unchanged"]  # --no-write


@pytest.mark.slow
@pytest.mark.timeout(FAULTS_LIMIT + 180)
def test_faults_smoke_brings_every_agent_back_and_loses_nothing(short_tmp: Path) -> None:
    done, _wall = _run(short_tmp, "--faults", "--smoke", timeout=FAULTS_LIMIT + 120)
    figures = short_tmp / "run" / "fleet-faults.json"
    assert figures.exists(), f"no figures (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, done.stderr
    (config,) = json.loads(figures.read_text())["configs"]
    herd = config["herd"]
    assert herd["back"] == herd["agents"] == 6
    assert herd["expired"] == 0
    assert herd["peak_connections"] < herd["limits"]["max_connections"]
    delays = [d["delay_ms"] for d in config["slow"]]
    assert delays == [0, 5, 20, 50]
    for d in config["slow"]:
        assert d["changes_missed"] == 0, d
        assert d["expired"] == 0, d
        assert d["issue"][2] > 0, d  # renewals happened under every delay
    # The delay shows: a round trip to etcd costs 2 x 50 ms more at the last step.
    assert config["slow"][-1]["issue"][0] > config["slow"][0]["issue"][0] + 0.1
    assert "| 50 |" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "1000,abc"], "'abc' is not a whole number above 0"),
        (["--replicas", "0"], "'0' is not a whole number above 0"),
        (["--agents", "-3"], "'-3' is not a whole number above 0"),
        (["--ttl", "2"], "--ttl must be at least 6 seconds"),
        (["--dir", "/tmp/" + "d" * 80], "--dir must be at most"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done, _wall = _run(tmp_path, *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything started
