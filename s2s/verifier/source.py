"""Sources of SVIDs and bundles for the verifier: the Workload API, or PEM files without an agent.

:class:`X509Source` and :class:`JwtSource` keep one Workload API stream open (through
:class:`~s2s.verifier.workload_client.WorkloadApiClient`), reconnect with capped exponential
backoff and jitter when it breaks, keep the last good snapshot meanwhile, and call subscribers
when the snapshot changes. :class:`PemFileX509Source` reads a chain, a key and a bundle from files
and reloads them when their inode, size or mtime changes. All are asyncio objects; wrap them with
:mod:`s2s.verifier.sync` for threaded code. :class:`PemFileX509Source` lives in
:mod:`s2s.verifier.source_pem`; the subscriber list in
:mod:`s2s.verifier.source_common`.

    async with X509Source() as source:          # honours SPIFFE_ENDPOINT_SOCKET
        ctx = server_context(source, authorize=authorize_member_of(td))
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Final, Generic, Self, TypeVar

from s2s.aio import wait_event
from s2s.core.backoff import Backoff
from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock
from s2s.core.errors import InvalidRequest, S2SError, Unavailable
from s2s.core.spiffe_id import SpiffeId
from s2s.log import F
from s2s.verifier.crls import DEFAULT_CRL_GRACE, CrlBook, CrlLookup
from s2s.verifier.feeds import DEFAULT_MAX_STALENESS, RevocationsStale
from s2s.verifier.feeds_agent import AgentRevocationFeed
from s2s.verifier.revocations import parse_crls
from s2s.verifier.source_common import DEFAULT_START_TIMEOUT, Subscribers, cancel_task
from s2s.verifier.workload_client import JwtSvid, WorkloadApiClient, X509Update
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = [
    "DEFAULT_BACKOFF",
    "CrlRevocations",
    "JwtSource",
    "X509Source",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


# Reconnecting to the Workload API: 0.1 s doubling to 5 s, each delay scaled by 0.8 to 1.2.
DEFAULT_BACKOFF: Final = Backoff.proportional(initial=0.1, cap=5.0, jitter=0.2)


class _WatchedSource(Generic[_T]):
    """One Workload API watch kept alive: the machinery X509Source and JwtSource share."""

    _what = "update"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        socket: str | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._socket = socket
        self._backoff = backoff
        self._rand = rand
        self._value: _T | None = None
        self._subscribers: Subscribers[_T] = Subscribers()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._owns_client = False
        self._fatal: S2SError | None = None
        self.last_error: S2SError | None = None
        self.reconnects = 0
        self._setup()

    def _setup(self) -> None:
        """Subclass state, set up at the end of the constructor."""

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Open the stream and wait for the first update; Unavailable after ``timeout`` s."""
        if self._task is None:
            if self._client is None:
                self._client, self._owns_client = WorkloadApiClient(self._socket), True
            self._task = asyncio.create_task(self._run(), name=f"s2s-{type(self).__name__}")
        await wait_event(self._first, timeout)
        if self._value is None:
            error = self._fatal or self.last_error
            await self.close()
            if isinstance(error, InvalidRequest):
                raise error
            raise Unavailable(
                f"no {self._what} from the Workload API within {timeout:g} s"
                + (f": {error}" if error else "")
            )

    async def close(self) -> None:
        """Stop watching; the last snapshot stays readable."""
        task, self._task = self._task, None
        await cancel_task(task)
        if self._client is not None and self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _watch(self, client: WorkloadApiClient) -> AsyncIterator[_T]:
        raise NotImplementedError

    def _install(self, value: _T) -> None:
        changed = value != self._value
        self._value = value
        self._first.set()
        if changed:
            self._subscribers.notify(value)

    async def _run(self) -> None:
        assert self._client is not None
        attempt = 0
        while True:
            try:
                async for value in self._watch(self._client):
                    self._install(value)
                    attempt = 0
            except InvalidRequest as exc:  # the agent refuses the request itself: retry is futile
                self._fatal = self.last_error = exc
                _log.error("source.watch_refused", extra={F.ERROR: str(exc)})
                self._first.set()  # wake start(): it raises if nothing came before
                return
            except S2SError as exc:
                self.last_error = exc
                _log.warning("source.watch_failed", extra={F.ERROR: str(exc)})
            except Exception as exc:  # a bug or a transport surprise: keep the snapshot, say so
                self.last_error = Unavailable(f"the watch crashed: {type(exc).__name__}: {exc}")
                _log.exception("source.watch_crashed")
            delay = self._backoff.delay(attempt, self._rand())
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(delay)


class X509Source(_WatchedSource[X509Update]):
    """This workload's X509-SVIDs and bundles from the Workload API (an ``X509SourceLike``).

    ``revocations`` (a :class:`CrlRevocations`) follows the CRLs the agent sends, kept per
    issuer and each verified against its issuer's certificate; a chain through an issuer whose
    CRL is past nextUpdate + ``crl_grace`` seconds (read from ``clock``) is refused as stale.
    ``require_crls=True`` also refuses chains through an issuer whose CRL the agent does not send
    (for agents known to publish them).
    """

    _what = "X.509 context"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        socket: str | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
        clock: Clock | None = None,
        crl_grace: float = DEFAULT_CRL_GRACE,
        require_crls: bool = False,
    ) -> None:
        self.revocations = CrlRevocations(clock=clock, grace=crl_grace, require_crls=require_crls)
        super().__init__(client, socket=socket, backoff=backoff, rand=rand)

    def _setup(self) -> None:
        self._x509_subscribers: Subscribers[X509Context] = Subscribers()

    def current(self) -> X509Context:
        """The last good snapshot; Unavailable before the first update."""
        if self._value is None:
            raise Unavailable("the X.509 source has not received an update yet")
        return self._value.context

    def crls(self) -> tuple[bytes, ...]:
        return () if self._value is None else self._value.crls

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return self._x509_subscribers.subscribe(callback)

    def _watch(self, client: WorkloadApiClient) -> AsyncIterator[X509Update]:
        return client.watch_x509_updates()

    def _install(self, value: X509Update) -> None:
        old = self._value
        self.revocations.update(value)
        super()._install(value)
        if old is None or old.context != value.context:
            self._x509_subscribers.notify(value.context)


class JwtSource(_WatchedSource[BundleSet]):
    """JWT bundles from the Workload API (a ``BundleLookup`` for :class:`JwtValidator`),
    JWT-SVIDs for this workload, and the agent's revocations.

    ``revocations`` (an :class:`AgentRevocationFeed`) follows the agent's s2s revocation stream
    on the same socket, so ``JwtValidator(source, ...)`` refuses tokens revoked by ``jti`` or by
    SPIFFE ID about a second after ``s2s-ca revoke``; it lags and then fails closed past
    ``revocations_max_staleness`` seconds (read from ``clock``) like the other feeds. :meth:`start`
    also waits (within its timeout) for the first revocation set, or for the agent to say it does
    not serve the stream, without failing on it.
    """

    _what = "JWT bundle"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        socket: str | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
        clock: Clock | None = None,
        revocations_max_staleness: float = DEFAULT_MAX_STALENESS,
    ) -> None:
        super().__init__(client, socket=socket, backoff=backoff, rand=rand)
        self.revocations = AgentRevocationFeed(
            lambda: self._client,
            delay=lambda attempt: self._backoff.delay(attempt, self._rand()),
            max_staleness=revocations_max_staleness,
            clock=clock,
        )

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Open the bundle and revocation streams; wait for the bundles (Unavailable after
        ``timeout`` s) and, within what is left of it, for the first revocation set."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        if self._client is None:  # one client (one channel) for both streams
            self._client, self._owns_client = WorkloadApiClient(self._socket), True
        self.revocations.ensure_started()
        await super().start(timeout)
        left = max(0.0, timeout - (loop.time() - began))
        await wait_event(self.revocations.settled, left)
        if not self.revocations.settled.is_set():
            _log.warning(
                "source.revocations_pending",
                extra={F.ERROR: "no revocation set from the agent yet; tokens are refused "
                       "(revocations-stale) until it arrives"},
            )  # fmt: skip

    async def close(self) -> None:
        """Stop both streams; the last bundles and revocations stay readable."""
        await self.revocations.stop()
        await super().close()

    def current(self) -> BundleSet:
        """The last good JWT bundle set; Unavailable before the first update."""
        if self._value is None:
            raise Unavailable("the JWT source has not received bundles yet")
        return self._value

    def subscribe(self, callback: Callable[[BundleSet], None]) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    async def fetch_jwt_svid(
        self, audience: str | Sequence[str], spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """A JWT-SVID of this workload (the default identity unless ``spiffe_id``)."""
        if self._client is None:
            raise Unavailable("the JWT source is not started")
        return await self._client.fetch_jwt_svid(audience, spiffe_id)

    def _watch(self, client: WorkloadApiClient) -> AsyncIterator[BundleSet]:
        return client.watch_jwt_bundles()


class CrlRevocations(CrlLookup):
    """A revocation lookup following the CRLs of X.509 updates from the agent.

    The CRLs are kept per issuer (:mod:`s2s.verifier.crls`): verified at once against the
    bundles' roots and our own chain's intermediates, or, for an intermediate we do not hold
    (another CA replica's, the prepared or previous one), when a peer chain through it is
    checked. :meth:`current_for_chain` answers, in this order:

    * before the first update: :class:`RevocationsStale` (nothing is known yet);
    * a chain through an issuer whose CRL is past nextUpdate + ``grace`` (RFC 5280 6.3.3):
      :class:`RevocationsStale` until a newer CRL of that issuer arrives. An update without CRLs,
      or whose CRL of an issuer is refused, keeps that issuer's last good CRL, which ages;
    * a chain through an issuer with no CRL held (the agent publishes none for it, or not yet):
      unknown, accepted and counted in ``unknown_issuers``, unless ``require_crls``;
    * otherwise the revoked serials, keyed by issuer.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        grace: float = DEFAULT_CRL_GRACE,
        require_crls: bool = False,
    ) -> None:
        super().__init__("agent's CRLs", clock=clock, grace=grace, require_crls=require_crls)
        self._updated = False
        self._version = 0
        self._crls: tuple[bytes, ...] = ()
        self.error: str | None = None

    def _unavailable(self) -> RevocationsStale | None:
        if not self._updated:
            return RevocationsStale("no X.509 update from the agent yet", age=None)
        return None

    @property
    def next_update(self) -> datetime | None:
        """The earliest nextUpdate of the verified CRLs; None before any CRL verified."""
        return min((v.next_update for v in self.book.verified.values()), default=None)

    def update(self, update: X509Update) -> None:
        """Take the CRLs of ``update`` (called by :class:`X509Source` for each update)."""
        self._updated = True
        if update.crls == self._crls:
            return
        if not update.crls:  # the agent dropped its CRLs: keep the last ones, let them age
            _log.warning("source.crls_missing", extra={F.ERROR: "the update carries no CRL"})
            return
        trusted = [c for b in update.context.bundles for c in b.x509_authorities]
        trusted += [c for svid in update.context.svids for c in svid.cert_chain[1:]]
        try:
            crls = [crl for der in update.crls for crl in parse_crls(der)]
        except S2SError as exc:
            self.error = str(exc)
            _log.error("source.crl_rejected", extra={F.ERROR: str(exc)})
            return
        book = CrlBook.build(
            crls, trusted, previous=self.book, version=self._version + 1, now=self.clock.now()
        )
        self.error = "; ".join(book.errors) or None
        if len(book.errors) == len(crls):  # nothing usable: keep the last good CRLs
            _log.error("source.crl_rejected", extra={F.ERROR: self.error})
            return
        self._version += 1
        self._install(book)
        self._crls = update.crls
