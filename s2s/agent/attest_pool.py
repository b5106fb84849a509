"""Where workload attestation runs: a few threads of its own, shared fairly between caller uids.

Attestation reads ``/proc`` and may hash a binary of up to ``sha256_max_bytes``; a caller that
opens many connections, or runs many distinct binaries (each one hash), must not occupy the
event loop, asyncio's default executor (which the rest of the agent uses), or every attestation
thread. :class:`AttestationPool` runs jobs on ``workers`` threads and lets each uid hold at most
``per_uid`` of them (running or queued); a uid's further jobs wait for one of its own to finish,
so other uids always find a thread within one job's time. A job whose caller gives up keeps its
slot until its thread is done with it: cancelling calls cannot pile up hashing work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import TypeVar

from s2s.core.errors import InvalidConfig, Unavailable

__all__ = ["AttestationPool"]

_T = TypeVar("_T")


class AttestationPool:
    """Runs blocking attestation work on ``workers`` threads, at most ``per_uid`` per uid."""

    def __init__(self, *, workers: int = 4, per_uid: int = 2) -> None:
        if workers < 1 or not 1 <= per_uid <= workers:
            raise InvalidConfig("the attestation pool needs 1 <= per_uid <= workers")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="s2s-attest"
        )
        self._per_uid = per_uid
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._waiting: dict[int, int] = {}  # uid -> jobs holding or awaiting a slot
        self._closed = False

    @property
    def busy(self) -> int:
        """Jobs holding or awaiting a slot (all uids)."""
        return sum(self._waiting.values())

    async def run(self, uid: int, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on a pool thread, counted against ``uid``."""
        if self._closed:
            raise Unavailable("the Workload API is shutting down")
        loop = asyncio.get_running_loop()
        slot = self._slots.setdefault(uid, asyncio.Semaphore(self._per_uid))
        self._waiting[uid] = self._waiting.get(uid, 0) + 1
        released = False

        def release(_: object = None) -> None:
            nonlocal released
            if not released:
                released = True
                slot.release()
                self._forget(uid)

        try:
            await slot.acquire()
        except BaseException:
            self._forget(uid)
            raise
        try:
            job = self._executor.submit(fn, *args)
        except RuntimeError as exc:  # shut down between the check above and here
            release()
            raise Unavailable("the Workload API is shutting down") from exc

        # The slot is freed when the thread is done (or the job never started), not when the
        # caller stops waiting.
        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody needs the slot
                loop.call_soon_threadsafe(release)

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    def _forget(self, uid: int) -> None:
        left = self._waiting.get(uid, 1) - 1
        if left <= 0:
            self._waiting.pop(uid, None)
            self._slots.pop(uid, None)
        else:
            self._waiting[uid] = left

    def close(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish on their own."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
