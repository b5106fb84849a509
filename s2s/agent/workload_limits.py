"""Bounds on what local callers can make the Workload API hold: connections, idle time, threads.

Any local process may connect to the Workload API socket (it is mode 0777), so a careless or
hostile one could open connections until the agent runs out of file descriptors, or keep other
callers waiting behind its attestations. :class:`WorkloadLimits` are the bounds the server
enforces and :class:`ConnectionCounter` is the I/O-free bookkeeping of the connection limits:
one uid holding its limit never stops another uid from connecting (only the total can).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from s2s.core.errors import InvalidConfig

__all__ = [
    "DEFAULT_ATTEST_WORKERS",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_UID",
    "DEFAULT_REATTEST_INTERVAL",
    "REFUSED_TOTAL",
    "REFUSED_UID",
    "ConnectionCounter",
    "WorkloadLimits",
]

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_MAX_CONNECTIONS_PER_UID: Final = 64
DEFAULT_IDLE_TIMEOUT: Final = 300.0  # seconds without a call before a connection is closed
DEFAULT_ATTEST_WORKERS: Final = 4
DEFAULT_REATTEST_INTERVAL: Final = 30.0

REFUSED_TOTAL: Final = "total_limit"  # reasons a connection is refused (metric labels)
REFUSED_UID: Final = "uid_limit"


@dataclass(frozen=True, slots=True)
class WorkloadLimits:
    """What the Workload API server allows; the defaults suit a node with a few hundred
    workloads.

    ``idle_timeout``: a connection with no call in progress for this long is closed (an open
    stream is a call in progress). ``attest_workers`` threads attest callers, at most
    ``attest_per_uid`` of them for one uid. ``reattest_interval``: an open stream's caller is
    attested again at least this often (and before every message it is sent).
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    attest_workers: int = DEFAULT_ATTEST_WORKERS
    attest_per_uid: int = DEFAULT_ATTEST_WORKERS // 2
    reattest_interval: float = DEFAULT_REATTEST_INTERVAL

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_uid < 1:
            raise InvalidConfig("connection limits must be at least 1")
        if self.max_connections_per_uid > self.max_connections:
            raise InvalidConfig(
                f"the per-uid connection limit ({self.max_connections_per_uid}) is above the "
                f"total ({self.max_connections})"
            )
        if not self.idle_timeout > 0 or not self.reattest_interval > 0:
            raise InvalidConfig("idle_timeout and reattest_interval must be positive")
        if self.attest_workers < 1 or not 1 <= self.attest_per_uid <= self.attest_workers:
            raise InvalidConfig("attestation needs 1 <= attest_per_uid <= attest_workers")


class ConnectionCounter:
    """Open connections, in total and per uid, against a :class:`WorkloadLimits`.

    >>> counter = ConnectionCounter(WorkloadLimits(max_connections=3, max_connections_per_uid=2))
    >>> [counter.admit(1000) for _ in range(3)]
    [None, None, 'uid_limit']
    >>> counter.admit(1001), counter.admit(1002)
    (None, 'total_limit')
    >>> counter.release(1000); counter.admit(1000)
    """

    def __init__(self, limits: WorkloadLimits) -> None:
        self._limits = limits
        self._per_uid: dict[int, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def held_by(self, uid: int) -> int:
        return self._per_uid.get(uid, 0)

    def admit(self, uid: int) -> str | None:
        """Count a new connection of ``uid``, or return why it is refused."""
        if self._per_uid.get(uid, 0) >= self._limits.max_connections_per_uid:
            return REFUSED_UID
        if self._total >= self._limits.max_connections:
            return REFUSED_TOTAL
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        self._total += 1
        return None

    def release(self, uid: int) -> None:
        """Forget one connection of ``uid`` (admitted earlier)."""
        left = self._per_uid.get(uid, 0) - 1
        if left < 0:
            return
        self._total -= 1
        if left:
            self._per_uid[uid] = left
        else:
            del self._per_uid[uid]
