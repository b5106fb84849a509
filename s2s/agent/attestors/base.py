"""What a workload attestor is to the Workload API, and what the agent gives one to build it.

An attestor turns a caller (:class:`~s2s.agent.attestors.peercred.PeerCredentials`) into
selectors. ``admit`` and ``attest`` block (they read ``/proc``, may hash a binary) and run on the
Workload API's attestation threads; ``recheck`` only reads ``/proc`` and runs on its event loop.
Every selector kind an attestor produces is registered in
:data:`s2s.core.selectors.SELECTOR_KINDS`, so that entries can name it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from s2s.agent.attestors.peercred import PeerCredentials
from s2s.core.errors import InvalidConfig
from s2s.core.selectors import Selector

__all__ = ["Attestor", "AttestorFactory", "AttestorOptions"]


class Attestor(Protocol):
    """Derives a caller's selectors (``UnixAttestor``)."""

    def admit(self, peer: PeerCredentials) -> PeerCredentials:
        """``peer`` as it is when its connection is accepted (``AttestationFailed``)."""
        ...

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]:
        """Selectors for a call; ``NotAuthorized`` if the caller is not the admitted process."""
        ...

    def recheck(self, peer: PeerCredentials) -> Hashable:
        """The caller is still the admitted process (errors as ``attest``), selectors aside.

        Cheap (no hashing: it runs on the Workload API's event loop, on every call). Returns a
        reading of what the selectors derive from: when two readings taken before and after an
        :meth:`attest` are equal, later calls whose reading is equal again get that attestation's
        selectors (for at most the re-attestation interval)."""
        ...


@dataclass(frozen=True, slots=True)
class AttestorOptions:
    """The agent settings attestors are built from (see :data:`AttestorFactory`).

    ``sha256_max_bytes``: biggest binary hashed for ``unix:sha256`` (0 = no limit).
    ``proc_root``: where ``/proc`` is (tests point it at a directory of their own).
    """

    sha256_max_bytes: int
    proc_root: str = "/proc"

    def __post_init__(self) -> None:
        if self.sha256_max_bytes < 0:
            raise InvalidConfig("sha256_max_bytes must be 0 (no limit) or a positive size")


AttestorFactory = Callable[[AttestorOptions], Attestor]
"""Builds one attestor from the agent's settings; registered by name in
:mod:`s2s.agent.attestors.registry`."""
