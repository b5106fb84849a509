from __future__ import annotations

import datetime as dt

from s2s.core.clock import FakeClock, SystemClock, utc


def test_fake_clock_moves_only_when_told() -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    clock = FakeClock(start)
    assert clock.now() == start
    assert clock.advance(seconds=1.5) == start + dt.timedelta(seconds=1.5)
    clock.set(dt.datetime(2031, 1, 1))
    assert clock.now() == dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


def test_system_clock_is_aware_utc() -> None:
    assert SystemClock().now().tzinfo is dt.UTC
    assert utc(dt.datetime(2030, 1, 1)).tzinfo is dt.UTC
