"""The attestation pool: its own threads, a per-uid share, slots held until the thread is done."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from s2s.agent.attest_pool import AttestationPool
from s2s.core.errors import InvalidConfig, Unavailable

TIMEOUT = 10.0


class Gate:
    """A blocking job: records that it started, waits until opened."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.thread = ""

    def __call__(self) -> str:
        self.thread = threading.current_thread().name
        self.started.set()
        assert self.opened.wait(TIMEOUT), "the gate was never opened"
        return "done"


async def started(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.started.wait, TIMEOUT), "the job never started"


@pytest.fixture
async def pool() -> AsyncIterator[AttestationPool]:
    p = AttestationPool(workers=2, per_uid=1)
    yield p
    p.close()


async def test_a_busy_uid_leaves_threads_for_others(pool: AttestationPool) -> None:
    a1, a2 = Gate(), Gate()
    first = asyncio.create_task(pool.run(1000, a1))
    second = asyncio.create_task(pool.run(1000, a2))
    await started(a1)
    # uid 1000 holds its one slot; its second job waits, uid 1001 runs at once.
    assert await asyncio.wait_for(pool.run(1001, lambda: "other"), TIMEOUT) == "other"
    assert not a2.started.is_set()
    a1.opened.set()
    await started(a2)
    a2.opened.set()
    assert await asyncio.gather(first, second) == ["done", "done"]
    assert a1.thread.startswith("s2s-attest")
    assert a2.thread.startswith("s2s-attest")
    assert pool.busy == 0


async def test_a_cancelled_job_keeps_its_slot_until_its_thread_is_done(
    pool: AttestationPool,
) -> None:
    slow, after = Gate(), Gate()
    waiting = asyncio.create_task(pool.run(1000, slow))
    await started(slow)
    waiting.cancel()  # the caller went away; the thread is still hashing
    with pytest.raises(asyncio.CancelledError):
        await waiting
    later = asyncio.create_task(pool.run(1000, after))
    await asyncio.sleep(0)  # let it try for the slot
    assert not after.started.is_set()
    slow.opened.set()
    await started(after)
    after.opened.set()
    assert await later == "done"


async def test_errors_reach_the_caller(pool: AttestationPool) -> None:
    def boom() -> None:
        raise ValueError("bad /proc")

    with pytest.raises(ValueError, match="bad /proc"):
        await pool.run(1000, boom)
    assert await pool.run(1000, lambda: 7) == 7  # the slot was given back


async def test_closed_pool_refuses_work() -> None:
    pool = AttestationPool(workers=1, per_uid=1)
    pool.close()
    with pytest.raises(Unavailable):
        await pool.run(0, lambda: None)


@pytest.mark.parametrize(("workers", "per_uid"), [(0, 1), (2, 0), (2, 3)])
def test_bad_sizes(workers: int, per_uid: int) -> None:
    with pytest.raises(InvalidConfig):
        AttestationPool(workers=workers, per_uid=per_uid)
