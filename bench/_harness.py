"""The benchmark harness: every figure is printed beside a baseline measured in the same run.

A benchmark module defines ``def run(quick: bool) -> list[Figure]`` and is listed in
``bench/__main__.py``. Figures are medians over ``repeats`` runs; the machine is shared and noisy.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Figure", "median_rate", "percentiles", "pinned", "time_per_op"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure and the baseline it is compared with.

    ``higher_is_better`` says how to read the ratio (rates: True; latencies: False).
    """

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")


def time_per_op(
    fn: Callable[[], object],
    *,
    min_time: float = 0.2,
    repeats: int = 5,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of at least ``min_time`` each.

    ``timer=time.thread_time`` measures CPU time instead of wall time: on a shared machine the
    time slices other processes take are then not charged to the code under test.
    """
    n = 1
    while True:
        start = timer()
        for _ in range(n):
            fn()
        elapsed = timer() - start
        if elapsed >= min_time / 4:
            break
        n *= 4
    per_run = max(1, int(n * min_time / max(elapsed, 1e-9)))
    samples = []
    for _ in range(repeats):
        start = timer()
        for _ in range(per_run):
            fn()
        samples.append((timer() - start) / per_run)
    return statistics.median(samples)


def median_rate(fn: Callable[[], object], **kwargs: float) -> float:
    """Median operations per second of ``fn``."""
    return 1.0 / time_per_op(fn, **kwargs)  # type: ignore[arg-type]


def percentiles(samples: list[float], *points: float) -> list[float]:
    """Percentiles (0-100) of ``samples`` by nearest rank."""
    ordered = sorted(samples)
    out = []
    for p in points:
        k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        out.append(ordered[k])
    return out


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run on one CPU if the machine has it (single-core figures), then restore the mask."""
    before = os.sched_getaffinity(0)
    if cpu in before:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
