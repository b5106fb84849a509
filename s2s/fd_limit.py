"""The process's open-files limit, raised once at start by each server program (``s2s-ca serve``,
``s2s-agent run``).

Linux starts most processes with a soft ``RLIMIT_NOFILE`` of 1024 and a far higher hard limit:
the soft one is kept low for old programs that ``select()``, which asyncio does not. An agent
holds a few descriptors per workload connection (the connection, its link to the gRPC server,
the caller's ``/proc/<pid>`` entry) and a CA one per agent plus its long-polls, so 1024 runs
out long before the machine does. Go programs raise the soft limit to the hard one by
themselves since Go 1.19; ours do the same, up to :data:`MAX_OPEN_FILES`. A limit that cannot
be raised is reported, never a reason not to start. Out of descriptors all the same, a
listening socket says so in one line every few seconds (:class:`AcceptFailures`) instead of a
traceback per retry.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from s2s.log import F

__all__ = ["MAX_OPEN_FILES", "AcceptFailures", "FdLimit", "log_fd_limit", "raise_fd_limit"]

MAX_OPEN_FILES: Final = 1 << 20  # 1,048,576: Linux's default fs.nr_open


@dataclass(frozen=True, slots=True)
class FdLimit:
    """The soft open-files limit before and after :func:`raise_fd_limit`, the hard limit, and
    why it could not be raised (None: raised, or nothing to raise)."""

    before: int
    after: int
    hard: int
    error: str | None = None


def _number(limit: int) -> int:
    return MAX_OPEN_FILES if limit == resource.RLIM_INFINITY else limit


def raise_fd_limit(cap: int = MAX_OPEN_FILES) -> FdLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit, at most ``cap`` (never
    lower it). An unlimited hard limit counts as ``cap``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(_number(hard), cap)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return FdLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return FdLimit(soft, soft, hard, str(exc))
    return FdLimit(soft, target, hard)


def log_fd_limit(log: logging.Logger, event: str, limit: FdLimit) -> None:
    """One line: ``event`` at info with before/after/hard, at warning when it failed."""
    fields = {F.BEFORE: limit.before, F.AFTER: limit.after, F.LIMIT: limit.hard}
    if limit.error is None:
        log.info(event, extra=fields)
    else:
        log.warning(event, extra={**fields, F.ERROR: limit.error})


# What asyncio's selector loop reports when accept() fails for want of descriptors (EMFILE,
# ENFILE, ENOBUFS, ENOMEM); it then stops accepting on that socket for a second and retries.
_ACCEPT_OUT_OF_RESOURCES: Final = "socket.accept() out of system resource"


class AcceptFailures:
    """An event loop exception handler: asyncio's traceback for a listening socket out of
    descriptors becomes one ``event`` warning (the socket, the error, the open-files limit and
    how many were not logged since), at most one every ``every`` seconds; anything else goes to
    the loop's default handler. The listener keeps serving (asyncio retries after a second)."""

    def __init__(
        self,
        log: logging.Logger,
        event: str,
        *,
        every: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._every = every
        self._monotonic = monotonic
        self._last: float | None = None
        self._unlogged = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_OUT_OF_RESOURCES:
            loop.default_exception_handler(context)
            return
        now = self._monotonic()
        if self._last is not None and now - self._last < self._every:
            self._unlogged += 1
            return
        self._last = now
        sock = context.get("socket")
        self._log.warning(
            self._event,
            extra={
                F.SOCKET: _address(sock),
                F.ERROR: str(context.get("exception")),
                F.LIMIT: resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                F.COUNT: self._unlogged,
            },
        )
        self._unlogged = 0


def _address(sock: object) -> str:
    getsockname = getattr(sock, "getsockname", None)
    try:
        return "?" if getsockname is None else str(getsockname())
    except OSError:
        return "?"
