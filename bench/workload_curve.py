"""Workload API latency against concurrency, and the server's CPU per call, beside alternatives.

``python -m bench.workload_curve [--quick] [--runs 3] [--kinds s2s,plain,...] [--save FILE.json]
[--load FILE.json] [--plot PNG]``

Kinds (each server in its own process, the clients in this one, as ``bench.workload_api``):

* ``s2s``: ``WorkloadApiServer`` (front proxy, SO_PEERCRED, attestation, a static provider);
* ``s2s-noattest``: the same server with an attestor that looks at nothing: what the front proxy
  and the gRPC call frame cost without attestation (a diagnostic, never a product setting);
* ``plain``: a bare grpc.aio server sending the same bytes, pre-built (the baseline);
* ``grpclib``: a bare grpclib server sending the same bytes (only if grpclib is installed);
* ``plain-proxy``: the bare grpc.aio server behind the agent's front proxy (no attestation): the
  proxy's own cost (a diagnostic);
* ``s2s-before`` (with ``--before-tree DIR``): the ``s2s`` server of another checkout (the code
  before a change), measured in the same runs.

Each run starts every kind's server, then measures every (call, concurrency) point on each kind
in turn, so the kinds share the machine's conditions. Per point: p50 and p99 latency (channel
already connected, one connection per client) and the server process's CPU time (user + system,
all its threads) per call. The medians of the runs are printed as Markdown; ``--plot`` draws p50
and p99 and the CPU per call against concurrency (matplotlib, the ``bench`` extra), with the s2s
CPU of an earlier ``--save`` (``--before``, e.g. the code before a change) dashed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench._harness import percentiles
from bench.workload_api import (
    _call_x509,
    _jwt_caller,
    _jwt_request,
    _measure,
    _Server,
    server_cpu_seconds,
)

CLIENTS = (1, 3, 10, 30, 100)
CALLS = ("FetchX509SVID", "FetchJWTSVID")
Point = dict[str, float]  # p50_ms, p99_ms, cpu_us


def _calls_per_client(clients: int, quick: bool) -> int:
    total = 200 if quick else 1500
    return max(total // clients, 3)


BEFORE = "s2s-before"  # the s2s server run from --before-tree


def measure_run(kinds: list[str], quick: bool, before_tree: str | None = None) -> dict[str, Point]:
    servers = {
        kind: _Server("s2s", before_tree) if kind == BEFORE else _Server(kind) for kind in kinds
    }
    callers = {"FetchX509SVID": _call_x509, "FetchJWTSVID": _jwt_caller(_jwt_request())}
    out: dict[str, Point] = {}
    try:
        for call in CALLS:
            for clients in CLIENTS:
                for kind, srv in servers.items():
                    n = _calls_per_client(clients, quick)
                    cpu0 = server_cpu_seconds(srv.proc.pid)
                    samples = asyncio.run(_measure(srv.path, callers[call], clients, n))
                    cpu = server_cpu_seconds(srv.proc.pid) - cpu0
                    # The warm-up calls (one per client) are in the CPU time too.
                    per_call = cpu / (len(samples) + clients)
                    p50, p99 = percentiles(samples, 50, 99)
                    out[f"{call}/{clients}/{kind}"] = {
                        "p50_ms": p50 * 1e3,
                        "p99_ms": p99 * 1e3,
                        "cpu_us": per_call * 1e6,
                    }
    finally:
        for srv in servers.values():
            srv.close()
    return out


def interleaved(
    kinds: list[str], points: list[str], rounds: int, before_tree: str | None = None
) -> str:
    """Server CPU per call at a few points (``FetchJWTSVID/100``), the kinds measured in turn in
    each of ``rounds`` rounds (order rotated every round), so that each round's ratios to
    ``plain`` share the machine's conditions; Markdown with the medians of the rounds."""
    servers = {
        kind: _Server("s2s", before_tree) if kind == BEFORE else _Server(kind) for kind in kinds
    }
    callers = {"FetchX509SVID": _call_x509, "FetchJWTSVID": _jwt_caller(_jwt_request())}
    cpu: dict[str, dict[str, list[float]]] = {p: {k: [] for k in kinds} for p in points}
    try:
        for r in range(rounds):
            for point in points:
                call, clients = point.split("/")
                order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
                for kind in order:
                    srv = servers[kind]
                    n = _calls_per_client(int(clients), quick=False)
                    cpu0 = server_cpu_seconds(srv.proc.pid)
                    samples = asyncio.run(_measure(srv.path, callers[call], int(clients), n))
                    used = server_cpu_seconds(srv.proc.pid) - cpu0
                    cpu[point][kind].append(used / (len(samples) + int(clients)) * 1e6)
    finally:
        for srv in servers.values():
            srv.close()
    head = " | ".join(f"{k} us/call" for k in kinds)
    ratio_head = " | ".join(f"{k} / plain" for k in kinds if k != "plain")
    lines = [f"| point | {head} | {ratio_head} |", "|---" * (2 * len(kinds)) + "|"]
    for point in points:
        med = [f"{statistics.median(cpu[point][k]):.0f}" for k in kinds]
        base = cpu[point]["plain"]
        ratios = [
            f"{statistics.median(a / b for a, b in zip(cpu[point][k], base, strict=True)):.2f}"
            for k in kinds
            if k != "plain"
        ]
        lines.append(f"| {point} | {' | '.join(med)} | {' | '.join(ratios)} |")
    return f"{rounds} rounds, medians\n" + "\n".join(lines)


def medians(runs: list[dict[str, Point]]) -> dict[str, Point]:
    keys = runs[0].keys()
    return {
        k: {m: statistics.median(r[k][m] for r in runs) for m in runs[0][k]}
        for k in keys
        if all(k in r for r in runs)
    }


def cpu_ratio(runs: list[dict[str, Point]], kind: str, base: str, point: str) -> float | None:
    """Median over the runs of each run's CPU per call of ``kind`` over ``base`` at ``point``."""
    ratios = [
        r[f"{point}/{kind}"]["cpu_us"] / r[f"{point}/{base}"]["cpu_us"]
        for r in runs
        if f"{point}/{kind}" in r and f"{point}/{base}" in r
    ]
    return statistics.median(ratios) if ratios else None


def table(runs: list[dict[str, Point]], kinds: list[str]) -> str:
    med = medians(runs)
    head = " | ".join(f"{k} p50 / p99 ms, CPU us/call" for k in kinds)
    cpu_kinds = [k for k in ("s2s", BEFORE) if k in kinds and "plain" in kinds]
    cpu_head = "".join(f" {k} / plain CPU (median of run ratios) |" for k in cpu_kinds)
    lines = [
        f"| call | clients | {head} | s2s / plain p50, p99 |{cpu_head}",
        "|---" * (len(kinds) + 3 + len(cpu_kinds)) + "|",
    ]
    for call in CALLS:
        for clients in CLIENTS:
            cells = []
            for kind in kinds:
                p = med.get(f"{call}/{clients}/{kind}")
                cells.append(
                    f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}, {p['cpu_us']:.0f}" if p else "-"
                )
            s2s, plain = med.get(f"{call}/{clients}/s2s"), med.get(f"{call}/{clients}/plain")
            ratio = (
                f"{s2s['p50_ms'] / plain['p50_ms']:.2f}, {s2s['p99_ms'] / plain['p99_ms']:.2f}"
                if s2s and plain
                else "-"
            )
            for kind in cpu_kinds:
                r = cpu_ratio(runs, kind, "plain", f"{call}/{clients}")
                cells_r = f"{r:.2f}" if r is not None else "-"
                ratio += f" | {cells_r}"
            lines.append(f"| {call} | {clients} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def plot(
    runs: list[dict[str, Point]],
    kinds: list[str],
    png: Path,
    before: list[dict[str, Point]] | None = None,
) -> None:
    import matplotlib  # noqa: PLC0415 (the bench extra; nothing else needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    med = medians(runs)
    colors = {
        "s2s": "#3366aa",
        BEFORE: "#222222",
        "s2s-noattest": "#88aadd",
        "plain": "#aa3333",
        "plain-proxy": "#dd8888",
        "grpclib": "#33aa66",
    }
    fig, axes = plt.subplots(1, len(CALLS) + 1, figsize=(19, 5.5))
    cpu_ax = axes[-1]
    for call, marker in zip(CALLS, ("o", "s"), strict=True):
        for kind in kinds:
            xs = [c for c in CLIENTS if f"{call}/{c}/{kind}" in med]
            ys = [med[f"{call}/{c}/{kind}"]["cpu_us"] for c in xs]
            cpu_ax.plot(xs, ys, "-", marker=marker, color=colors.get(kind, "gray"),
                        label=f"{kind}, {call}")  # fmt: skip
        if before:
            old = medians(before)
            xs = [c for c in CLIENTS if f"{call}/{c}/s2s" in old]
            ys = [old[f"{call}/{c}/s2s"]["cpu_us"] for c in xs]
            cpu_ax.plot(xs, ys, "--", marker=marker, color="black",
                        label=f"s2s before, {call}")  # fmt: skip
    cpu_ax.set_xscale("log")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_xlabel("concurrent clients (one connection each)")
    cpu_ax.set_ylabel("server CPU per call, us (all its threads)")
    cpu_ax.set_title("server CPU per call")
    cpu_ax.legend(fontsize=7)
    for ax, call in zip(axes[:-1], CALLS, strict=True):
        for kind in kinds:
            xs = [c for c in CLIENTS if f"{call}/{c}/{kind}" in med]
            for metric, style in (("p50_ms", "-"), ("p99_ms", ":")):
                ys = [med[f"{call}/{c}/{kind}"][metric] for c in xs]
                label = f"{kind} {metric.removesuffix('_ms')}"
                ax.plot(xs, ys, style, marker="o", color=colors.get(kind, "gray"), label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients (one connection each)")
        ax.set_ylabel("latency per call, ms")
        ax.set_title(f"{call}, median of {len(runs)} runs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="s2s,s2s-noattest,plain,grpclib")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--load", type=Path, help="print/plot saved results instead of measuring")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--before", type=Path, help="a saved run of earlier code (drawn dashed)")
    parser.add_argument(
        "--before-tree",
        help="a checkout of earlier code (git archive <commit> | tar -x -C DIR): its s2s server "
        "is measured in the same runs as the kind s2s-before",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        metavar="ROUNDS",
        help="only the server CPU per call at --points, the kinds in turn in each round",
    )
    parser.add_argument("--points", default="FetchX509SVID/10,FetchJWTSVID/100")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k != "grpclib" or _has_grpclib()]
    if args.before_tree and BEFORE not in kinds:
        kinds.insert(1, BEFORE)
    if args.interleave:
        if "plain" not in kinds:
            parser.error("--interleave needs the plain kind (the ratios' baseline)")
        print(interleaved(kinds, args.points.split(","), args.interleave, args.before_tree))
        return 0
    runs: list[dict[str, Any]]
    if args.load:
        saved = json.loads(args.load.read_text())
        runs, kinds = saved["runs"], saved["kinds"]
    else:
        runs = []
        for i in range(args.runs):
            start = time.monotonic()
            runs.append(measure_run(kinds, args.quick, args.before_tree))
            print(f"run {i + 1}: {time.monotonic() - start:.0f} s", flush=True)
    if args.save:
        args.save.write_text(json.dumps({"kinds": kinds, "runs": runs}, indent=1))
    print(table(runs, kinds))
    if args.plot:
        before = json.loads(args.before.read_text())["runs"] if args.before else None
        plot(runs, kinds, args.plot, before)
    return 0


def _has_grpclib() -> bool:
    try:
        import grpclib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
