"""Sources of SVIDs and bundles for the verifier: the Workload API, or PEM files without an agent.

:class:`X509Source` and :class:`JwtSource` keep one Workload API stream open (through
:class:`~s2s.verifier.workload_client.WorkloadApiClient`), reconnect with capped exponential
backoff and jitter when it breaks, keep the last good snapshot meanwhile, and call subscribers
when the snapshot changes. :class:`PemFileX509Source` reads a chain, a key and a bundle from files
and reloads them when their inode, size or mtime changes. All are asyncio objects; wrap them with
:mod:`s2s.verifier.sync` for threaded code.

    async with X509Source() as source:          # honours SPIFFE_ENDPOINT_SOCKET
        ctx = server_context(source, authorize=authorize_member_of(td))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.errors import InvalidConfig, InvalidRequest, S2SError, Unavailable
from s2s.core.revocation import RevocationSet
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid, check_x509_svid
from s2s.log import F
from s2s.verifier.revocations import parse_crls, revocation_set_from_crls
from s2s.verifier.workload_client import JwtSvid, WorkloadApiClient, X509Update
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "Backoff",
    "JwtSource",
    "PemFileX509Source",
    "X509Source",
]

DEFAULT_START_TIMEOUT = 10.0
_MAX_PEM_BYTES = 1 << 20
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial * 2**attempt``, at most ``maximum``."""

    initial: float = 0.1
    maximum: float = 5.0
    jitter: float = 0.2  # each delay is scaled by a factor in [1 - jitter, 1 + jitter]

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before retry ``attempt`` (0-based), given ``rand`` in [0, 1)."""
        base = min(self.maximum, self.initial * 2.0 ** min(attempt, 32))
        return min(self.maximum, base * (1 - self.jitter + 2 * self.jitter * rand))


class _Subscribers(Generic[_T]):
    """Callbacks run in order after each change; a failing callback is logged, not fatal."""

    def __init__(self) -> None:
        self._callbacks: tuple[Callable[[_T], None], ...] = ()
        self._lock = threading.Lock()  # subscribe/unsubscribe may come from other threads

    def subscribe(self, callback: Callable[[_T], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return unsubscribe

    def notify(self, value: _T) -> None:
        for callback in self._callbacks:
            try:
                callback(value)
            except Exception:
                _log.exception("source.subscriber_failed")


class _WatchedSource(Generic[_T]):
    """One Workload API watch kept alive: the machinery X509Source and JwtSource share."""

    _what = "update"

    def __init__(
        self,
        client: WorkloadApiClient | None,
        socket: str | None,
        backoff: Backoff,
        rand: Callable[[], float],
    ) -> None:
        self._client = client
        self._socket = socket
        self._backoff = backoff
        self._rand = rand
        self._value: _T | None = None
        self._subscribers: _Subscribers[_T] = _Subscribers()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._owns_client = False
        self._fatal: S2SError | None = None
        self.last_error: S2SError | None = None
        self.reconnects = 0

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Open the stream and wait for the first update; Unavailable after ``timeout`` s."""
        if self._task is None:
            if self._client is None:
                self._client, self._owns_client = WorkloadApiClient(self._socket), True
            self._task = asyncio.create_task(self._run(), name=f"s2s-{type(self).__name__}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
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
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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

    ``revocations`` follows the CRLs the agent sends, each checked against the bundle roots and
    our own chain's intermediates.
    """

    _what = "X.509 context"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        socket: str | None = None,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(client, socket, backoff, rand)
        self.revocations = CrlRevocations()
        self._x509_subscribers: _Subscribers[X509Context] = _Subscribers()

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
    """JWT bundles from the Workload API (a ``BundleLookup`` for :class:`JwtValidator`) and
    JWT-SVIDs for this workload."""

    _what = "JWT bundle"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        socket: str | None = None,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(client, socket, backoff, rand)

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


class CrlRevocations:
    """A ``RevocationLookup`` following the CRLs of X.509 updates; a bad CRL keeps the last set."""

    def __init__(self) -> None:
        self._current = RevocationSet.EMPTY
        self._crls: tuple[bytes, ...] = ()
        self.error: str | None = None

    def current(self) -> RevocationSet:
        return self._current

    def update(self, update: X509Update) -> None:
        if update.crls == self._crls:
            return
        trusted = [c for b in update.context.bundles for c in b.x509_authorities]
        trusted += [c for svid in update.context.svids for c in svid.cert_chain[1:]]
        try:
            crls = [crl for der in update.crls for crl in parse_crls(der)]
            new = revocation_set_from_crls(crls, trusted, version=self._current.version + 1)
        except S2SError as exc:
            self.error = str(exc)
            _log.error("source.crl_rejected", extra={F.ERROR: str(exc)})
            return
        self._current, self._crls, self.error = new, update.crls, None


class PemFileX509Source:
    """An ``X509SourceLike`` read from PEM files and reloaded when they change (no agent).

    ``chain`` holds the leaf then its intermediates, ``key`` the leaf's private key, ``bundle``
    the trusted roots of our trust domain (PEM) or a SPIFFE bundle (JSON). Files are checked every
    ``poll_interval`` seconds after :meth:`start`; a change that does not load (a half-written
    rotation, a key that does not match) keeps the last good snapshot and sets ``error``.
    """

    def __init__(
        self,
        chain: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self._paths = (Path(chain), Path(key), Path(bundle))
        self._interval = poll_interval
        self._subscribers: _Subscribers[X509Context] = _Subscribers()
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        try:
            self._stamp = self._file_stamp()
            self._context = self._load()
        except InvalidRequest as exc:
            raise InvalidConfig(f"cannot load the SVID files: {exc}") from exc

    def current(self) -> X509Context:
        return self._context

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Begin polling the files (the first snapshot was loaded by the constructor)."""
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="s2s-PemFileX509Source")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> PemFileX509Source:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reload(self) -> bool:
        """Reload if a file changed; True when a new snapshot was installed."""
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # a broken version is reported once, retried on the next change
            context = self._load()
        except InvalidRequest as exc:
            self.error = str(exc)
            _log.error("source.reload_failed", extra={F.ERROR: str(exc)})
            return False
        self.error = None
        if context == self._context:
            return False
        self._context = context
        _log.info("source.reloaded", extra={F.SPIFFE_ID: str(context.default_svid.spiffe_id)})
        self._subscribers.notify(context)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.reload()

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, self._paths))
        except OSError as exc:
            raise InvalidRequest(f"cannot stat {exc.filename}: {exc.strerror}") from exc

    def _load(self) -> X509Context:
        chain_pem, key_pem, bundle_data = (_read(p) for p in self._paths)
        try:
            chain = tuple(x509.load_pem_x509_certificates(chain_pem))
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"the chain or key file is not usable PEM: {exc}") from exc
        try:
            spiffe_id = check_x509_svid(chain)
        except S2SError as exc:
            raise InvalidRequest(f"{self._paths[0]} is not an X509-SVID: {exc}") from exc
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise InvalidRequest(f"{self._paths[1]} is not the key of {self._paths[0]}")
        bundle = _bundle(spiffe_id.trust_domain, bundle_data, self._paths[2])
        return X509Context((X509Svid(spiffe_id, chain, key),), BundleSet.of(bundle))


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _MAX_PEM_BYTES:
        raise InvalidRequest(f"{path} is larger than {_MAX_PEM_BYTES} bytes")
    return data


def _bundle(td: TrustDomain, data: bytes, path: Path) -> Bundle:
    try:
        if data.lstrip().startswith(b"{"):
            bundle = Bundle.decode(td, data)
        else:
            bundle = Bundle.from_x509_pem(td, data)
    except S2SError as exc:
        raise InvalidRequest(f"{path} is not a bundle: {exc}") from exc
    if not bundle.x509_authorities:
        raise InvalidRequest(f"{path} holds no root certificate")
    return bundle


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
