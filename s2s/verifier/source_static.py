"""An in-memory X.509 source: the snapshot is whatever the owner last set.

Real and small: tests feed it from :class:`s2s.testing.TestAuthority`, and a process that gets its
SVID some other way can drive the TLS contexts with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidRequest
from s2s.core.x509svid import X509Svid
from s2s.verifier.source_common import Subscribers
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = ["StaticX509Source"]


class StaticX509Source:
    """An :class:`~s2s.verifier.x509context.X509SourceLike` whose snapshot is set by hand.

    Setters notify subscribers synchronously, in the caller's thread, in subscription order.
    """

    def __init__(self, context: X509Context) -> None:
        _check(context)
        self._context = context
        self._lock = threading.Lock()
        self._subscribers: Subscribers[X509Context] = Subscribers()

    def current(self) -> X509Context:
        return self._context

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    def set(self, context: X509Context) -> None:
        """Replace the snapshot and notify every subscriber."""
        _check(context)
        with self._lock:
            self._context = context
            callbacks = self._subscribers.callbacks()
        for callback in callbacks:  # unlike Subscribers.notify, a failing callback raises here
            callback(context)

    def set_svids(self, *svids: X509Svid) -> None:
        self.set(replace(self._context, svids=tuple(svids)))

    def set_bundles(self, bundles: BundleSet) -> None:
        self.set(replace(self._context, bundles=bundles))


def _check(context: X509Context) -> None:
    for svid in context.svids:
        if svid.private_key is None:
            raise InvalidRequest(f"the SVID of {svid.spiffe_id} has no private key")
