"""How the CA runs its loops: all under one ``asyncio.TaskGroup`` until a stop
event; a crashed loop is named in the log and stops the process; ``Unavailable`` is retried with
capped exponential backoff and jitter."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from s2s.core.backoff import Backoff
from s2s.core.errors import Unavailable
from s2s.log import F

__all__ = ["RETRY_BACKOFF", "every", "retrying", "run_loops"]

log = logging.getLogger(__name__)

# 0.1 s doubling to 30 s, each delay scaled by 0.5 to 1.5 (and never above 30 s).
RETRY_BACKOFF: Final = Backoff(initial=0.1, cap=30.0, low=0.5, high=1.5)


async def run_loops(loops: Mapping[str, Awaitable[None]], stop: asyncio.Event) -> None:
    """Run every loop under one TaskGroup until ``stop`` is set or a loop crashes."""
    try:
        async with asyncio.TaskGroup() as group:
            for name, loop in loops.items():
                group.create_task(_logged(name, loop), name=name)
            group.create_task(_raise_when(stop), name="stop")
    except* _Shutdown:
        pass


async def every(interval: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` (retrying ``Unavailable``) every ``interval`` seconds, forever."""
    while True:
        await retrying(getattr(step, "__name__", "loop"), step)
        await asyncio.sleep(interval)


async def retrying(name: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step``; retry ``Unavailable`` with capped exponential backoff; others crash."""
    attempt = 0
    while True:
        try:
            await step()
            return
        except Unavailable as exc:
            log.warning("ca.loop.retry", extra={F.LOOP: name, F.ERROR: str(exc)})
            await asyncio.sleep(RETRY_BACKOFF.delay(attempt, _jitter()))
            attempt += 1


class _Shutdown(Exception):
    """Raised inside the TaskGroup to stop every loop."""


async def _logged(name: str, loop: Awaitable[None]) -> None:
    """Run a loop; if it dies, say which one in the log before the TaskGroup stops the CA."""
    try:
        await loop
    except Exception as exc:
        log.critical("ca.loop_crashed", extra={F.LOOP: name, F.ERROR: str(exc)}, exc_info=exc)
        raise


async def _raise_when(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Shutdown


def _jitter() -> float:
    return int.from_bytes(os.urandom(2), "big") / 65536
