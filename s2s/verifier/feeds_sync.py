"""Revocation feeds for code that is not asyncio: the feed runs on a private loop thread.

:meth:`SyncRevocationFeed.current` reads the feed's last immutable set (and fails closed with
:class:`~s2s.verifier.feeds.RevocationsStale` as the feed does), so blocking servers and any
thread can pass it as ``revocations=`` to the TLS contexts, ``PyOpenSSLTls`` or ``JwtValidator``.

    with open_etcd_revocations("10.0.0.5:2379", TrustDomain("example.org")) as revocations:
        ctx = server_context(source, authorize=authorize_any(), revocations=revocations)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.channel import EtcdTls
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.feeds_etcd import EtcdRevocationFeed
from s2s.verifier.sync import LoopThread
from s2s.verifier.x509context import X509SourceLike

__all__ = ["SyncRevocationFeed", "open_ca_revocations", "open_etcd_revocations"]

FeedFactory = Callable[[], Awaitable[RevocationFeed]]


class SyncRevocationFeed:
    """A :class:`RevocationFeed` made by ``factory`` (a coroutine function, run on the loop
    thread) and started there; ``Unavailable`` if it does not sync within ``timeout``."""

    def __init__(self, factory: FeedFactory, *, timeout: float = 10.0) -> None:
        self._thread: LoopThread | None = LoopThread("s2s-revocation-feed")
        try:
            self.feed = self._thread.run(_started(factory, timeout), timeout + 5)
        except BaseException:
            self._thread.stop()
            self._thread = None
            raise

    def current(self) -> RevocationSet:
        """The feed's set (any thread; ``RevocationsStale`` past the staleness limit)."""
        return self.feed.current()

    def age(self) -> float | None:
        return self.feed.age()

    def is_stale(self) -> bool:
        return self.feed.is_stale()

    def close(self) -> None:
        """Stop the feed and its thread (idempotent)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.run(self.feed.stop(), 10)
            thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _started(factory: FeedFactory, timeout: float) -> RevocationFeed:
    feed = await factory()
    try:
        await feed.start(timeout)
    except BaseException:
        await feed.stop()
        raise
    return feed


def open_etcd_revocations(
    endpoints: str | Sequence[str],
    trust_domain: TrustDomain,
    *,
    tls: EtcdTls | None = None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> SyncRevocationFeed:
    """An :class:`EtcdRevocationFeed` on its own thread (``kwargs``: ``max_staleness``, ...)."""

    async def make() -> RevocationFeed:
        return await EtcdRevocationFeed.connect(endpoints, trust_domain, tls=tls, **kwargs)

    return SyncRevocationFeed(make, timeout=timeout)


def open_ca_revocations(
    urls: str | Sequence[str],
    source: X509SourceLike,
    *,
    timeout: float = 10.0,
    **kwargs: Any,
) -> SyncRevocationFeed:
    """A :class:`CaRevocationFeed` over HTTPS on its own thread; ``source`` (e.g. a
    ``SyncX509Source``) gives the client SVID and the bundle that verifies the CA."""

    async def make() -> RevocationFeed:
        return CaRevocationFeed.over_https(urls, source, **kwargs)

    return SyncRevocationFeed(make, timeout=timeout)
