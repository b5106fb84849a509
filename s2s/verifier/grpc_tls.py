"""SPIFFE mTLS for grpc.aio servers and clients, following an X.509 source.

gRPC does its own TLS (not Python's ``ssl``), so the handshake hooks of :mod:`s2s.verifier.tls`
do not apply. What gRPC allows:

- Server: :func:`server_credentials` are gRPC's dynamic SSL server credentials; the fetcher is
  asked at each new connection and hands gRPC the newest SVID and the roots of every bundle when
  the source has changed (rotation followed, no restart). gRPC verifies the client's chain to
  one of those roots; :class:`SpiffeServerInterceptor` then runs the s2s checks on every call
  from ``context.auth_context()`` (the chain must end in a root of the bundle of the client's
  *own* trust domain, the X509-SVID profile, revocations, your authorizer) and aborts the call
  with ``PERMISSION_DENIED`` before the handler runs. :func:`peer_spiffe_id` is the verified ID.
- Client: gRPC checks the server's chain against ``root_certificates`` and the server's name
  against a DNS SAN (it never matches URI SANs), and exposes no peer certificate to client code.
  :class:`SpiffeChannel` therefore trusts only the bundle of the server's trust domain and
  checks the server's DNS name (``server_name``, from its registration entry's ``dns_names``);
  it builds a new ``grpc.aio`` channel when the source changes (rotation), closing the previous
  one after a grace period.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected, PeerVerifier
from s2s.verifier.py_spiffe import x509_source_of
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = [
    "SpiffeChannel",
    "SpiffeServerInterceptor",
    "peer_spiffe_id",
    "server_credentials",
]

_log = logging.getLogger(__name__)
_MAX_DEPTH = 8
_peer: contextvars.ContextVar[SpiffeId | None] = contextvars.ContextVar(
    "s2s_grpc_peer", default=None
)


def _roots_pem(bundles: BundleSet) -> bytes:
    return b"".join(b.x509_pem() for b in bundles if b.x509_authorities)


def _server_config(snapshot: X509Context) -> grpc.ServerCertificateConfiguration:
    svid = snapshot.default_svid
    return grpc.ssl_server_certificate_configuration(
        [(svid.key_pem(), svid.chain_pem())], root_certificates=_roots_pem(snapshot.bundles)
    )


def server_credentials(source: X509SourceLike) -> grpc.ServerCredentials:
    """Server credentials that require client certificates and follow ``source``."""
    followed = x509_source_of(source, what="server_credentials")
    served = [followed.current()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        snapshot = followed.current()
        if snapshot is served[0]:
            return None  # unchanged: gRPC keeps the configuration it has
        try:
            config = _server_config(snapshot)
        except Exception:
            _log.exception("grpc.reload_failed")
            return None
        served[0] = snapshot
        return config

    return grpc.dynamic_ssl_server_credentials(
        _server_config(served[0]),
        fetch,  # type: ignore[arg-type]  # None means unchanged (grpc's contract)
        require_client_authentication=True,
    )


def peer_spiffe_id() -> SpiffeId | None:
    """The client's SPIFFE ID verified by :class:`SpiffeServerInterceptor` for this call."""
    return _peer.get()


class SpiffeServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks the client's SVID on every call; refused calls never reach the handler."""

    def __init__(
        self,
        source: X509SourceLike,
        *,
        authorize: Callable[[SpiffeId], bool],
        revocations: RevocationLookup | None = None,
        clock: Clock | None = None,
        metrics: PeerMetrics | None = None,
    ) -> None:
        checked = resolve_revocations(source, revocations, what="SpiffeServerInterceptor")
        followed = x509_source_of(source, what="SpiffeServerInterceptor")
        self._source = followed
        self._verifier = PeerVerifier(
            lambda: followed.current().bundles,
            authorize=authorize,
            revocations=checked,
            clock=clock,
            metrics=metrics,
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._guard(behaviour, kind)})  # type: ignore[attr-defined, no-any-return]
        return handler

    def verify(self, context: Any) -> SpiffeId:
        """The verified SPIFFE ID of the call's client; PeerRejected otherwise."""
        try:
            chain = self._chain(context.auth_context())
        except PeerRejected as exc:
            self._verifier.metrics.rejected(exc.reason)
            raise
        return self._verifier.verify_chain([c.public_bytes(Encoding.DER) for c in chain])

    def _chain(self, auth: dict[str, list[bytes]]) -> list[x509.Certificate]:
        leaf = auth.get("x509_pem_cert")
        if not leaf:
            raise PeerRejected("the client presented no certificate", reason="no-certificate")
        try:
            presented = [x509.load_pem_x509_certificate(leaf[0])]
            for pem in auth.get("x509_pem_cert_chain", []):
                presented.extend(x509.load_pem_x509_certificates(pem))
        except ValueError as exc:
            raise PeerRejected(
                f"the client's chain does not parse: {exc}", reason="svid-malformed"
            ) from None
        return _path_to_root(presented, self._source.current().bundles)

    def _guard(self, behaviour: Any, kind: str) -> Any:
        async def checked_unary(request: Any, context: Any) -> Any:
            await self._admit(context)
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        async def checked_stream(request: Any, context: Any) -> Any:
            await self._admit(context)
            items = behaviour(request, context)
            if hasattr(items, "__aiter__"):
                async for item in items:
                    yield item
            else:
                for item in items:
                    yield item

        return checked_stream if kind.endswith("_stream") else checked_unary

    async def _admit(self, context: Any) -> None:
        try:
            _peer.set(self.verify(context))
        except PeerRejected as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"peer refused: {exc}")


def _path_to_root(presented: list[x509.Certificate], bundles: BundleSet) -> list[x509.Certificate]:
    """Leaf, the presented intermediates that issued each other, and the bundle root on top.

    gRPC has verified that *a* path to a root exists but does not say which; this rebuilds it
    (signatures checked) so the s2s checks see the chain they would see under ``ssl``.
    """
    roots = [root for bundle in bundles for root in bundle.x509_authorities]
    chain = [presented[0]]
    for _ in range(_MAX_DEPTH):
        current = chain[-1]
        for root in roots:
            if _issued_by(current, root):
                return [*chain, root]
        issuer = next((c for c in presented[1:] if c not in chain and _issued_by(current, c)), None)
        if issuer is None:
            break
        chain.append(issuer)
    raise PeerRejected("the client's chain does not end in a bundle root", reason="untrusted-root")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class SpiffeChannel:
    """A ``grpc.aio`` channel to one server, rebuilt when the X.509 source changes.

    ``server_trust_domain``: only that bundle's roots are trusted for the server; ``server_name``:
    a DNS name in the server's SVID (gRPC checks it; it never looks at URI SANs).
    """

    def __init__(
        self,
        target: str,
        source: X509SourceLike,
        *,
        server_trust_domain: TrustDomain | str,
        server_name: str,
        grace: float = 5.0,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self._target = target
        self._source = x509_source_of(source, what="SpiffeChannel")
        self._td = (
            server_trust_domain
            if isinstance(server_trust_domain, TrustDomain)
            else TrustDomain.parse(server_trust_domain)
        )
        self._options = (*options, ("grpc.ssl_target_name_override", server_name))
        self._grace = grace
        self._built: tuple[X509Context, grpc.aio.Channel] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def channel(self) -> grpc.aio.Channel:
        """The channel for the newest snapshot (a new one after each change)."""
        snapshot = self._source.current()
        built = self._built
        if built is not None and built[0] is snapshot:
            return built[1]
        bundle = snapshot.bundles.get(self._td)
        if bundle is None or not bundle.x509_authorities:
            raise InvalidConfig(f"SpiffeChannel: the source holds no bundle for {self._td}")
        svid = snapshot.default_svid
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.x509_pem(),
            private_key=svid.key_pem(),
            certificate_chain=svid.chain_pem(),
        )
        channel = grpc.aio.secure_channel(self._target, credentials, options=self._options)
        self._built = (snapshot, channel)
        if built is not None:
            task = asyncio.get_running_loop().create_task(built[1].close(self._grace))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return channel

    async def close(self) -> None:
        built, self._built = self._built, None
        if built is not None:
            await built[1].close(self._grace)
        for task in tuple(self._closing):
            await task
