"""Retry timing without I/O: how long to pause before asking a server again.

Pure functions of their inputs; the caller passes ``rand`` (uniform in [0, 1)) for the jitter.
:class:`Backoff` is the one retry policy (capped exponential with jitter); each caller states its
own initial step, cap and jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.core.errors import InvalidConfig

__all__ = ["Backoff", "early_answer_pause", "within_lifetime"]

_MAX_EARLY_PAUSE = 1.0
_MAX_DOUBLINGS = 62  # 2**62 * any sane initial is far above any cap; keeps the float finite


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter.

    Before retry ``attempt`` (0-based) the step is ``initial * 2**attempt``, at most ``cap``; the
    delay is the step times a factor in ``[low, high)`` picked by ``rand``, at least ``floor``
    and never above ``cap``. The constructors name the usual jitters.

    >>> b = Backoff.equal_jitter(initial=1.0, cap=8.0)
    >>> [b.delay(n, rand=0.0) for n in range(5)], b.delay(9, rand=0.999) <= 8.0
    ([0.5, 1.0, 2.0, 4.0, 4.0], True)
    >>> full = Backoff.full_jitter(initial=1.0, cap=8.0)
    >>> full.delay(0, rand=0.0), full.delay(3, rand=0.5)
    (0.5, 4.0)
    >>> Backoff.proportional(initial=0.1, cap=5.0, jitter=0.2).delay(6, rand=0.999) <= 5.0
    True
    """

    initial: float
    cap: float
    low: float = 0.5
    high: float = 1.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise InvalidConfig(f"backoff needs 0 < initial <= cap, not {self.initial}, {self.cap}")
        if not 0 <= self.low <= self.high:
            raise InvalidConfig(f"jitter needs 0 <= low <= high, not {self.low}, {self.high}")
        if not 0 <= self.floor <= self.cap:
            raise InvalidConfig(f"backoff floor {self.floor} must be in [0, cap]")

    @classmethod
    def full_jitter(cls, *, initial: float, cap: float) -> Backoff:
        """A delay anywhere up to the step ("full jitter"), at least ``initial / 2``."""
        return cls(initial=initial, cap=cap, low=0.0, high=1.0, floor=initial / 2)

    @classmethod
    def equal_jitter(cls, *, initial: float, cap: float) -> Backoff:
        """A delay between half the step and the step ("equal jitter")."""
        return cls(initial=initial, cap=cap, low=0.5, high=1.0)

    @classmethod
    def proportional(cls, *, initial: float, cap: float, jitter: float) -> Backoff:
        """The step scaled by a factor in ``[1 - jitter, 1 + jitter)``."""
        return cls(initial=initial, cap=cap, low=1.0 - jitter, high=1.0 + jitter)

    def step(self, attempt: int) -> float:
        """The wait before retry ``attempt`` without jitter: ``initial * 2**attempt``, capped."""
        return min(self.cap, self.initial * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before retry ``attempt`` (0-based), given ``rand`` in [0, 1)."""
        factor = self.low + (self.high - self.low) * rand
        return min(self.cap, max(self.floor, self.step(attempt) * factor))


def early_answer_pause(*, asked: float, took: float, changed: bool, rand: float) -> float:
    """Seconds to pause after a long-poll that asked to wait ``asked`` seconds and was answered
    after ``took`` seconds with no change: a server shedding long-polls (over its cap) answers at
    once, and a client that asked again at once would spin. Zero when the answer changed
    something, when no wait was asked, or when the server did hold the request.

    >>> early_answer_pause(asked=30, took=0.01, changed=False, rand=0.0)
    0.5
    >>> early_answer_pause(asked=30, took=30, changed=False, rand=0.0)
    0.0
    >>> early_answer_pause(asked=30, took=0.01, changed=True, rand=0.0)
    0.0
    """
    if changed or asked <= 0 or took >= min(_MAX_EARLY_PAUSE, asked / 2):
        return 0.0
    return min(asked, _MAX_EARLY_PAUSE) * (0.5 + rand / 2)


def within_lifetime(delay: float, remaining: float | None, *, share: float = 0.25) -> float:
    """``delay``, shortened to ``share`` of the ``remaining`` lifetime (seconds) of what the retry
    must renew (at least 0.25 s): a backoff grown during an outage must not outlast the
    credentials it is renewing. ``None``: nothing held yet, the delay as it is.

    >>> within_lifetime(8.0, None), within_lifetime(8.0, 100.0), within_lifetime(8.0, 10.0)
    (8.0, 8.0, 2.5)
    >>> within_lifetime(8.0, 0.0)
    0.25
    """
    if remaining is None:
        return delay
    return min(delay, max(0.25, remaining * share))
