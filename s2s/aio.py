"""Small asyncio helpers shared by every process.

``asyncio.wait_for`` on Python 3.11 returns normally when a cancellation arrives in the same loop
iteration as the awaited result, swallowing the cancellation: a loop that waits on an event with
``wait_for`` can then survive ``task.cancel()`` and keep a process alive after SIGTERM. These
helpers use ``asyncio.timeout``, which never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["wait_event", "within"]

_T = TypeVar("_T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds (negative: zero); True when it is set."""
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def within(awaitable: Awaitable[_T], timeout: float) -> _T:
    """``await awaitable``, or TimeoutError after ``timeout`` seconds (negative: zero)."""
    async with asyncio.timeout(max(timeout, 0.0)):
        return await awaitable
