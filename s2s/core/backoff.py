"""Retry timing without I/O: how long to pause before asking a server again.

Pure functions of their inputs; the caller passes ``rand`` (uniform in [0, 1)) for the jitter.
"""

from __future__ import annotations

__all__ = ["early_answer_pause"]

_MAX_EARLY_PAUSE = 1.0


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
