"""Waiting for a condition in a test: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], Awaitable[object] | object],
    what: str,
    timeout: float = 10.0,
    interval: float = 0.005,
) -> float:
    """Poll ``check()`` (sync or async) until it is truthy; return the seconds it took, or fail
    naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)
