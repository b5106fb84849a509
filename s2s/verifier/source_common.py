"""What every verifier source shares: the start timeout, the subscriber list, task cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_START_TIMEOUT", "Subscribers", "cancel_task"]

DEFAULT_START_TIMEOUT = 10.0
# The log records keep the name they had before this module was split out of source.py.
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Subscribers(Generic[_T]):
    """Callbacks run in order after each change; a failing callback is logged, not fatal."""

    def __init__(self) -> None:
        self._callbacks: tuple[Callable[[_T], None], ...] = ()
        self._lock = threading.Lock()  # subscribe/unsubscribe may come from other threads

    def subscribe(self, callback: Callable[[_T], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return unsubscribe

    def callbacks(self) -> tuple[Callable[[_T], None], ...]:
        """The current subscribers, in subscription order (for callers that notify themselves)."""
        return self._callbacks

    def notify(self, value: _T) -> None:
        for callback in self._callbacks:
            try:
                callback(value)
            except Exception:
                _log.exception("source.subscriber_failed")


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to finish; its cancellation is not re-raised."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
