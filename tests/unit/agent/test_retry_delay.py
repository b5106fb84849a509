"""The agent's wait before retrying a renewal: cut to a quarter of the SVIDs' remaining life and
jittered below the cut; once they have expired, the backoff policy's own (growing, jittered)
delay, not a fixed quarter second from every agent at once (the fleet benchmark's herd after a
CA restart: 0.25 s retries from every agent kept the recovering CA overloaded)."""

from __future__ import annotations

from s2s.agent.ca_client import RetryDelays, retry_delay


def _grown(rand: float) -> RetryDelays:
    delays = RetryDelays(rand=lambda: rand)
    for _ in range(20):
        delays.next_delay()  # a long outage: the policy's delay is at its 30 s cap
    return delays


def test_after_expiry_the_delay_is_the_policys_own_not_a_fixed_quarter_second() -> None:
    assert retry_delay(_grown(0.999), remaining=0.0) > 20
    assert retry_delay(_grown(0.5), remaining=0.0) > 10  # jittered, not one value for all


def test_a_delay_cut_to_the_remaining_life_is_jittered_below_the_cut() -> None:
    low = retry_delay(_grown(0.2), remaining=8.0)  # the policy says ~6 s, the cut 2 s
    high = retry_delay(_grown(0.999), remaining=8.0)
    assert 1.0 <= low < high <= 2.0  # within [cut / 2, cut], cut = 8 s / 4
    assert retry_delay(_grown(0.999), remaining=0.5) <= 0.25  # the 0.25 s floor, jittered below


def test_a_delay_within_the_remaining_life_or_with_nothing_held_is_unchanged() -> None:
    fresh = RetryDelays(rand=lambda: 0.999)
    assert retry_delay(fresh, remaining=100.0) == RetryDelays(rand=lambda: 0.999).next_delay()
    assert retry_delay(_grown(0.999), remaining=None) > 20
