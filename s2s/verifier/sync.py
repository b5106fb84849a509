"""A thread-safe synchronous facade over the asyncio sources, for code that is not asyncio.

The source runs on a private event loop in a daemon thread; reads (:meth:`current`) touch only the
last immutable snapshot, so any thread may call them without locking. Subscriber callbacks run on
that loop thread and must not block.

    with open_x509_source() as source:                  # honours SPIFFE_ENDPOINT_SOCKET
        ctx = server_context(source, authorize=authorize_id(peer_id))
        ...
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, Protocol, Self, TypeVar

from s2s.core.bundle import BundleSet
from s2s.core.errors import Unavailable
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.revocation_choice import source_revocations
from s2s.verifier.source import JwtSource, X509Source
from s2s.verifier.source_common import DEFAULT_START_TIMEOUT
from s2s.verifier.source_pem import PemFileX509Source
from s2s.verifier.workload_client import JwtSvid
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = [
    "LoopThread",
    "SyncJwtSource",
    "SyncX509Source",
    "open_jwt_source",
    "open_pem_source",
    "open_x509_source",
]

_T = TypeVar("_T")


class _Startable(Protocol):
    async def start(self, timeout: float = ...) -> None: ...
    async def close(self) -> None: ...


_S = TypeVar("_S", bound=_Startable)


class _AsyncX509(Protocol):
    def current(self) -> X509Context: ...
    def subscribe(self, callback: X509Callback) -> Callable[[], None]: ...
    async def start(self, timeout: float = ...) -> None: ...
    async def close(self) -> None: ...


class LoopThread:
    """An event loop running forever on its own daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "s2s-verifier-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop thread (deadlock)")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise Unavailable(f"the operation did not finish within {timeout:g} s") from None

    def stop(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _OnLoop(Generic[_S]):
    """An asyncio source started on a private :class:`LoopThread`, closed with it."""

    def __init__(self, factory: Callable[[], _S], timeout: float) -> None:
        self._loop = LoopThread()
        try:
            self._source: _S = self._loop.run(_started(factory, timeout))
        except BaseException:
            self._loop.stop()
            raise

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self._source.close())
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncX509Source(_OnLoop[_AsyncX509]):
    """An ``X509SourceLike`` usable from any thread: an asyncio source on a private loop.

    ``factory`` builds the asyncio source; it is called on the loop thread (a Workload API client
    must be created in the loop that uses it). The constructor waits for the first snapshot.
    """

    def __init__(
        self, factory: Callable[[], _AsyncX509], *, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        super().__init__(factory, timeout)

    def current(self) -> X509Context:
        return self._source.current()

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        """``callback(context)`` after each change, on the source's loop thread."""
        return self._source.subscribe(callback)

    @property
    def revocations(self) -> RevocationLookup | None:
        """The source's revocation lookup (``X509Source.revocations``: the agent's CRLs, any
        thread may read it), or None for a source without one (PEM files). The TLS contexts use
        it by default."""
        return source_revocations(self._source)


class SyncJwtSource(_OnLoop[JwtSource]):
    """JWT bundles (a ``BundleLookup`` for ``JwtValidator``) and JWT-SVIDs, from any thread."""

    def __init__(
        self, factory: Callable[[], JwtSource], *, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        self._timeout = timeout
        super().__init__(factory, timeout)

    def current(self) -> BundleSet:
        return self._source.current()

    @property
    def revocations(self) -> RevocationLookup | None:
        """The agent's revocations (``JwtSource.revocations``; any thread may read them):
        ``JwtValidator(source, ...)`` uses them by default."""
        return source_revocations(self._source)

    def subscribe(self, callback: Callable[[BundleSet], None]) -> Callable[[], None]:
        return self._source.subscribe(callback)

    def fetch_jwt_svid(
        self,
        audience: str | Sequence[str],
        spiffe_id: SpiffeId | str | None = None,
        *,
        timeout: float | None = None,
    ) -> JwtSvid:
        """A JWT-SVID of this workload for ``audience`` (blocks the calling thread)."""
        wait = self._timeout if timeout is None else timeout
        return self._loop.run(self._source.fetch_jwt_svid(audience, spiffe_id), wait)


async def _started(factory: Callable[[], _S], timeout: float) -> _S:
    source = factory()
    await source.start(timeout)
    return source


def open_x509_source(
    socket: str | None = None, *, timeout: float = DEFAULT_START_TIMEOUT
) -> SyncX509Source:
    """A synchronous X.509 source on the Workload API (``socket`` or SPIFFE_ENDPOINT_SOCKET)."""
    return SyncX509Source(lambda: X509Source(socket=socket), timeout=timeout)


def open_jwt_source(
    socket: str | None = None, *, timeout: float = DEFAULT_START_TIMEOUT
) -> SyncJwtSource:
    """A synchronous JWT source on the Workload API (``socket`` or SPIFFE_ENDPOINT_SOCKET)."""
    return SyncJwtSource(lambda: JwtSource(socket=socket), timeout=timeout)


def open_pem_source(
    chain: str,
    key: str,
    bundle: str,
    *,
    federated: Mapping[str, str] | None = None,
    poll_interval: float = 1.0,
) -> SyncX509Source:
    """A synchronous X.509 source over PEM files, reloaded when they change (``federated``: the
    bundle file of each federated trust domain, as for :class:`PemFileX509Source`)."""
    return SyncX509Source(
        lambda: PemFileX509Source(
            chain, key, bundle, federated=dict(federated or {}), poll_interval=poll_interval
        )
    )
