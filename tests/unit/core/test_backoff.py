"""The one retry policy (capped exponential backoff, jitter) and the timing each caller keeps."""

from __future__ import annotations

import itertools

import pytest

from s2s.agent.ca_client import AGENT_BACKOFF, RetryDelays
from s2s.ca.loops import RETRY_BACKOFF
from s2s.core.backoff import Backoff
from s2s.core.errors import InvalidConfig
from s2s.verifier.source import DEFAULT_BACKOFF

RANDS = (0.0, 0.001, 0.25, 0.5, 0.75, 0.999999)
ATTEMPTS = range(70)


def test_step_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=0.1, cap=5.0)
    assert [round(b.step(n), 3) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert b.step(10_000) == 5.0
    assert b.step(-3) == 0.1


@pytest.mark.parametrize(
    "policy",
    [
        Backoff.full_jitter(initial=0.5, cap=30.0),
        Backoff.equal_jitter(initial=0.05, cap=2.0),
        Backoff.proportional(initial=0.1, cap=5.0, jitter=0.2),
        Backoff(initial=0.1, cap=30.0, low=0.5, high=1.5),
    ],
)
def test_delay_is_within_floor_and_cap(policy: Backoff) -> None:
    for attempt, rand in itertools.product(ATTEMPTS, RANDS):
        delay = policy.delay(attempt, rand)
        assert policy.floor <= delay <= policy.cap
        assert policy.step(attempt) * policy.low <= delay or delay == policy.floor


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0.0, "cap": 1.0}, "0 < initial <= cap"),
        ({"initial": -1.0, "cap": 1.0}, "0 < initial <= cap"),
        ({"initial": 2.0, "cap": 1.0}, "0 < initial <= cap"),
        ({"initial": 0.1, "cap": 1.0, "low": 1.0, "high": 0.5}, "low <= high"),
        ({"initial": 0.1, "cap": 1.0, "low": -0.1}, "low <= high"),
        ({"initial": 0.1, "cap": 1.0, "floor": -1.0}, "floor"),
        ({"initial": 0.1, "cap": 1.0, "floor": 2.0}, "floor"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        Backoff(**kwargs)


# Each caller's timing, checked against the formula it used before the policy was shared.


def test_verifier_sources_keep_their_timing() -> None:
    def before(attempt: int, rand: float) -> float:
        base = min(5.0, 0.1 * 2.0 ** min(attempt, 32))
        return min(5.0, base * (1 - 0.2 + 2 * 0.2 * rand))

    for attempt, rand in itertools.product(ATTEMPTS, RANDS):
        assert DEFAULT_BACKOFF.delay(attempt, rand) == pytest.approx(before(attempt, rand))


def test_agent_retries_keep_their_timing() -> None:
    def before(attempt: int, rand: float, initial: float = 0.5, cap: float = 30.0) -> float:
        return max(initial / 2, min(cap, initial * 2.0**attempt) * rand)

    for rand in RANDS:
        delays = RetryDelays(AGENT_BACKOFF, rand=lambda: rand)  # noqa: B023 - used at once
        for attempt in ATTEMPTS:
            assert delays.next_delay() == pytest.approx(before(min(attempt, 62), rand))
        delays.reset()
        assert delays.next_delay() == pytest.approx(before(0, rand))


def test_ca_feed_and_etcd_watch_keep_their_timing() -> None:
    # Both count failures from 1, so the first wait is drawn from twice the initial step.
    def before(failures: int, rand: float, initial: float, cap: float) -> float:
        return min(cap, initial * 2.0**failures) * (0.5 + rand / 2)

    for initial, cap in ((0.05, 2.0), (0.01, 0.01)):
        policy = Backoff.equal_jitter(initial=initial, cap=cap)
        for failures, rand in itertools.product(range(1, 60), RANDS):
            assert policy.delay(failures, rand) == pytest.approx(
                before(failures, rand, initial, cap)
            )


def test_ca_loops_keep_their_timing_below_the_cap() -> None:
    def before(attempt: int, rand: float) -> float:
        delay = 0.1
        for _ in range(attempt):
            delay = min(delay * 2, 30.0)
        return delay * (0.5 + rand)

    for attempt, rand in itertools.product(range(40), RANDS):
        old = before(attempt, rand)
        # The old loop could wait up to 1.5 times its 30 s cap once saturated; now 30 s is the most.
        assert RETRY_BACKOFF.delay(attempt, rand) == pytest.approx(min(old, 30.0))
