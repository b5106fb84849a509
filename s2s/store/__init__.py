"""s2s.store: the ``Store`` protocol for everything the CA keeps, and its backends."""

from __future__ import annotations

from s2s.store.base import Store
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    IssuedKind,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Setting,
    Topic,
)

__all__ = [
    "AgentRecord",
    "AuthorityKind",
    "AuthorityRecord",
    "AuthorityState",
    "IssuedKind",
    "IssuedSerial",
    "JoinTokenRecord",
    "PruneResult",
    "Setting",
    "Store",
    "Topic",
]
