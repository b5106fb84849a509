"""The asyncio helpers never swallow a cancellation (asyncio.wait_for on 3.11 can)."""

from __future__ import annotations

import asyncio

import pytest

from s2s.aio import wait_event, within


async def test_wait_event_returns_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    assert await wait_event(event, -1) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_within_returns_the_result_or_times_out() -> None:
    assert await within(asyncio.sleep(0, "done"), 1) == "done"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(1), 0.01)


@pytest.mark.parametrize("helper", ["wait_event", "within"])
async def test_a_cancel_that_arrives_as_the_wait_ends_stops_the_task(helper: str) -> None:
    """The event is set and the task cancelled in the same loop iteration (a SIGTERM while a
    rotation wakes the loop): the task must end cancelled, not go round its loop again."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            if helper == "wait_event":
                await wait_event(event, 10)
            else:
                await within(event.wait(), 10)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rounds == 1
