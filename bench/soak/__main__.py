"""``python -m bench.soak [--duration S] [--short] [--dir D] [--report FILE]`` (``make soak``).

Exit codes: 0 passed, 1 failed (see the report's ``failures``), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.soak.accounting import classify, revocation_latencies
from bench.soak.plan import BOUNDS, Plan, long_plan, short_plan
from bench.soak.report import build_report, summary
from bench.soak.scenario import Scenario
from bench.soak.system import RUN_MARKER, SoakFailed, System, leftovers, pid_alive
from s2s.ca.config import DEFAULT_BACKDATE
from s2s.core.errors import S2SError

DEFAULT_DURATION = 1800.0
SETTLE = 3.0  # seconds of traffic kept out of the window at the start and the end


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


async def soak(plan: Plan, root: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex
    os.environ[RUN_MARKER] = run_id  # etcd members inherit it; leftovers() scans for it
    system = System(plan, root, run_id, say)
    scenario: Scenario | None = None
    started = time.time()
    t_begin = t_end = started
    error: str | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await system.start()
        t_begin = time.time()
        scenario = Scenario(system, plan, say)
        running = asyncio.create_task(scenario.run(t_begin))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not running.done():
            running.cancel()
            error = "interrupted"
        await asyncio.gather(running, return_exceptions=True)
        if running.done() and not running.cancelled() and running.exception() is not None:
            raise running.exception()  # type: ignore[misc]
    except (SoakFailed, S2SError, OSError, RuntimeError, ExceptionGroup) as exc:
        errors = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
        error = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        say(f"FAILED: {error}")
    finally:
        t_end = time.time()
        crashed = system.crashed(scenario.banned if scenario else set())
        say("stopping every process")
        codes = await system.shutdown()
    await asyncio.sleep(0.5)  # the kernel reaps the last children's own children
    pids = system.all_pids()
    alive = [p for p in pids if pid_alive(p)]
    left = [f"{pid} {cmd[:120]}" for pid, cmd in leftovers(run_id)]
    left += [
        f"{pid} (started by the run)"
        for pid in alive
        if not any(s.startswith(f"{pid} ") for s in left)
    ]
    window = (t_begin + SETTLE, t_end - SETTLE)
    backdate = DEFAULT_BACKDATE.total_seconds()
    ids = {w.name: system.spiffe_id(w.name) for w in plan.workloads}
    revocations = scenario.revocations if scenario else []
    say(f"classifying {len(system.records)} records")
    tally = classify(system.records, revocations, ids=ids, window=window,
                     downtime=scenario.downtime if scenario else (), backdate=backdate)  # fmt: skip
    latencies = revocation_latencies(system.records, revocations, bounds=BOUNDS,
                                     backdate=backdate, until=window[1])  # fmt: skip
    svids = Counter(str(r["w"]) for r in system.records if r.get("k") == "svid")
    processes = {
        "started": len(pids),
        "crashed": crashed,
        "exit_codes": codes,
        "restarts": {n: p.starts - 1 for n, p in system.procs.items() if p.starts > 1},
        "left_behind": left,
    }
    return build_report(
        plan=plan, tally=tally, latencies=latencies, bounds=BOUNDS, scenario=scenario,
        ca_events=system.ca_events, workload_svids=svids, processes=processes,
        wall_s=time.time() - started, traffic_s=max(0.0, t_end - t_begin), setup_error=error,
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, help=f"seconds of traffic [{DEFAULT_DURATION:g}]")
    parser.add_argument("--short", action="store_true", help="the CI form (about 4 minutes)")
    parser.add_argument("--dir", type=Path, help="working directory (default: a new one in /tmp)")
    parser.add_argument("--report", type=Path, help="JSON report (default: <dir>/report.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration < 60:
        parser.error("--duration must be at least 60 seconds")
    if os.geteuid() != 0:
        parser.error("the soak runs each workload under its own uid: run it as root")
    plan = short_plan() if args.short else long_plan(args.duration or DEFAULT_DURATION)
    if args.short and args.duration:
        parser.error("--short has its own duration")
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"{args.dir} is not empty (another run's?); pick a new --dir")
    root = args.dir or Path(tempfile.mkdtemp(prefix="s2s-soak-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # workloads of other uids reach the agent sockets below it
    say(f"soak: {'short form' if plan.short else 'long form'}, {plan.duration:g} s, in {root}")
    report = asyncio.run(soak(plan, root))
    path = args.report or root / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))
    print(f"report: {path}; logs: {root / 'logs'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
