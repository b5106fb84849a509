"""asyncio mTLS on pyOpenSSL memory BIOs: the opt-in fast path for new handshakes.

Python's ``ssl`` is bound to the system OpenSSL; ``cryptography`` ships a newer one whose
handshakes cost markedly less CPU, reachable through pyOpenSSL. This module runs TLS over any
asyncio TCP transport with it: :class:`TlsProtocol` sits between the socket transport and the
application's protocol, feeds ciphertext into an ``SSL.Connection`` (``bio_write``), drives
``do_handshake``/``recv``/``send``/``shutdown`` and writes what OpenSSL produces (``bio_read``)
back to the socket. The application gets a :class:`TlsTransport` only once the handshake and the
SPIFFE checks have passed; a refused connection never reaches it.

The peer is checked *inside* the handshake, by OpenSSL's verify callback: OpenSSL first verifies
the chain against every root we hold; at the leaf the verified chain goes through
:class:`~s2s.verifier.peer.PeerVerifier` (the same checks as :mod:`s2s.verifier.tls`: the root
must belong to the bundle of the peer's own trust domain, X509-SVID profile, validity on the
injected clock, revocation, the authorizer). A refusal makes OpenSSL send an alert, so the
handshake fails on both sides; the local side raises :class:`PeerRejected` with the reason,
counted in the metrics like the stdlib path.

Policy, equal to :mod:`s2s.verifier.tls`: TLS 1.2 minimum (1.3 preferred), a peer certificate
required both ways, no hostname check, the stdlib's cipher string, no TLS 1.2 tickets and no
session cache (every connection is a full, fully checked handshake), the stdlib's key-exchange
groups (the newer OpenSSL would otherwise offer a post-quantum hybrid group first, which is
another policy). TLS 1.3 servers still send OpenSSL's two stateful tickets after the handshake
(neither pyOpenSSL nor ``cryptography`` exposes ``SSL_CTX_set_num_tickets``), but with the
session cache off no ticket can ever resume a session: every connection is a full handshake. No
renegotiation. Rotation: each change of the source builds a new, never-modified
``SSL.Context`` and every new connection takes the newest one.

Use it through :func:`start_server` / :func:`open_connection` (asyncio streams),
:func:`server_protocol_factory` / :func:`create_connection` (protocols), or the aiohttp site and
connector in :mod:`s2s.verifier.pyopenssl_aiohttp`. The stdlib path stays the default: this
transport passed the soak (``python -m bench.soak.pyopenssl``: no failed handshake through leaf,
intermediate and root rotations), but on the machines measured it saves little handshake CPU
(0.98-1.16x the stdlib path, bench/RESULTS.md) for a second TLS stack and two private hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig, Unavailable
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected, PeerVerifier
from s2s.verifier.py_spiffe import x509_source_of
from s2s.verifier.pyopenssl import load_identity
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = [
    "PyOpenSSLContext",
    "TlsFailed",
    "TlsInfo",
    "TlsProtocol",
    "TlsTransport",
    "client_context",
    "create_connection",
    "handshake_done",
    "open_connection",
    "server_context",
    "server_protocol_factory",
    "set_stdlib_groups",
    "start_server",
]

log = logging.getLogger(__name__)

# What Python's ssl module sets on every context (ssl._DEFAULT_CIPHERS), for TLS 1.2.
CIPHERS: Final = (
    b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)
# The key-exchange groups the system OpenSSL 3.0 offers by default (what the stdlib path uses).
GROUPS: Final = b"x25519:secp256r1:x448:secp521r1:secp384r1"
HANDSHAKE_TIMEOUT: Final = 60.0
_READ_SIZE = 64 * 1024  # below malloc's mmap threshold: no mmap/munmap per read
# OpenSSL X509_V_ERR_* codes -> our reasons (as s2s.verifier.peer reads them from ssl errors).
_VERIFY_CODES = {
    2: "untrusted-root",
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted-root",
    19: "untrusted-root",
    20: "untrusted-root",
    21: "untrusted-root",
    23: "revoked",
    24: "svid-ca-basic-constraints",
    26: "svid-leaf-eku",
}
_NO_CERTIFICATE = ("peer did not return a certificate", "certificate required")


class TlsFailed(Unavailable, ssl.SSLError):
    """A TLS connection failed for a reason other than a refused peer (the peer refused us, a
    protocol mismatch, a reset, a timeout). It is an :class:`ssl.SSLError` too."""

    code = "tls_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PyOpenSSLContext:
    """The pyOpenSSL side of a SPIFFE mTLS endpoint: follows an X.509 source and builds one
    never-modified ``SSL.Context`` per snapshot; :meth:`current` is the newest.

    Build it with :func:`server_context` or :func:`client_context`. :meth:`close` stops
    following the source.
    """

    def __init__(
        self, source: X509SourceLike, verifier: PeerVerifier, *, server_side: bool
    ) -> None:
        self.source = source
        self.verifier = verifier
        self.server_side = server_side
        self._built = self._build(source.current())
        self._unsubscribe = source.subscribe(self._changed)

    def current(self) -> SSL.Context:
        """The context built for the newest snapshot (a new object after each change)."""
        return self._built

    def close(self) -> None:
        """Stop following the source (the last context stays in use)."""
        self._unsubscribe()

    def _changed(self, snapshot: X509Context) -> None:
        try:
            built = self._build(snapshot)
        except Exception:
            log.exception("tls.reload_failed", extra={"server_side": self.server_side})
            return  # keep the last good context
        self._built = built
        log.info("tls.reloaded", extra={"serial": f"{snapshot.default_svid.serial:x}"})

    def _build(self, snapshot: X509Context) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_TICKET
            | SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_RENEGOTIATION  # the peer checked in the handshake stays the peer
        )
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_cipher_list(CIPHERS)
        set_stdlib_groups(ctx)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
        load_identity(ctx, snapshot)
        return ctx


def set_stdlib_groups(ctx: SSL.Context) -> None:
    """Offer and accept the key-exchange groups of the stdlib path (:data:`GROUPS`)."""
    # pyOpenSSL has no public setter for the group list; the binding has the OpenSSL call.
    from OpenSSL._util import lib  # noqa: PLC0415

    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is None or setter(ctx._context, GROUPS) != 1:
        raise InvalidConfig("this OpenSSL does not accept the stdlib's key-exchange groups")


def server_context(
    source: X509SourceLike,
    *,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    clock: Clock | None = None,
    metrics: PeerMetrics | None = None,
) -> PyOpenSSLContext:
    """A server side that requires client SVIDs, like :func:`s2s.verifier.tls.server_context`.

    ``authorize`` is required; ``revocations`` defaults to the source's own (a source without
    any needs a lookup or ``revocations=no_revocation_check()``, else :class:`InvalidConfig`).
    """
    return _context(
        "pyopenssl_tls.server_context",
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
) -> PyOpenSSLContext:
    """A client side that presents our SVID and checks the server's SPIFFE ID, like
    :func:`s2s.verifier.tls.client_context` (``authorize_id(...)`` pins the server)."""
    return _context(
        "pyopenssl_tls.client_context",
        source,
        server_side=False,
        authorize=authorize,
        revocations=revocations,
        clock=clock,
        metrics=metrics,
    )


def _context(
    what: str,
    source: X509SourceLike,
    *,
    server_side: bool,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None,
    clock: Clock | None,
    metrics: PeerMetrics | None,
) -> PyOpenSSLContext:
    checked = resolve_revocations(source, revocations, what=what)
    followed = x509_source_of(source, what=what)
    verifier = PeerVerifier(
        lambda: followed.current().bundles,
        authorize=authorize,
        revocations=checked,
        clock=clock,
        metrics=metrics,
    )
    return PyOpenSSLContext(followed, verifier, server_side=server_side)


def _verify_callback(
    conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """OpenSSL's per-certificate callback (root first, leaf last); False sends an alert."""
    proto = conn.get_app_data()
    if not isinstance(proto, TlsProtocol):
        return False
    return proto._verify(cert, errno, depth, ok)


class TlsInfo:
    """What ``transport.get_extra_info("ssl_object")`` returns: the verified peer ID (read by
    :func:`s2s.verifier.tls.peer_spiffe_id_of`, so the aiohttp helpers work unchanged), the
    protocol version, the cipher and the peer's leaf certificate."""

    __slots__ = ("connection", "peer_spiffe_id")

    def __init__(self, connection: SSL.Connection, peer_spiffe_id: SpiffeId) -> None:
        self.connection = connection
        self.peer_spiffe_id = peer_spiffe_id

    def version(self) -> str | None:
        return self.connection.get_protocol_version_name()

    def cipher(self) -> tuple[str | None, str | None, int | None]:
        c = self.connection
        return c.get_cipher_name(), c.get_cipher_version(), c.get_cipher_bits()

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The peer's leaf as DER (only ``binary_form=True`` is supported)."""
        if not binary_form:
            raise ValueError("only getpeercert(binary_form=True) is supported")
        cert = self.connection.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.public_bytes(Encoding.DER)


class TlsProtocol(asyncio.Protocol):
    """TLS between a socket transport (below) and an application protocol (above).

    ``app_factory`` is called once the handshake and the SPIFFE checks passed; :attr:`done`
    resolves then with the application protocol, or fails with :class:`PeerRejected` or
    :class:`TlsFailed`. Write backpressure from the socket reaches the application's
    ``pause_writing``/``resume_writing``; ``pause_reading`` on the application's transport
    stops reading from the socket.
    """

    def __init__(
        self,
        context: PyOpenSSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._context = context
        self._verifier = context.verifier
        self._app_factory = app_factory
        self._handshake_timeout = handshake_timeout
        self.done: asyncio.Future[asyncio.BaseProtocol] = asyncio.get_running_loop().create_future()
        self.app: asyncio.BaseProtocol | None = None
        self._app_transport: TlsTransport | None = None
        self._transport: asyncio.Transport | None = None
        self._conn: SSL.Connection | None = None
        self._chain: list[bytes] = []
        self._peer: SpiffeId | None = None
        self._rejection: PeerRejected | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_paused = False
        self._closing = False
        self._eof = False
        self._eof_told = False
        self._unflushed = 0
        self._flush_handle: asyncio.Handle | None = None

    # -- from the socket transport ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        conn = SSL.Connection(self._context.current(), None)
        conn.set_app_data(self)
        if self._context.server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        self._conn = conn
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._timed_out)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.bio_write(data)
        if self._app_transport is None:
            self._handshake()
        elif not self._read_paused:
            self._deliver()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._conn is not None:
            self._conn.bio_shutdown()
        if self._app_transport is None:
            self._fail(TlsFailed("the peer closed the connection during the handshake"))
            return False
        if not self._read_paused:
            self._deliver()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.done.done():
            self._fail(TlsFailed(f"the connection was lost during the handshake: {exc or 'EOF'}"))
        app, self.app = self.app, None
        if app is not None and self._app_transport is not None:
            self._app_transport._closed = True
            app.connection_lost(exc)
        self._conn = None

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- the handshake ------------------------------------------------------------------------

    def _verify(self, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self._reject(
                PeerRejected(
                    f"OpenSSL refused the peer's chain (X509 error {errno})",
                    reason=_VERIFY_CODES.get(errno, "untrusted-root"),
                )
            )
            return False
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        if depth:
            self._chain.append(der)  # root first
            return True
        chain = [der, *reversed(self._chain)]
        self._chain = []
        try:
            self._peer = self._verifier.verify_chain(chain)  # counted there
        except PeerRejected as exc:
            self._rejection = exc
            return False
        except Exception as exc:  # never let a bug accept a peer
            log.exception("tls.verify_failed")
            self._reject(PeerRejected(f"the peer check failed: {exc}", reason="handshake-failed"))
            return False
        return True

    def _reject(self, exc: PeerRejected) -> None:
        self._verifier.metrics.rejected(exc.reason)
        self._rejection = exc

    def _handshake(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._flush()  # the alert
            self._fail(self._handshake_error(exc))
            return
        held = self._context.server_side and conn.get_protocol_version_name() == "TLSv1.3"
        if not held:
            self._flush()
        # else: all that is left are TLS 1.3 tickets, which the client never waits for; they
        # leave with the first reply (or close_notify) instead of in a send of their own.
        if self._peer is None:  # no full verification ran (a resumed session): refuse
            self._reject(
                PeerRejected(
                    "the handshake completed without a verified peer chain",
                    reason="resumed-session",
                )
            )
            assert self._rejection is not None
            self._fail(self._rejection)
            return
        if self._timer is not None:
            self._timer.cancel()
        app = self._app_factory()
        self.app = app
        self._app_transport = TlsTransport(self, TlsInfo(conn, self._peer))
        app.connection_made(self._app_transport)
        if not self.done.done():
            self.done.set_result(app)
        if self._conn is not None and not self._read_paused:
            # application data that came with the last handshake flight
            self._deliver(flush=not held)

    def _handshake_error(self, exc: SSL.Error) -> ssl.SSLError:
        if self._rejection is not None:
            return self._rejection
        text = _describe(exc)
        if any(marker in text for marker in _NO_CERTIFICATE) and self._context.server_side:
            self._reject(PeerRejected("the peer presented no certificate", reason="no-certificate"))
            assert self._rejection is not None
            return self._rejection
        return TlsFailed(f"TLS handshake failed: {text}")

    def _fail(self, exc: ssl.SSLError) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: callers that gave up must not log it
        if self._transport is not None:
            self._transport.close()

    def _timed_out(self) -> None:
        if self._app_transport is None:
            self._fail(TlsFailed(f"TLS handshake timed out after {self._handshake_timeout} s"))
            if self._transport is not None:
                self._transport.abort()

    # -- after the handshake ------------------------------------------------------------------

    def _deliver(self, *, flush: bool = True) -> None:
        """Decrypt everything buffered and hand it to the application (``flush=False``: send
        what OpenSSL wrote only if a record was delivered)."""
        conn = self._conn
        while conn is not None and self.app is not None and not self._read_paused:
            try:
                data = conn.recv(_READ_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._flush()
                self._app_eof()
                return
            except SSL.SysCallError:  # EOF without close_notify
                self._app_eof()
                return
            except SSL.Error as exc:  # an alert from the peer (e.g. it refused our SVID)
                self._flush()
                self._abort_app(TlsFailed(f"TLS error: {_describe(exc)}"))
                return
            assert isinstance(self.app, asyncio.Protocol)
            flush = True
            self.app.data_received(data)
            conn = self._conn
        if flush:
            self._flush()
        if self._eof and self._conn is not None and self.app is not None and not self._read_paused:
            self._app_eof()

    def _app_eof(self) -> None:
        app = self.app
        if app is None or not isinstance(app, asyncio.Protocol):
            return
        if self._eof_told:  # close_notify, then the socket's EOF: tell the application once
            if self._eof:
                self.close()
            return
        self._eof_told = True
        keep_open = app.eof_received()
        if not keep_open or self._eof:
            self.close()

    def _abort_app(self, exc: Exception) -> None:
        app = self.app
        transport = self._transport
        if transport is not None:
            transport.abort()
        if app is not None and self._app_transport is not None and self.app is not None:
            self.app = None
            self._app_transport._closed = True
            app.connection_lost(exc)

    def _flush(self) -> None:
        conn, transport = self._conn, self._transport
        if conn is None or transport is None:
            return
        self._unflushed = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while True:
            try:
                out = conn.bio_read(_READ_SIZE)
            except SSL.WantReadError:
                return
            if transport.is_closing():
                return
            transport.write(out)
            if len(out) < _READ_SIZE:  # a memory BIO hands over all it holds
                return

    def write(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        if conn is None or self._closing:
            return
        view = memoryview(data)
        while view:
            sent = conn.send(view)
            view = view[sent:]
        # Writes of one loop iteration (and a close right after them) leave in one send;
        # past _READ_SIZE they leave at once, so a writer that never yields stays bounded.
        self._unflushed += len(data)
        if self._unflushed >= _READ_SIZE:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(SSL.Error):
                conn.shutdown()  # close_notify
            self._flush()
        if self._transport is not None:
            self._transport.close()

    def pause_reading(self) -> None:
        self._read_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._read_paused:
            return
        self._read_paused = False
        self._deliver()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()


class TlsTransport(asyncio.Transport):
    """The application's side of a :class:`TlsProtocol`: plaintext in, plaintext out."""

    def __init__(self, tls: TlsProtocol, info: TlsInfo) -> None:
        super().__init__()
        self._tls = tls
        self._info = info
        self._closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._info
        if name == "sslcontext":
            return self._tls._context.current()
        if name == "peercert":
            return self._info.getpeercert(binary_form=True)
        if name == "cipher":
            return self._info.cipher()
        below = self._tls._transport
        return default if below is None else below.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if data:
            self._tls.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close; close() sends close_notify")

    def is_closing(self) -> bool:
        below = self._tls._transport
        return self._closed or self._tls._closing or below is None or below.is_closing()

    def close(self) -> None:
        self._closed = True
        self._tls.close()

    def abort(self) -> None:
        self._closed = True
        below = self._tls._transport
        if below is not None:
            below.abort()

    def is_reading(self) -> bool:
        return not self._tls._read_paused

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        below = self._tls._transport
        if below is not None:
            below.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        below = self._tls._transport
        return 0 if below is None else below.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        below = self._tls._transport
        return (0, 0) if below is None else below.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._tls.app is not None
        return self._tls.app


def _describe(exc: SSL.Error) -> str:
    """OpenSSL's reason strings of ``exc`` (its error queue), or its text."""
    parts: list[str] = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(parts) or str(exc) or type(exc).__name__


def server_protocol_factory(
    context: PyOpenSSLContext,
    app_factory: Callable[[], asyncio.BaseProtocol],
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> Callable[[], TlsProtocol]:
    """A protocol factory for ``loop.create_server`` (plain TCP, no ``ssl=``): each connection
    is TLS with ``context``; ``app_factory`` builds the application protocol after a passed
    handshake."""
    if not context.server_side:
        raise InvalidConfig("server_protocol_factory needs a server_context()")

    def make() -> TlsProtocol:
        return TlsProtocol(context, app_factory, handshake_timeout=handshake_timeout)

    return make


async def create_connection(
    context: PyOpenSSLContext,
    app_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int | None = None,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    **kwargs: Any,
) -> tuple[TlsTransport, asyncio.BaseProtocol]:
    """``loop.create_connection`` with TLS from ``context`` (a :func:`client_context`).

    Returns once the handshake and the server's SPIFFE check passed; raises
    :class:`PeerRejected` or :class:`TlsFailed` otherwise. ``kwargs`` go to
    ``loop.create_connection`` (``sock=``, ``local_addr=``, ...; not ``ssl=``).
    """
    if context.server_side:
        raise InvalidConfig("create_connection needs a client_context()")
    loop = asyncio.get_running_loop()
    _, tls = await loop.create_connection(
        lambda: TlsProtocol(context, app_factory, handshake_timeout=handshake_timeout),
        host,  # type: ignore[arg-type]  # None with sock=
        port,  # type: ignore[arg-type]
        **kwargs,
    )
    return await handshake_done(tls)


async def handshake_done(tls: TlsProtocol) -> tuple[TlsTransport, asyncio.BaseProtocol]:
    """Wait for ``tls``'s handshake; (application transport, application protocol)."""
    try:
        app = await tls.done
    except BaseException:
        if tls._transport is not None:
            tls._transport.abort()
        raise
    assert tls._app_transport is not None
    return tls._app_transport, app


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str | None,
    port: int | None,
    *,
    context: PyOpenSSLContext,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    limit: int = 2**16,
    **kwargs: Any,
) -> asyncio.Server:
    """``asyncio.start_server`` over this TLS: the callback runs only for verified peers."""
    loop = asyncio.get_running_loop()

    def app() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb)

    return await loop.create_server(
        server_protocol_factory(context, app, handshake_timeout=handshake_timeout),
        host,
        port,
        **kwargs,
    )


async def open_connection(
    host: str | None,
    port: int | None,
    *,
    context: PyOpenSSLContext,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    limit: int = 2**16,
    **kwargs: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` over this TLS (raises :class:`PeerRejected` or
    :class:`TlsFailed` if the handshake fails)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await create_connection(
        context, lambda: protocol, host, port, handshake_timeout=handshake_timeout, **kwargs
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
