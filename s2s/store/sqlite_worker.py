"""The SQLite store's connection: one worker thread, transactions, change notification.

The base of :class:`s2s.store.sqlite.SqliteStore` (``open`` checks the file with
:func:`s2s.store.sqlite_schema.connect`). Every call runs on one worker thread that owns the
connection, so the event loop never blocks on disk; a read is one read transaction (a
consistent view), a write one ``BEGIN IMMEDIATE`` transaction (:class:`Tx`) that rolls back on any
error. ``sqlite3`` errors become :class:`StoreError` here, once. A committed write wakes the
waiters of the topics it bumped, even if its caller was cancelled.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

from s2s.core.errors import S2SError, StoreError
from s2s.store.base import ChangeNotifier, wait_for_revision
from s2s.store.records import Topic
from s2s.store.sqlite_rows import scalar
from s2s.store.sqlite_schema import connect

__all__ = ["SqliteWorker", "Tx"]

_T = TypeVar("_T")


class Tx:
    """One write transaction: the connection and the topics it changed."""

    __slots__ = ("conn", "topics")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.topics: list[Topic] = []

    def bump(self, topic: Topic) -> None:
        if topic not in self.topics:
            # An upsert: a topic added after the store was created has no row yet.
            self.conn.execute(
                "INSERT INTO topics VALUES (?, 1) "
                "ON CONFLICT (topic) DO UPDATE SET revision = revision + 1",
                (topic,),
            )
            self.topics.append(topic)


class SqliteWorker:
    """One SQLite connection owned by one worker thread, and the change notifier."""

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection, poll: float
    ) -> None:
        self._path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn
        self._poll = poll
        self._notifier = ChangeNotifier()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, create: bool = True, poll_interval: float = 1.0
    ) -> Self:
        """Open the store at ``path``; with ``create``, a missing file is created with mode 0600.

        ``poll_interval`` bounds how late ``wait_for_change`` sees writes made by another handle.
        """
        where = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2s-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                executor, connect, where, create
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(where, executor, conn, poll_interval)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        finally:
            self._executor.shutdown(wait=True)

    # -- plumbing: one worker thread, errors translated once --

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"the store {self._path} is closed")
        try:
            return fn(conn)
        except S2SError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path} failed, nothing was written: {exc}") from exc

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        if self._conn is None:
            raise StoreError(f"the store {self._path} is closed")
        return asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await (await self._submit(lambda c: _snapshot(c, fn)))

    async def _write(self, fn: Callable[[Tx], _T]) -> _T:
        future = await self._submit(lambda c: _transact(c, fn))

        def notify(done: asyncio.Future[tuple[_T, list[Topic]]]) -> None:
            # Runs even when the caller was cancelled: a committed change always wakes waiters.
            if not done.cancelled() and done.exception() is None:
                self._notifier.notify(done.result()[1])

        future.add_done_callback(notify)
        result, _ = await future
        return result

    async def revision(self, topic: Topic) -> int:
        name = Topic(topic).value
        value = await self._read(
            lambda c: scalar(c, "SELECT revision FROM topics WHERE topic=?", name)
        )
        return int(value or 0)

    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        return await wait_for_revision(
            lambda: self.revision(topic),
            self._notifier,
            Topic(topic),
            after,
            timeout,
            poll_interval=self._poll,
        )


# -- helpers that run on the worker thread --


def _transact(conn: sqlite3.Connection, fn: Callable[[Tx], _T]) -> tuple[_T, list[Topic]]:
    tx = Tx(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(tx)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result, tx.topics


def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    conn.execute("BEGIN")  # one read transaction: a consistent view of the whole call
    try:
        return fn(conn)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
