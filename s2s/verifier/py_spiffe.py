"""Sources of the official ``spiffe`` package (py-spiffe) as s2s verifier sources.

py-spiffe's ``X509Source`` and ``JwtSource`` have the names of ours but another shape
(``get_x509_context()``, ``subscribe_for_updates(callback)`` with no argument, their own
certificate and bundle types). :func:`from_py_spiffe` wraps one in an adapter that s2s accepts
anywhere it takes a source; :func:`server_context`, :func:`client_context`,
:func:`~s2s.verifier.aiohttp.spiffe_connector` and :class:`~s2s.verifier.jwt.JwtValidator`
wrap a py-spiffe source on their own (:func:`x509_source_of`, :func:`bundles_of`), so code that
already holds one passes it unchanged. An adapter follows its py-spiffe source until that source
is closed or the adapter's ``close()``; one made by a TLS context closes with the context
(``ctx.s2s.close()``).

The adapter keeps one converted snapshot (our :class:`X509Context` or :class:`BundleSet`) and
replaces it from py-spiffe's update callback, which runs on py-spiffe's watcher thread: the
conversion never runs on an event loop, and ``current()`` is a reference read (no lock, no I/O),
so an asyncio server reading it in a handshake never blocks. Each trust domain of py-spiffe's
bundle set becomes one :class:`Bundle` (federated bundles stay apart). A snapshot equal to the
last one does not notify subscribers (py-spiffe calls back on every Workload API message).

py-spiffe's sources carry no s2s revocations, so the verifier's rule applies: pass
``revocations=`` a lookup (``CaRevocationFeed``, ``EtcdRevocationFeed``, ...) or
``no_revocation_check()``, else :class:`InvalidConfig`.

The ``spiffe`` package is not imported here: a source is recognised by its class's module and
name, so s2s does not depend on py-spiffe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes

from s2s.core.bundle import Bundle, BundleSet, JwtAuthority
from s2s.core.errors import InvalidConfig, S2SError, Unavailable
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.verifier.source_common import Subscribers
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = [
    "PySpiffeJwtSource",
    "PySpiffeX509Source",
    "bundles_of",
    "from_py_spiffe",
    "is_py_spiffe_source",
    "x509_source_of",
]

_log = logging.getLogger(__name__)
_S = TypeVar("_S")


def is_py_spiffe_source(source: object) -> str | None:
    """``"x509"`` or ``"jwt"`` for a py-spiffe source (or a subclass of one), else None."""
    for cls in type(source).__mro__:
        if cls.__module__.split(".", 1)[0] != "spiffe":
            continue
        if cls.__name__ == "X509Source":
            return "x509"
        if cls.__name__ == "JwtSource":
            return "jwt"
    return None


def from_py_spiffe(source: Any) -> PySpiffeX509Source | PySpiffeJwtSource:
    """An s2s source over py-spiffe's ``X509Source`` or ``JwtSource``.

    The py-spiffe source must be started (its constructor blocks until the first update; in
    asyncio code build it with ``await asyncio.to_thread(X509Source, ...)``). Closing the adapter
    stops following it; closing the py-spiffe source stays the caller's job.
    """
    kind = is_py_spiffe_source(source)
    if kind == "x509":
        return PySpiffeX509Source(source)
    if kind == "jwt":
        return PySpiffeJwtSource(source)
    raise InvalidConfig(
        f"from_py_spiffe: {type(source).__name__} is not a py-spiffe X509Source or JwtSource"
    )


def x509_source_of(source: _S, *, what: str) -> _S | PySpiffeX509Source:
    """``source`` itself, or an adapter when it is py-spiffe's ``X509Source``."""
    kind = is_py_spiffe_source(source)
    if kind == "jwt":
        raise InvalidConfig(
            f"{what}: py-spiffe's JwtSource holds no X509-SVID; pass its X509Source"
        )
    if kind == "x509":  # made for one context: it stops following when that context closes
        return PySpiffeX509Source(source, close_with_last_subscriber=True)
    return source


def bundles_of(source: _S, *, what: str) -> _S | PySpiffeJwtSource:
    """``source`` itself, or an adapter when it is py-spiffe's ``JwtSource``."""
    kind = is_py_spiffe_source(source)
    if kind == "x509":
        raise InvalidConfig(
            f"{what}: py-spiffe's X509Source holds no JWT authorities; pass its JwtSource"
        )
    return PySpiffeJwtSource(source) if kind == "jwt" else source


class _Following:
    """Follows a py-spiffe source: converts on each update, keeps the last good snapshot."""

    _what = "update"

    def __init__(self, source: Any, *, close_with_last_subscriber: bool = False) -> None:
        self.py_spiffe_source = source
        self._close_with_last = close_with_last_subscriber
        self._lock = threading.Lock()  # one read-convert-install at a time, newest last
        self._subscribers: Subscribers[Any] = Subscribers()
        self._value: Any = None
        self._closed = False
        source.subscribe_for_updates(self._updated)  # before the first read: no update missed
        try:
            self._refresh(notify=False)
        except BaseException:
            source.unsubscribe_for_updates(self._updated)
            raise

    def _convert(self) -> Any:
        raise NotImplementedError

    def _refresh(self, *, notify: bool) -> None:
        with self._lock:
            try:
                value = self._convert()
            except S2SError:
                raise
            except Exception as exc:  # py-spiffe's own errors: closed, failed, bad material
                raise Unavailable(
                    f"the py-spiffe {type(self.py_spiffe_source).__name__} has no usable "
                    f"{self._what}: {exc}"
                ) from exc
            changed = value != self._value
            if changed:
                self._value = value
        if changed and notify:
            self._subscribers.notify(value)

    def _updated(self) -> None:
        if self._closed:
            return
        try:
            self._refresh(notify=True)
        except S2SError as exc:  # keep the last good snapshot, as our own sources do
            _log.warning("py_spiffe.update_failed", extra={"error": str(exc)})

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        unsubscribe = self._subscribers.subscribe(callback)

        def unsubscribe_and_maybe_close() -> None:
            unsubscribe()
            if self._close_with_last and not self._subscribers.callbacks():
                self.close()

        return unsubscribe_and_maybe_close

    def close(self) -> None:
        """Stop following the py-spiffe source (which stays open; close it yourself)."""
        if not self._closed:
            self._closed = True
            self.py_spiffe_source.unsubscribe_for_updates(self._updated)


class PySpiffeX509Source(_Following):
    """An :class:`~s2s.verifier.x509context.X509SourceLike` over py-spiffe's ``X509Source``.

    The SVID is the one py-spiffe picked (its default, or its ``svid_picker``'s choice).
    """

    _what = "X.509 context"

    def current(self) -> X509Context:
        value: X509Context = self._value
        return value

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return super().subscribe(callback)

    def _convert(self) -> X509Context:
        context = self.py_spiffe_source.get_x509_context()
        svid = context.default_svid  # py-spiffe's picked SVID
        ours = X509Svid(
            spiffe_id=SpiffeId.parse(str(svid.spiffe_id)),
            cert_chain=tuple(svid.cert_chain),
            private_key=svid.private_key,
        )
        bundles = BundleSet.of(
            *(
                Bundle(
                    trust_domain=TrustDomain.parse(b.trust_domain.name),
                    x509_authorities=_sorted_certs(b.x509_authorities),
                )
                for b in context.x509_bundle_set.bundles
            )
        )
        return X509Context(svids=(ours,), bundles=bundles)


class PySpiffeJwtSource(_Following):
    """A bundle lookup (``current() -> BundleSet``) over py-spiffe's ``JwtSource``.

    What :class:`~s2s.verifier.jwt.JwtValidator` needs: the JWT authorities of each trust
    domain, swapped whole on each change (so the validator's cache follows them).
    """

    _what = "JWT bundles"

    def current(self) -> BundleSet:
        value: BundleSet = self._value
        return value

    def subscribe(self, callback: Callable[[BundleSet], None]) -> Callable[[], None]:
        return super().subscribe(callback)

    def _convert(self) -> BundleSet:
        return BundleSet.of(
            *(
                Bundle(
                    trust_domain=TrustDomain.parse(b.trust_domain.name),
                    jwt_authorities=tuple(
                        JwtAuthority(kid=kid, public_key=key)
                        for kid, key in sorted(b.jwt_authorities.items())
                    ),
                )
                for b in self.py_spiffe_source.bundles
            )
        )


def _sorted_certs(certs: Any) -> tuple[Any, ...]:
    # py-spiffe keeps a set: order it so that equal bundles compare equal.
    return tuple(sorted(certs, key=lambda c: c.fingerprint(hashes.SHA256())))
