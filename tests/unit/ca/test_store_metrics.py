"""MeteredStore: every store call is timed per operation; backend failures are counted, expected
answers (not found, conflict) are not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s2s.ca.metrics import CaMetrics
from s2s.ca.store_metrics import MeteredStore
from s2s.core.errors import Conflict, NotFound, StoreError
from s2s.store.base import Store
from s2s.store.factory import open_store
from s2s.store.records import Topic


@pytest.fixture
async def inner(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield store
    finally:
        await store.close()


def sample(metrics: CaMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_calls_pass_through_and_are_timed_by_operation(inner: Store) -> None:
    metrics = CaMetrics()
    store = MeteredStore(inner, metrics, backend="sqlite")
    await store.set_setting("k", "v")
    assert await store.get_setting("k") == "v"
    assert await store.get_setting("k") == "v"
    labels = {"backend": "sqlite", "operation": "get_setting"}
    assert sample(metrics, "s2s_ca_store_operation_seconds_count", **labels) == 2
    assert sample(metrics, "s2s_ca_store_operation_seconds_sum", **labels) > 0
    set_labels = {"backend": "sqlite", "operation": "set_setting"}
    assert sample(metrics, "s2s_ca_store_operation_seconds_count", **set_labels) == 1
    assert (
        metrics.registry.get_sample_value(
            "s2s_ca_store_errors_total", {**labels, "code": "store_error"}
        )
        is None
    )


async def test_waiting_for_a_change_is_not_timed(inner: Store) -> None:
    metrics = CaMetrics()
    store = MeteredStore(inner, metrics, backend="sqlite")
    revision = await store.revision(Topic.ENTRIES)
    assert await store.wait_for_change(Topic.ENTRIES, revision, 0.01) == revision
    labels = {"backend": "sqlite", "operation": "wait_for_change"}
    assert sample(metrics, "s2s_ca_store_operation_seconds_count", **labels) == 0
    labels = {"backend": "sqlite", "operation": "revision"}
    assert sample(metrics, "s2s_ca_store_operation_seconds_count", **labels) == 1


async def test_a_failing_backend_is_counted_by_operation_and_code(tmp_path: Path) -> None:
    metrics = CaMetrics()
    closed = await open_store(f"sqlite:///{tmp_path / 'closed.db'}")
    await closed.close()  # every call now fails inside the backend
    store = MeteredStore(closed, metrics, backend="sqlite")
    with pytest.raises(StoreError):
        await store.list_entries()
    with pytest.raises(StoreError):
        await store.wait_for_change(Topic.ENTRIES, 0, 0.01)
    for operation in ("list_entries", "wait_for_change"):
        labels = {"backend": "sqlite", "operation": operation, "code": "store_error"}
        assert sample(metrics, "s2s_ca_store_errors_total", **labels) == 1


async def test_not_found_and_conflict_are_answers_not_errors(inner: Store) -> None:
    metrics = CaMetrics()
    store = MeteredStore(inner, metrics, backend="sqlite")
    with pytest.raises(NotFound):
        await store.get_entry("no-such-entry")
    await store.cas_state("key", None, "one")
    with pytest.raises(Conflict):
        await store.cas_state("key", None, "two")
    errors = [
        s for f in metrics.registry.collect() for s in f.samples
        if s.name == "s2s_ca_store_errors_total"
    ]  # fmt: skip
    assert errors == []
    labels = {"backend": "sqlite", "operation": "cas_state"}
    assert sample(metrics, "s2s_ca_store_operation_seconds_count", **labels) == 2
