"""The attestor the Workload API runs: every configured attestor, their selectors united.

A caller's selectors are the union of what each attestor derives; a caller any one of them
refuses (``AttestationFailed``, ``NotAuthorized``) is refused, so adding an attestor can add
selectors but never lets a caller past a check another attestor makes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from s2s.agent.attestors.base import Attestor
from s2s.agent.attestors.peercred import PeerCredentials
from s2s.core.errors import InvalidConfig
from s2s.core.selectors import Selector

__all__ = ["CompositeAttestor"]


class CompositeAttestor:
    """Runs ``attestors`` in order for every admission, call and recheck."""

    def __init__(self, attestors: Sequence[Attestor]) -> None:
        if not attestors:
            raise InvalidConfig("at least one workload attestor is needed")
        self._attestors = tuple(attestors)

    @property
    def attestors(self) -> tuple[Attestor, ...]:
        return self._attestors

    def admit(self, peer: PeerCredentials) -> PeerCredentials:
        """``peer`` as each attestor admits it, in turn (each may record what it saw)."""
        for attestor in self._attestors:
            peer = attestor.admit(peer)
        return peer

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]:
        """The union of every attestor's selectors for the caller."""
        if len(self._attestors) == 1:
            return self._attestors[0].attest(peer)
        return frozenset().union(*(attestor.attest(peer) for attestor in self._attestors))

    def recheck(self, peer: PeerCredentials) -> Hashable:
        """Every attestor's reading, in order (any refusal refuses)."""
        return tuple(attestor.recheck(peer) for attestor in self._attestors)
