"""TokenCache: an entry is a hit only for the snapshots it was checked against and until it
expires; a new snapshot empties the cache; a validation that raced a newer snapshot is not kept."""

from __future__ import annotations

import datetime as dt

from s2s.core.clock import FakeClock, SystemClock
from s2s.verifier.token_cache import TokenCache, posix_clock

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
LATER = T0 + 300


def _filled(size: int = 10) -> tuple[TokenCache[str], object, object]:
    cache: TokenCache[str] = TokenCache(size)
    keys, revocations = object(), object()
    cache.begin_miss("t", keys, revocations)
    cache.keep("t", "value", LATER, keys, revocations, T0)
    return cache, keys, revocations


def test_a_kept_token_is_a_hit_for_its_snapshots_until_it_expires() -> None:
    cache, keys, revocations = _filled()
    assert cache.hit("t", keys, revocations, T0) == "value"
    assert (cache.hits, cache.misses) == (1, 1)
    # twins: other key set, other revocations, expired, unknown token
    assert cache.hit("t", object(), revocations, T0) is None
    assert cache.hit("t", keys, object(), T0) is None
    assert cache.hit("t", keys, revocations, LATER) is None
    assert cache.hit("u", keys, revocations, T0) is None
    assert cache.hits == 1


def test_a_new_snapshot_empties_the_cache_once_and_says_so() -> None:
    cache, keys, revocations = _filled()
    changed: list[object] = []
    cache.begin_miss("u", keys, revocations, on_change=changed.append)
    assert changed == []
    assert len(cache) == 1
    new_keys = object()
    cache.begin_miss("u", new_keys, revocations, on_change=changed.append)
    assert changed == [new_keys]
    assert len(cache) == 0
    cache.begin_miss("v", new_keys, revocations, on_change=changed.append)
    assert changed == [new_keys]


def test_what_is_not_kept() -> None:
    cache, keys, revocations = _filled()
    cache.begin_miss("n", object(), revocations)  # a newer snapshot arrived meanwhile
    cache.keep("old", "v", LATER, keys, revocations, T0)
    assert cache.hit("old", keys, revocations, T0) is None
    cache.keep("gone", "v", T0, keys, revocations, T0)  # already expired
    assert len(cache) == 0
    off, keys, revocations = _filled(size=0)
    assert len(off) == 0


def test_least_recently_used_goes_first() -> None:
    cache: TokenCache[str] = TokenCache(2)
    keys, revocations = object(), object()
    for token in ("a", "b"):
        cache.begin_miss(token, keys, revocations)
        cache.keep(token, token, LATER, keys, revocations, T0)
    assert cache.hit("a", keys, revocations, T0) == "a"  # b is now the oldest
    cache.begin_miss("c", keys, revocations)
    cache.keep("c", "c", LATER, keys, revocations, T0)
    assert cache.hit("b", keys, revocations, T0) is None
    assert cache.hit("a", keys, revocations, T0) == "a"
    assert cache.hit("c", keys, revocations, T0) == "c"


def test_posix_clock_reads_the_clock_it_is_given() -> None:
    fake = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    read = posix_clock(fake)
    assert read() == T0
    fake.advance(seconds=90)
    assert read() == T0 + 90  # twin: a fake clock is followed, not the wall clock
    system = posix_clock(SystemClock())()
    assert abs(system - dt.datetime.now(dt.UTC).timestamp()) < 60
