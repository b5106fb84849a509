"""Fixtures for the store tests.

A backend's test module provides ``open_store``: an async callable that opens a new handle on the
*same* backing data every time it is called (same SQLite file, same etcd prefix), closing them
all at teardown. The contract suite (``contract.py``) builds everything else from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from s2s.store.base import Store
from s2s.store.sqlite import SqliteStore

OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.db"


@pytest.fixture
async def open_sqlite(sqlite_path: Path) -> AsyncIterator[Callable[..., Awaitable[SqliteStore]]]:
    """Open SQLite handles on one file (``poll_interval`` may be given); all closed at teardown."""
    sqlite_path.parent.mkdir(mode=0o700, exist_ok=True)
    handles: list[SqliteStore] = []

    async def open_one(**kwargs: Any) -> SqliteStore:
        store = await SqliteStore.open(sqlite_path, **kwargs)
        handles.append(store)
        return store

    yield open_one
    for store in handles:
        await store.close()
