"""The fleet figure: entry-change fan-out latency and CPU per entry change against the registry
size, one line per CA replica count (``python -m bench.fleet_plot RUN/fleet.json``; the fleet
benchmark draws it after a full run). Written to bench/plots/fleet_entry_changes.png."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

PLOT = Path(__file__).resolve().parent / "plots" / "fleet_entry_changes.png"


def _mean(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def series(m: dict[str, Any]) -> dict[int, list[tuple[int, float, float, float]]]:
    """Per replica count: (registry size, p50 s, p99 s, CPU s per change, mean over replicas)
    sorted by size."""
    out: dict[int, list[tuple[int, float, float, float]]] = {}
    for c in m["configs"]:
        p50, p99, _n = c["changes"]["latency"]
        cpu = _mean(c["changes"]["cpu_per_change"].values())
        out.setdefault(c["replicas"], []).append((c["size"], p50, p99, cpu))
    return {k: sorted(v) for k, v in sorted(out.items())}


def draw(m: dict[str, Any], path: Path = PLOT) -> Path:
    import matplotlib  # noqa: PLC0415  (the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    for replicas, points in series(m).items():
        sizes = [p[0] for p in points]
        lat.plot(sizes, [p[1] * 1000 for p in points], "o-", label=f"{replicas} replica(s) p50")
        lat.plot(sizes, [p[2] * 1000 for p in points], "x--", label=f"{replicas} replica(s) p99")
        # A cost below 0 is noise (idle and renewals subtracted from the reading): left out.
        costs = [p[3] * 1000 if p[3] >= 0 else math.nan for p in points]
        cpu.plot(sizes, costs, "o-", label=f"{replicas} replica(s)")
    for ax in (lat, cpu):
        ax.set_xscale("log")
        ax.set_xlabel("registry entries")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    lat.set_ylabel("entry change -> agent holds it (ms)")
    lat.set_title("Entry-change fan-out latency")
    cpu.set_ylabel("CA CPU per entry change (ms, mean over replicas)")
    cpu.set_title("CPU per entry change (below the noise: left out)")
    commit = m.get("commit", "")
    fig.suptitle(
        f"Fleet: {m['shape']['agents']} simulated agents" + (f", commit {commit}" if commit else "")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.fleet_plot RUN_DIR/fleet.json", file=sys.stderr)
        return 2
    try:
        m = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the fleet figures {argv[0]}: {exc}", file=sys.stderr)
        return 2
    print(draw(m))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
