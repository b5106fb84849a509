"""The validation cache the token validators share (JWT-SVIDs, access tokens).

A validated token is kept by its text with the two snapshots it was checked against (the keys,
or the bundle set, and the revocation set) and its expiry; it counts as a hit only while both
snapshots are the current ones and it has not expired, so a rotated key set or a new revocation
makes every entry a miss at once, without a scan. Snapshots are immutable and replaced whole, so
``is`` compares them. Thread-safe: a hit takes no lock (one dict read and identity checks);
misses clear, pop and insert under one lock. Least recently used entries go first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidToken, Unavailable

__all__ = ["TokenCache", "check_token_text", "posix_clock", "stale_revocations"]

_V = TypeVar("_V")
_K = TypeVar("_K")


class TokenCache(Generic[_V]):
    """At most ``size`` validated tokens (0: none kept); ``hits`` and ``misses`` count lookups.

    ``entries`` maps a token to ``(value, keys, revocations, expiry)``; a caller with a hotter
    path than :meth:`hit` may read it directly with the same rule (and count its own hits).
    Times are POSIX seconds (:func:`posix_clock`).
    """

    def __init__(self, size: int, lock: threading.Lock | None = None) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[_V, object, object, float]] = OrderedDict()
        self.lock = lock if lock is not None else threading.Lock()
        self._seen: tuple[object, object] = (None, None)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def hit(self, token: str, keys: object, revocations: object, now: float) -> _V | None:
        """The value kept for ``token`` if it was checked against these snapshots and is
        unexpired at ``now``; None (a miss) otherwise."""
        entry = self.entries.get(token)
        if entry is None or entry[1] is not keys or entry[2] is not revocations:
            return None
        if not now < entry[3]:
            return None
        try:  # noqa: SIM105 (contextlib.suppress costs ~0.3 us on the hot path)
            self.entries.move_to_end(token)
        except KeyError:  # evicted meanwhile by another thread
            pass
        self.hits += 1
        return entry[0]

    def begin_miss(
        self,
        token: str,
        keys: _K,
        revocations: object,
        on_change: Callable[[_K], None] | None = None,
    ) -> None:
        """Before validating ``token`` afresh: drop every entry when the snapshots changed (and
        call ``on_change(keys)`` under the lock, for what the caller derived from the old
        ones), and ``token``'s own entry (past exp, the leeway may still accept it)."""
        seen = self._seen
        if keys is not seen[0] or revocations is not seen[1]:
            with self.lock:
                if keys is not self._seen[0] or revocations is not self._seen[1]:
                    self.entries.clear()  # every entry belongs to an older snapshot
                    self._seen = (keys, revocations)
                    if on_change is not None:
                        on_change(keys)
        if self.size:
            with self.lock:
                self.entries.pop(token, None)
        self.misses += 1

    def keep(  # noqa: PLR0917 (positional: it runs on every miss of a validator)
        self,
        token: str,
        value: _V,
        expiry: float,
        keys: object,
        revocations: object,
        now: float,
    ) -> None:
        """Keep a freshly validated token, if it is unexpired and its snapshots still current
        (a newer snapshot has cleared the cache already and must not get an old entry)."""
        if not self.size or not now < expiry:
            return
        with self.lock:
            if self._seen[0] is keys and self._seen[1] is revocations:
                self.entries[token] = (value, keys, revocations, expiry)
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)


def posix_clock(clock: Clock) -> Callable[[], float]:
    """``clock`` read as POSIX seconds. The system clock is read with ``time.time`` itself (the
    source of ``datetime.now``), without building a datetime and taking it apart again on every
    token; any other clock (a test's fake one) through its ``now()``."""
    if type(clock) is SystemClock:
        return time.time
    return lambda: clock.now().timestamp()


def check_token_text(token: object, max_bytes: int) -> None:
    """What a validator checks before anything else: text, of bounded length."""
    if not isinstance(token, str):
        raise InvalidToken("the token must be text", reason="malformed")
    if len(token) > max_bytes:
        raise InvalidToken(f"the token is longer than {max_bytes} bytes", reason="too-large")


def stale_revocations(exc: Unavailable) -> InvalidToken:
    """The refusal when the revocation feed is stale: what is revoked is unknown, so the
    validator fails closed."""
    return InvalidToken(f"cannot check revocations: {exc}", reason="revocations-stale")
