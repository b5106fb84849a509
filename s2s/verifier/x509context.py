"""The shape of an X.509 source: what the TLS contexts and integrations need from one.

Every source (Workload API, PEM files, the sync facade, :class:`StaticX509Source` for tests)
implements :class:`X509SourceLike`: a current snapshot, and change notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from s2s.core.bundle import BundleSet
from s2s.core.errors import Unavailable
from s2s.core.x509svid import X509Svid

__all__ = ["X509Callback", "X509Context", "X509SourceLike"]


@dataclass(frozen=True, slots=True)
class X509Context:
    """One snapshot: this workload's X509-SVIDs (with keys) and the bundles it trusts."""

    svids: tuple[X509Svid, ...]
    bundles: BundleSet

    @property
    def default_svid(self) -> X509Svid:
        """The first SVID (the Workload API's default); Unavailable if there is none."""
        if not self.svids:
            raise Unavailable("the X.509 source holds no SVID")
        return self.svids[0]


X509Callback = Callable[[X509Context], None]


@runtime_checkable
class X509SourceLike(Protocol):
    """A source of X.509 contexts; see docs/internal-contracts.md, "s2s/verifier sources"."""

    def current(self) -> X509Context:
        """The last good snapshot (no I/O); Unavailable before the first update."""
        ...

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        """Call ``callback(context)`` after every change; returns an unsubscribe function."""
        ...
