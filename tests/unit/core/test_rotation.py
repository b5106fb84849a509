"""Renewal timing: half-life with +-10% jitter."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.clock import FakeClock
from s2s.core.rotation import jitter_from, renewal_time, should_renew, time_until_renewal

NB = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NA = NB + dt.timedelta(minutes=5, seconds=10)  # a 5-minute SVID with a 10 s backdate


def test_half_life_without_jitter() -> None:
    assert renewal_time(NB, NA, jitter=0.0) == NB + dt.timedelta(seconds=155)


def test_jitter_bounds_match_spire() -> None:
    # 5m10s lifetime: renew when 2m19.5s to 2m50.5s remain
    assert NA - renewal_time(NB, NA, jitter=1.0) == dt.timedelta(seconds=170.5)
    assert NA - renewal_time(NB, NA, jitter=-1.0) == dt.timedelta(seconds=139.5)


def test_should_renew_flips_exactly_at_the_renewal_time() -> None:
    clock = FakeClock(NB)
    due = renewal_time(NB, NA, jitter=0.3)
    assert not should_renew(NB, NA, clock.now(), jitter=0.3)
    clock.set(due - dt.timedelta(microseconds=1))
    assert not should_renew(NB, NA, clock.now(), jitter=0.3)
    assert time_until_renewal(NB, NA, clock.now(), jitter=0.3) == dt.timedelta(microseconds=1)
    clock.set(due)
    assert should_renew(NB, NA, clock.now(), jitter=0.3)
    assert time_until_renewal(NB, NA, clock.now(), jitter=0.3) == dt.timedelta(0)
    clock.advance(seconds=3600)  # long expired: still renew
    assert should_renew(NB, NA, clock.now(), jitter=0.3)
    assert time_until_renewal(NB, NA, clock.now(), jitter=0.3) == dt.timedelta(0)


def test_jitter_from_maps_unit_interval() -> None:
    assert jitter_from(lambda: 0.0) == -1.0
    assert jitter_from(lambda: 0.5) == 0.0
    assert jitter_from(lambda: 0.75) == 0.5
    rng = random.Random(7)
    values = [jitter_from(rng.random) for _ in range(1000)]
    assert all(-1.0 <= v < 1.0 for v in values)
    assert min(values) < -0.9
    assert max(values) > 0.9


@pytest.mark.parametrize("bad", [1.0, -0.1, 2.0, float("nan"), "0.5"])
def test_jitter_from_rejects_a_bad_source(bad: object) -> None:
    with pytest.raises(ValueError, match="random source"):
        jitter_from(lambda: bad)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("jitter", [1.0001, -1.5, float("nan"), float("inf"), "0"])
def test_jitter_out_of_range_is_rejected(jitter: object) -> None:
    renewal_time(NB, NA, jitter=1.0)  # the edge itself is fine
    with pytest.raises(ValueError, match="jitter"):
        renewal_time(NB, NA, jitter=jitter)  # type: ignore[arg-type]


def test_bad_validity_windows_are_rejected() -> None:
    with pytest.raises(ValueError, match="after"):
        renewal_time(NA, NB, jitter=0.0)
    with pytest.raises(ValueError, match="after"):
        renewal_time(NB, NB, jitter=0.0)
    with pytest.raises(ValueError, match="aware"):
        renewal_time(NB.replace(tzinfo=None), NA, jitter=0.0)
    with pytest.raises(ValueError, match="aware"):
        should_renew(NB, NA, dt.datetime(2030, 1, 1), jitter=0.0)
    with pytest.raises(ValueError, match="aware"):
        time_until_renewal(NB, NA, dt.datetime(2030, 1, 1), jitter=0.0)


@settings(deadline=None)
@given(
    lifetime=st.integers(1, 10**10),  # microseconds, up to ~3 hours
    jitter=st.floats(-1.0, 1.0),
)
def test_renewal_is_always_within_the_jittered_half_life(lifetime: int, jitter: float) -> None:
    na = NB + dt.timedelta(microseconds=lifetime)
    due = renewal_time(NB, na, jitter=jitter)
    assert NB <= due <= na
    assert due < na or lifetime < 3  # sub-microsecond halves round away
    remaining = (na - due) / dt.timedelta(microseconds=1)
    half = lifetime / 2
    assert half * 0.9 - 1 <= remaining <= half * 1.1 + 1
