"""The JSON log formatter: an exception is one field, and a crashed TaskGroup's group says what
went wrong inside it."""

from __future__ import annotations

import asyncio
import json
import logging

from s2s.log import JsonFormatter


def _record(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "s2s.agent.app", logging.CRITICAL, __file__, 1, "agent.crashed", None,
        (type(exc), exc, exc.__traceback__),
    )  # fmt: skip


def _fails() -> None:
    raise ValueError("the store said no")


async def _crashing_group() -> None:
    async def loop() -> None:
        _fails()

    async with asyncio.TaskGroup() as group:
        group.create_task(loop())


def test_a_crashed_task_group_names_the_exception_inside_and_where() -> None:
    try:
        asyncio.run(_crashing_group())
    except ExceptionGroup as exc:
        group = exc
    line = json.loads(JsonFormatter().format(_record(group)))
    assert line["exception"].startswith("ExceptionGroup: unhandled errors in a TaskGroup")
    assert "ValueError: the store said no (in _fails, test_log.py:" in line["exception"]


def test_nested_groups_are_flattened() -> None:
    inner = ExceptionGroup("inner", [KeyError("k"), OSError("disk")])
    line = json.loads(JsonFormatter().format(_record(ExceptionGroup("outer", [inner]))))
    assert (
        line["exception"] == "ExceptionGroup: outer (1 sub-exception): KeyError: 'k'; OSError: disk"
    )


def test_a_plain_exception_is_type_and_message_only() -> None:
    try:
        _fails()
    except ValueError as exc:
        error = exc
    line = json.loads(JsonFormatter().format(_record(error)))
    assert line["exception"] == "ValueError: the store said no"
