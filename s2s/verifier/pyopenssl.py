"""pyOpenSSL contexts for blocking servers and clients: bad peers are refused *inside* the
handshake by a verify callback (the stdlib has no verify callback).

OpenSSL calls the callback once per certificate, root first; each one is collected, and at the
leaf (depth 0) the whole chain goes through :meth:`PeerVerifier.verify_chain` (bundle of the
peer's own trust domain, X509-SVID profile, validity, revocation, authorizer). Returning False
makes OpenSSL send an alert and fail the handshake. Rotation builds a new ``Context`` per
snapshot; a server swaps it in from the servername callback, which OpenSSL calls for every
ClientHello. pyOpenSSL does not work with asyncio; use :mod:`s2s.verifier.tls` there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected, PeerVerifier, verify_chain
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = ["PyOpenSSLTls", "load_identity"]

log = logging.getLogger(__name__)
# X509_V_ERR_* -> reason, for chains OpenSSL itself refused (see peer._VERIFY_CODES).
_ERRNO = {
    2: "untrusted-root",
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted-root",
    19: "untrusted-root",
    20: "untrusted-root",
    21: "untrusted-root",
    23: "revoked",
}


class PyOpenSSLTls:
    """pyOpenSSL contexts that follow an X.509 source and verify SPIFFE peers in the handshake.

    ``context`` is the context to give ``SSL.Connection`` (for a server: the same object for
    life; for a client: the newest one). After a handshake, :meth:`peer_spiffe_id` returns the
    peer's verified ID. Call :meth:`close` to stop following the source. ``revocations``
    defaults to the source's own; a source without any needs a lookup or
    ``revocations=no_revocation_check()`` (:class:`InvalidConfig` otherwise).
    """

    def __init__(
        self,
        source: X509SourceLike,
        *,
        server_side: bool,
        authorize: Callable[[SpiffeId], bool],
        revocations: RevocationLookup | None = None,
        clock: Clock | None = None,
        metrics: PeerMetrics | None = None,
    ) -> None:
        self.source = source
        self.server_side = server_side
        self.verifier = PeerVerifier(
            lambda: source.current().bundles,
            authorize=authorize,
            revocations=resolve_revocations(source, revocations, what="PyOpenSSLTls"),
            clock=clock,
            metrics=metrics,
        )
        self._chains: dict[int, dict[int, bytes]] = {}
        self._lock = threading.Lock()
        self._latest = self._build(source.current())
        self._front = self._build(source.current())
        if server_side:
            self._front.set_tlsext_servername_callback(self._select)
        self._unsubscribe = source.subscribe(self._changed)

    @property
    def context(self) -> SSL.Context:
        return self._front if self.server_side else self._latest

    def close(self) -> None:
        self._unsubscribe()

    def peer_spiffe_id(self, conn: SSL.Connection) -> SpiffeId:
        """The verified peer ID of a completed handshake (PeerRejected if there is none)."""
        chain = conn.get_verified_chain()
        if not chain:
            raise PeerRejected("no verified peer chain", reason="no-certificate")
        return verify_chain(
            [c.to_cryptography().public_bytes(Encoding.DER) for c in chain],
            bundles=self.source.current().bundles,
            authorize=self.verifier.authorize,
            revocations=self.verifier.revocations,
            now=self.verifier._clock.now(),
        )

    def handshake(self, conn: SSL.Connection) -> SpiffeId:
        """Run the handshake of a blocking ``conn`` and return the peer's verified ID.

        A refused peer raises :class:`PeerRejected`; a missing client certificate is counted
        here (OpenSSL refuses it before any callback runs).
        """
        try:
            conn.do_handshake()
        except SSL.Error as exc:
            if "peer did not return a certificate" in str(exc):
                self.verifier.metrics.rejected("no-certificate")
                raise PeerRejected(
                    "the peer presented no certificate", reason="no-certificate"
                ) from exc
            raise
        return self.peer_spiffe_id(conn)

    def _changed(self, snapshot: X509Context) -> None:
        try:
            self._latest = self._build(snapshot)
        except Exception:
            log.exception("tls.reload_failed", extra={"server_side": self.server_side})

    def _select(self, conn: SSL.Connection) -> None:
        conn.set_context(self._latest)

    def _build(self, snapshot: X509Context) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        load_identity(ctx, snapshot)
        return ctx

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        key = id(conn)
        if not ok:
            with self._lock:
                self._chains.pop(key, None)
            self.verifier.metrics.rejected(_ERRNO.get(errno, "untrusted-root"))
            return False
        der = cert.to_cryptography().public_bytes(Encoding.DER)
        with self._lock:
            parts = self._chains.setdefault(key, {})
            parts[depth] = der
            if depth:
                return True
            self._chains.pop(key, None)
        try:
            sid = self.verifier.verify_chain([parts[d] for d in range(len(parts))])
        except (PeerRejected, KeyError):
            return False
        log.debug("tls.peer_verified", extra={"spiffe_id": str(sid)})
        return True


def load_identity(ctx: SSL.Context, snapshot: X509Context) -> None:
    """Present the snapshot's default SVID (chain and key, checked against each other) and give
    OpenSSL every bundle's roots to build chains with; the SPIFFE checks (the peer's own trust
    domain's bundle, never this merged pool) run in the verify callback."""
    svid = snapshot.default_svid
    if svid.private_key is None:
        raise InvalidConfig("the SVID of a TLS endpoint needs its private key")
    ctx.use_certificate(svid.leaf)
    for ca in svid.cert_chain[1:]:
        ctx.add_extra_chain_cert(ca)
    ctx.use_privatekey(svid.private_key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for bundle in snapshot.bundles:
        for root in bundle.x509_authorities:
            store.add_cert(crypto.X509.from_cryptography(root))
