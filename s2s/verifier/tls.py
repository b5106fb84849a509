"""stdlib ``ssl`` contexts for SPIFFE mTLS that follow an X.509 source.

Both contexts require TLS 1.2+, a peer certificate (``CERT_REQUIRED``) and do no hostname check
(identities are SPIFFE IDs). Their handshakes are verified by :class:`PeerVerifier` inside
``do_handshake``: a rejected peer makes the handshake itself fail, so asyncio, aiohttp and
blocking sockets never hand the connection to the application.

Rotation: the context you hold (the *front*) stays the same object for life and keeps working;
every change of the source builds a new, never-modified context for the newest snapshot (SVID
and trust anchors; ``load_verify_locations`` could only *add* roots). Each new connection is
wrapped with the newest one (``sslobject_class``/``sslsocket_class`` substitute it at wrap time),
and a server also swaps it in from its ``sni_callback`` (OpenSSL calls it for every ClientHello,
with or without SNI). Nothing is mutated under a handshake running in another thread (reloading a
live ``SSLContext`` from the source's thread could hand a handshake a certificate without its
key). ``verify_mode`` is read from the front context, so the front keeps ``CERT_REQUIRED``.
``ctx.s2s.current()`` is the newest built context.

Revocations: ``revocations=`` left out means the source's own (``X509Source.revocations``, the
agent's CRLs); a source without any (``StaticX509Source``, ``PemFileX509Source``) needs an
explicit lookup or ``revocations=no_revocation_check()``, else :class:`InvalidConfig`
(:mod:`s2s.verifier.revocation_choice`).

py-spiffe's ``X509Source`` is accepted as a source (:mod:`s2s.verifier.py_spiffe`).
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

from s2s.core.clock import Clock
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerVerifier
from s2s.verifier.py_spiffe import x509_source_of
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = ["SpiffeSSLContext", "TlsState", "client_context", "peer_spiffe_id_of", "server_context"]

log = logging.getLogger(__name__)
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _SpiffeHandshake:
    """What both wrappers share: the newest context at creation, the SPIFFE check after it."""

    _s2s_verifier: ClassVar[PeerVerifier]
    _s2s_state: ClassVar[TlsState]
    peer_spiffe_id: SpiffeId | None = None

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs["context"] = cls._s2s_state.current()  # the newest snapshot, never mutated
        return super()._create(*args, **kwargs)  # type: ignore[misc]

    def _checked(self, handshake: Callable[[], None], conn: ssl.SSLObject | ssl.SSLSocket) -> None:
        try:
            handshake()
        except _WANT:
            raise
        except ssl.SSLError as exc:
            raise self._s2s_verifier.handshake_failed(exc) from exc
        self.peer_spiffe_id = self._s2s_verifier.verify(conn)


class _VerifyingSSLObject(_SpiffeHandshake, ssl.SSLObject):
    """An SSLObject (asyncio, aiohttp) whose handshake ends with the SPIFFE peer check."""

    def do_handshake(self) -> None:
        self._checked(super().do_handshake, self)


class _VerifyingSSLSocket(_SpiffeHandshake, ssl.SSLSocket):
    """An SSLSocket (blocking code) whose handshake ends with the SPIFFE peer check."""

    def do_handshake(self, block: bool = False) -> None:
        self._checked(functools.partial(super().do_handshake, block), self)


class SpiffeSSLContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` driven by an X.509 source; ``s2s`` holds its state."""

    s2s: TlsState


class TlsState:
    """What keeps a context current: the source subscription, the verifier, the built context."""

    def __init__(
        self, source: X509SourceLike, verifier: PeerVerifier, *, server_side: bool
    ) -> None:
        self.source = source
        self.verifier = verifier
        self.server_side = server_side
        bound = {"_s2s_verifier": verifier, "_s2s_state": self}
        self._object_class = type("SpiffeSSLObject", (_VerifyingSSLObject,), bound)
        self._socket_class = type("SpiffeSSLSocket", (_VerifyingSSLSocket,), bound)
        self._snapshot = source.current()
        self._built = self.build(self._snapshot)
        self._unsubscribe = source.subscribe(self._changed)

    def build(self, snapshot: X509Context) -> SpiffeSSLContext:
        """A verifying context for ``snapshot``; it is never modified afterwards."""
        ctx = _build(snapshot, server_side=self.server_side)
        ctx.s2s = self
        ctx.sslobject_class = self._object_class
        ctx.sslsocket_class = self._socket_class
        return ctx

    def current(self) -> SpiffeSSLContext:
        """A context built for the newest snapshot (a new object after each change)."""
        return self._built

    def close(self) -> None:
        """Stop following the source (the contexts keep their last certificates)."""
        self._unsubscribe()

    def _changed(self, snapshot: X509Context) -> None:
        try:
            built = self.build(snapshot)
        except Exception:
            log.exception("tls.reload_failed", extra={"server_side": self.server_side})
            return  # keep the last good context
        self._snapshot, self._built = snapshot, built
        log.info("tls.reloaded", extra={"serial": f"{snapshot.default_svid.serial:x}"})

    def _select(self, ssl_obj: Any, server_name: str | None, front: ssl.SSLContext) -> None:
        ssl_obj.context = self._built


def server_context(
    source: X509SourceLike,
    *,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    clock: Clock | None = None,
    metrics: PeerMetrics | None = None,
) -> SpiffeSSLContext:
    """A server context that requires client SVIDs and follows ``source``.

    ``authorize`` is required (pass :func:`authorize_any` explicitly to accept any SVID that
    verifies to the bundle of its own trust domain, federated ones included). ``revocations``
    defaults to the source's own (``X509Source.revocations``); a source without any needs a
    lookup or ``revocations=no_revocation_check()`` (:class:`InvalidConfig` otherwise). Rejected
    clients fail the handshake; :func:`peer_spiffe_id_of` reads the accepted ID.
    """
    return _context(
        "server_context",
        source,
        server_side=True,
        authorize=authorize,
        revocations=revocations,
        clock=clock,
        metrics=metrics,
    )


def client_context(
    source: X509SourceLike,
    *,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    clock: Clock | None = None,
    metrics: PeerMetrics | None = None,
) -> SpiffeSSLContext:
    """A client context that presents our SVID and checks the server's SPIFFE ID.

    ``authorize`` is required: ``authorize_id(...)`` pins the server. ``revocations`` as for
    :func:`server_context`.
    """
    return _context(
        "client_context",
        source,
        server_side=False,
        authorize=authorize,
        revocations=revocations,
        clock=clock,
        metrics=metrics,
    )


def peer_spiffe_id_of(ssl_object: object) -> SpiffeId | None:
    """The SPIFFE ID verified during the handshake of ``ssl_object`` (None if not verified)."""
    value = getattr(ssl_object, "peer_spiffe_id", None)
    return value if isinstance(value, SpiffeId) else None


def _context(
    what: str,
    source: X509SourceLike,
    *,
    server_side: bool,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None,
    clock: Clock | None,
    metrics: PeerMetrics | None,
) -> SpiffeSSLContext:
    checked = resolve_revocations(source, revocations, what=what)
    followed = x509_source_of(source, what=what)  # py-spiffe's X509Source is accepted as is
    verifier = PeerVerifier(
        lambda: followed.current().bundles,
        authorize=authorize,
        revocations=checked,
        clock=clock,
        metrics=metrics,
    )
    state = TlsState(followed, verifier, server_side=server_side)
    front = state.build(followed.current())
    if server_side:
        front.sni_callback = state._select
    return front


def _build(snapshot: X509Context, *, server_side: bool) -> SpiffeSSLContext:
    ctx = SpiffeSSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server_side:
        # A resumed session has no verified chain to re-check; always do a full handshake.
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    svid = snapshot.default_svid
    load_cert_chain_from_memory(ctx, svid.chain_pem(), svid.key_pem())
    roots = _roots_pem(snapshot)
    if roots:
        ctx.load_verify_locations(cadata=roots)
    return ctx


def _roots_pem(snapshot: X509Context) -> str:
    return "".join(b.x509_pem().decode() for b in snapshot.bundles if b.x509_authorities)
