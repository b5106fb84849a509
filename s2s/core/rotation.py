"""When to renew a credential: at its half-life, jittered by +-10% (as SPIRE's rotationutil).

Jitter spreads the renewals of many workloads issued at the same moment so the CA is not hit by a
thundering herd. Randomness is injected: callers pass ``jitter_from(random.random)``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["JITTER_FRACTION", "jitter_from", "renewal_time", "should_renew", "time_until_renewal"]

JITTER_FRACTION = 0.1  # of the half-life


def renewal_time(not_before: datetime, not_after: datetime, *, jitter: float) -> datetime:
    """The instant to renew a credential valid from ``not_before`` to ``not_after``.

    Renewal happens when the remaining lifetime is ``half_life * (1 + 0.1 * jitter)``, so
    ``jitter`` 1 renews earliest and -1 latest.

    >>> from datetime import UTC
    >>> start = datetime(2030, 1, 1, tzinfo=UTC)
    >>> renewal_time(start, start + timedelta(minutes=10), jitter=0.0).isoformat()
    '2030-01-01T00:05:00+00:00'
    >>> renewal_time(start, start + timedelta(minutes=10), jitter=1.0).isoformat()
    '2030-01-01T00:04:30+00:00'
    """
    if not isinstance(jitter, int | float) or not -1.0 <= jitter <= 1.0:
        raise ValueError("jitter must be a number in [-1, 1]")
    if not_before.utcoffset() is None or not_after.utcoffset() is None:
        raise ValueError("not_before and not_after must be aware datetimes")
    if not_after <= not_before:
        raise ValueError("not_after must be after not_before")
    half_life = (not_after - not_before) / 2
    remaining = half_life * (1.0 + JITTER_FRACTION * jitter)
    # timedelta arithmetic rounds to microseconds; never renew before the credential is valid.
    return max(not_before, not_after - remaining)


def should_renew(
    not_before: datetime, not_after: datetime, now: datetime, *, jitter: float
) -> bool:
    """True once ``now`` has reached the renewal time (or the credential has expired)."""
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now >= renewal_time(not_before, not_after, jitter=jitter)


def jitter_from(rand: Callable[[], float]) -> float:
    """Map a uniform source on [0, 1) (e.g. ``random.random``) to a jitter in [-1, 1)."""
    value = rand()
    if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError("the random source must return a number in [0, 1)")
    return 2.0 * value - 1.0


def time_until_renewal(
    not_before: datetime, not_after: datetime, now: datetime, *, jitter: float
) -> timedelta:
    """How long to wait before renewing (zero when renewal is due)."""
    if now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return max(timedelta(0), renewal_time(not_before, not_after, jitter=jitter) - now)
