"""Injected time. Objects take a ``Clock``; tests pass a ``FakeClock`` and advance it."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "utc"]


def utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, aware, in UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class FakeClock:
    """A clock that moves only when told to.

    >>> c = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    >>> c.advance(seconds=90).isoformat()
    '2030-01-01T00:01:30+00:00'
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = utc(start) if start is not None else dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta | None = None, *, seconds: float = 0) -> dt.datetime:
        self._now += (delta or dt.timedelta()) + dt.timedelta(seconds=seconds)
        return self._now

    def set(self, value: dt.datetime) -> None:
        self._now = utc(value)
