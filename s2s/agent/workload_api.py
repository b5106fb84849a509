"""The SPIFFE Workload API over gRPC on a Unix socket (SPIFFE_Workload_API.md, _Endpoint.md).

Transport choice: **grpc.aio behind an SO_PEERCRED front proxy** (:mod:`s2s.agent.uds_proxy`),
not grpclib. grpcio is the stack the official clients use (go-spiffe, py-spiffe), so interop,
HTTP/2 flow control and keep-alives are the same code they were tested against; it is already a
dependency (protobuf, the spiffe test client) while grpclib would add a second gRPC and h2
implementation and still needs a private attribute (``stream.peer._transport``) to reach the
socket. grpcio's one gap, that a servicer cannot learn who is on a Unix socket, is closed by the
front proxy, which reads SO_PEERCRED on accept and tags the inner connection with a random
abstract address. The price, measured by ``bench/workload_api.py`` against a bare grpc.aio server
returning the same bytes: one client's FetchJWTSVID p50 0.9 ms instead of 0.5 ms and FetchX509SVID
first response 1.0 ms instead of 0.8 ms (proxy hop plus per-call attestation), about 1.5x at 100
concurrent clients. A Workload API is called once per rotation or token, so this is affordable.

Handlers are thin: check the security header, attest the caller, ask the
:class:`IdentityProvider`, encode. Errors come from ``s2s.core.errors`` and are mapped to gRPC codes
here and only here (Workload Endpoint appendix A): missing header and bad arguments
INVALID_ARGUMENT, attestation failure UNAVAILABLE, no identity PERMISSION_DENIED, WIT UNIMPLEMENTED.
A refused token is INVALID_ARGUMENT (as SPIRE), except when the refusal is that the agent's
revocation feed is stale (``revocations-stale``): that is UNAVAILABLE, so clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc

from s2s.agent import workload_messages as msg
from s2s.agent.attestor import PeerCredentials
from s2s.agent.proto import workload_pb2 as pb
from s2s.agent.uds_proxy import PeerTaggingProxy, prepare_socket_path
from s2s.core.bundle import BundleSet
from s2s.core.errors import (
    AttestationFailed,
    InvalidRequest,
    InvalidSpiffeId,
    InvalidToken,
    NotAuthorized,
    S2SError,
    Unavailable,
)
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid

__all__ = [
    "REASON_TRAILER",
    "SECURITY_HEADER",
    "SERVICE_NAME",
    "Attestor",
    "IdentityProvider",
    "WorkloadApiServer",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "SpiffeWorkloadAPI"  # upstream proto has no package (ARCHITECTURE.md section 2)
SECURITY_HEADER = "workload.spiffe.io"
REASON_TRAILER = "s2s-reason"  # InvalidToken.reason of a rejected ValidateJWTSVID
REVOCATIONS_STALE = "revocations-stale"  # the agent cannot tell what is revoked: UNAVAILABLE
MAX_REQUEST_BYTES = 1 << 20


class IdentityProvider(Protocol):
    """What the Workload API serves; see docs/internal-contracts.md (s2s/agent workload-facing)."""

    @property
    def version(self) -> int:
        """Bumped on every change of SVIDs, bundles or CRLs."""
        ...

    async def wait_for_update(self, after_version: int) -> int:
        """Return the current version once it differs from ``after_version``."""
        ...

    def svids_for(self, selectors: frozenset[Selector]) -> tuple[X509Svid, ...]:
        """The SVIDs (with keys) of every entry the selectors match; first = default."""
        ...

    def bundles(self) -> BundleSet:
        """Own trust domain's bundle and the federated ones."""
        ...

    def crls(self) -> tuple[bytes, ...]:
        """DER CRLs of the issuing CAs (may be empty)."""
        ...

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: tuple[str, ...]) -> str:
        """A JWT-SVID for an ID the caller is entitled to (cached until half-life)."""
        ...

    def validate_jwt(self, token: str, audience: str) -> tuple[SpiffeId, Mapping[str, Any]]:
        """Validate against the bundles; :class:`InvalidToken` on rejection."""
        ...


class Attestor(Protocol):
    """Derives a caller's selectors (``UnixAttestor``)."""

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]: ...


Ctx = grpc.aio.ServicerContext[Any, Any]
_AbortError: type[BaseException] = grpc.aio.AbortError
Observer = Callable[[str, str], None]  # (method, gRPC code name) after every call


class WorkloadApiServer:
    """Serves the Workload API on ``socket_path`` until :meth:`stop`; usable as ``async with``."""

    def __init__(
        self,
        *,
        provider: IdentityProvider,
        attestor: Attestor,
        socket_path: str,
        allow_unauthenticated_verifiers: bool = False,
        observe: Observer | None = None,
        proc_root: str = "/proc",
    ) -> None:
        self._provider = provider
        self._attestor = attestor
        self._open_verifiers = allow_unauthenticated_verifiers
        self._observe = observe
        self._socket_path = socket_path
        self._proc_root = proc_root
        self._private_dir = ""
        self._proxy: PeerTaggingProxy | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def open_connections(self) -> int:
        """Workload connections currently open (for metrics)."""
        return self._proxy.open_connections if self._proxy is not None else 0

    async def start(self) -> None:
        """Bind and serve; :class:`InvalidConfig` for an unusable socket path."""
        prepare_socket_path(self._socket_path)  # fail before creating anything
        self._private_dir = tempfile.mkdtemp(prefix="s2s-wlapi-")  # 0700: only we reach grpc
        inner = os.path.join(self._private_dir, "grpc.sock")
        try:
            opts = [("grpc.max_receive_message_length", MAX_REQUEST_BYTES)]
            self._server = grpc.aio.server(options=opts)
            self._server.add_generic_rpc_handlers((self._handlers(),))
            self._server.add_insecure_port(f"unix:{inner}")
            await self._server.start()
            self._proxy = PeerTaggingProxy(self._socket_path, inner, proc_root=self._proc_root)
            await self._proxy.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._private_dir:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._private_dir, "grpc.sock"))
            with contextlib.suppress(OSError):
                os.rmdir(self._private_dir)
            self._private_dir = ""

    async def __aenter__(self) -> WorkloadApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers ---------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        def stream(
            fn: Callable[[Any, Ctx], AsyncIterator[bytes]], req: Any, name: str
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_stream_rpc_method_handler(
                self._stream_guard(name, fn), req.FromString, _identity
            )

        def unary(
            fn: Callable[[Any, Ctx], Awaitable[Any]], req: Any, name: str
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_guard(name, fn), req.FromString, _serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "FetchX509SVID": stream(self._x509_svid, pb.X509SVIDRequest, "FetchX509SVID"),
                "FetchX509Bundles": stream(
                    self._x509_bundles, pb.X509BundlesRequest, "FetchX509Bundles"
                ),
                "FetchJWTBundles": stream(
                    self._jwt_bundles, pb.JWTBundlesRequest, "FetchJWTBundles"
                ),
                "FetchJWTSVID": unary(self._jwt_svid, pb.JWTSVIDRequest, "FetchJWTSVID"),
                "ValidateJWTSVID": unary(
                    self._validate_jwt, pb.ValidateJWTSVIDRequest, "ValidateJWTSVID"
                ),
                "FetchWITSVID": stream(_unimplemented, pb.WITSVIDRequest, "FetchWITSVID"),
                "FetchWITBundles": stream(_unimplemented, pb.WITBundlesRequest, "FetchWITBundles"),
            },
        )

    async def _x509_svid(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        selectors = await self._attest(ctx)

        def build() -> bytes:
            svids = self._provider.svids_for(selectors)
            if not svids:
                raise NotAuthorized("no identity issued")
            return msg.x509_svid_response(svids, self._provider.bundles(), self._provider.crls())

        async for data in self._watch(build):
            yield data

    def _x509_bundles(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        def build() -> bytes:
            return msg.x509_bundles_response(self._provider.bundles(), self._provider.crls())

        return self._bundles_stream(ctx, build)

    def _jwt_bundles(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        def build() -> bytes:
            return msg.jwt_bundles_response(self._provider.bundles())

        return self._bundles_stream(ctx, build)

    async def _bundles_stream(self, ctx: Ctx, build: Callable[[], bytes]) -> AsyncIterator[bytes]:
        """A bundles stream, for a caller with an identity (or any, with open verifiers)."""
        selectors = await self._attest(ctx)
        self._require_identity(selectors)
        async for data in self._watch(build):
            yield data

    async def _watch(self, build: Callable[[], bytes]) -> AsyncIterator[bytes]:
        """First message at once, then the full state after every change; no duplicates."""
        last = b""
        version = self._provider.version
        while True:
            data = build()
            if data != last:
                yield data
                last = data
            version = await self._provider.wait_for_update(version)

    async def _jwt_svid(self, req: Any, ctx: Ctx) -> pb.JWTSVIDResponse:
        audience = tuple(req.audience)
        if not audience or not all(audience):
            raise InvalidRequest("audience must be specified")
        wanted = SpiffeId.parse(req.spiffe_id) if req.spiffe_id else None
        svids = self._provider.svids_for(await self._attest(ctx))
        if not svids:
            raise NotAuthorized("no identity issued")
        chosen = msg.jwt_identities(svids, wanted)
        if not chosen:
            raise NotAuthorized(f"the caller is not entitled to {wanted}")
        tokens = await asyncio.gather(
            *(self._provider.fetch_jwt_svid(sid, audience) for sid, _ in chosen)
        )
        return msg.jwt_svid_response(chosen, tokens)

    async def _validate_jwt(self, req: Any, ctx: Ctx) -> pb.ValidateJWTSVIDResponse:
        if not req.audience:
            raise InvalidRequest("audience must be specified")
        if not req.svid:
            raise InvalidRequest("svid must be specified")
        self._require_identity(await self._attest(ctx))
        spiffe_id, claims = self._provider.validate_jwt(req.svid, req.audience)
        return msg.validate_response(spiffe_id, claims)

    # -- guards -----------------------------------------------------------------------------

    async def _attest(self, ctx: Ctx) -> frozenset[Selector]:
        if self._proxy is None:
            raise Unavailable("the Workload API is shutting down")
        peer = self._proxy.credentials(ctx.peer())
        return await asyncio.to_thread(self._attestor.attest, peer)

    def _require_identity(self, selectors: frozenset[Selector]) -> None:
        if not self._open_verifiers and not self._provider.svids_for(selectors):
            raise NotAuthorized("no identity issued")

    def _unary_guard(
        self, name: str, fn: Callable[[Any, Ctx], Awaitable[Any]]
    ) -> Callable[[Any, Ctx], Awaitable[Any]]:
        async def handler(req: Any, ctx: Ctx) -> Any:
            async with self._guarded(ctx, name):
                return await fn(req, ctx)
            return None  # the call was aborted

        return handler

    def _stream_guard(
        self, name: str, fn: Callable[[Any, Ctx], AsyncIterator[bytes]]
    ) -> Callable[[Any, Ctx], AsyncIterator[bytes]]:
        async def handler(req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
            async with self._guarded(ctx, name):
                async for data in fn(req, ctx):
                    yield data

        return handler

    @contextlib.asynccontextmanager
    async def _guarded(self, ctx: Ctx, name: str) -> AsyncIterator[None]:
        """Check the security header, map errors to gRPC aborts, observe the call's code
        (CANCELLED when the client went away, unary or stream alike)."""
        code = grpc.StatusCode.OK
        start = time.monotonic()
        try:
            _check_header(ctx)
            yield
        except S2SError as exc:
            code = _code_for(exc)
            await self._abort(ctx, name, code, exc)
        except _AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            await self._internal(ctx, name)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._done(name, code, start)

    async def _abort(self, ctx: Ctx, name: str, code: grpc.StatusCode, exc: S2SError) -> None:
        if isinstance(exc, AttestationFailed):
            log.info("workload_api.attestation_failed", extra={"method": name, "error": str(exc)})
            details = f"workload attestation failed: {exc}"
        else:
            details = str(exc)
        trailer = ((REASON_TRAILER, exc.reason),) if isinstance(exc, InvalidToken) else ()
        await ctx.abort(code, details, trailing_metadata=trailer)

    async def _internal(self, ctx: Ctx, name: str) -> None:
        # A bug, not the caller's fault: log it here, never send its text to the workload.
        log.exception("workload_api.internal_error", extra={"method": name})
        await ctx.abort(grpc.StatusCode.INTERNAL, "internal error in the agent")

    def _done(self, name: str, code: grpc.StatusCode, start: float) -> None:
        if self._observe is not None:
            self._observe(name, code.name)
        log.debug(
            "workload_api.call",
            extra={"method": name, "code": code.name, "ms": (time.monotonic() - start) * 1e3},
        )


def _check_header(ctx: Ctx) -> None:
    values = [v for k, v in (ctx.invocation_metadata() or ()) if k == SECURITY_HEADER]
    if values != ["true"]:
        raise InvalidRequest("security header missing from request")


def _code_for(exc: S2SError) -> grpc.StatusCode:
    if isinstance(exc, InvalidToken) and exc.reason == REVOCATIONS_STALE:
        return grpc.StatusCode.UNAVAILABLE  # not the token's fault: the client should retry
    if isinstance(exc, InvalidRequest | InvalidSpiffeId | InvalidToken):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotAuthorized):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, AttestationFailed | Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, _Unimplemented):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


class _Unimplemented(S2SError):
    code = "unimplemented"


async def _unimplemented(_req: Any, _ctx: Ctx) -> AsyncIterator[bytes]:
    raise _Unimplemented("the WIT-SVID profile is not supported by this agent")
    yield b""  # pragma: no cover - makes this an async generator


def _identity(data: bytes) -> bytes:
    return data


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
