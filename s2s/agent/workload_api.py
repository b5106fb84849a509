"""The SPIFFE Workload API over gRPC on a Unix socket (SPIFFE_Workload_API.md, _Endpoint.md).

Transport choice: **grpc.aio behind an SO_PEERCRED front proxy** (:mod:`s2s.agent.uds_proxy`),
not grpclib. grpcio is the stack the official clients use (go-spiffe, py-spiffe), so interop,
HTTP/2 flow control and keep-alives are the same code they were tested against; it is already a
dependency (protobuf, the spiffe test client) while grpclib would add a second gRPC and h2
implementation and still needs a private attribute (``stream.peer._transport``) to reach the
socket. grpcio's one gap, that a servicer cannot learn who is on a Unix socket, is closed by the
front proxy, which reads SO_PEERCRED on accept and tags the inner connection with a random
abstract address. The price, measured by ``bench/workload_curve.py`` against a bare grpc.aio
server returning the same bytes: 1.4-1.9x its CPU per call, of which the proxy's extra hop alone
is 1.1-1.3x (the bare server behind it), the call frame 40-90 us and the per-call caller check
50-100 us on a loaded machine (bench/RESULTS.md). The same handlers on grpclib without the proxy
(a bench prototype) cost about as much from 10 clients on. A Workload API is called once per
rotation or token.

Handlers are thin: check the security header, attest the caller, ask the
:class:`IdentityProvider`, encode; :mod:`s2s.agent.workload_calls` maps errors to gRPC codes.

A caller is attested twice: when its connection is accepted (:meth:`Attestor.admit`) and on every
call (:meth:`Attestor.attest`), which refuses the call (PERMISSION_DENIED, and every later call on
that connection) when the process behind the connection has exec'd another binary or changed its
ids since: a process that connects, forks and execs a registered binary does not lend that
binary's identity to the child that keeps the connection. Every call and every message an open
stream is sent first checks the caller on the event loop (:meth:`Attestor.recheck`: ids, groups,
binary path and file identity, the process still the one admitted; a few ``pread`` calls on the
caller's ``/proc`` entry, held open from the connection's admission to its close); a connection's
full attestation (selectors, binary hash) is reused while that reading stays equal to the one
taken around it, and made again at least every ``reattest_interval``; a stream ends when its
caller no longer passes. Attestation runs on an :class:`AttestationPool` of its own;
connections are bounded per uid and in total and closed when idle (:class:`WorkloadLimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from s2s.agent import workload_messages as msg
from s2s.agent.attest_pool import AttestationPool
from s2s.agent.attestors.base import Attestor
from s2s.agent.attestors.peercred import PeerCredentials, open_peer
from s2s.agent.socket_path import prepare_socket_path
from s2s.agent.uds_proxy import ConnectionEvent, PeerTaggingProxy
from s2s.agent.workload_calls import CallGuard, Ctx, Observer, Unimplemented
from s2s.agent.workload_extensions import WorkloadExtension
from s2s.agent.workload_limits import WorkloadLimits
from s2s.aio import within
from s2s.core.bundle import BundleSet
from s2s.core.errors import InvalidRequest, InvalidToken, NotAuthorized, Unavailable
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.workload_proto import workload_pb2 as pb

__all__ = [
    "SERVICE_NAME",
    "IdentityProvider",
    "WorkloadApiServer",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "SpiffeWorkloadAPI"  # upstream proto has no package
_T = TypeVar("_T")
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

    def bundles_for(self, selectors: frozenset[Selector]) -> BundleSet:
        """Own trust domain's bundle and the federated ones a caller with ``selectors`` may
        trust (those its entries federate with)."""
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
        observe_connection: ConnectionEvent | None = None,
        limits: WorkloadLimits | None = None,
        proc_root: str = "/proc",
        extensions: Sequence[WorkloadExtension] = (),
    ) -> None:
        self._provider = provider
        self._extensions = tuple(extensions)  # s2s services beside the Workload API
        self._attestor = attestor
        self._open_verifiers = allow_unauthenticated_verifiers
        self._guard = CallGuard(observe)
        self._observe_connection = observe_connection
        self._limits = limits or WorkloadLimits()
        self._socket_path = socket_path
        self._proc_root = proc_root
        self._private_dir = ""
        self._pool: AttestationPool | None = None
        self._proxy: PeerTaggingProxy | None = None
        self._server: grpc.aio.Server | None = None
        self._rechecks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() costs a getpid()
        self._memo = msg.ResponseMemo()

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
        self._loop = asyncio.get_running_loop()
        self._private_dir = tempfile.mkdtemp(prefix="s2s-wlapi-")  # 0700: only we reach grpc
        inner = os.path.join(self._private_dir, "grpc.sock")
        try:
            opts = [("grpc.max_receive_message_length", MAX_REQUEST_BYTES)]
            self._server = grpc.aio.server(options=opts)
            extras = (e.rpc_handler(self._stream_guard, self._identified) for e in self._extensions)
            self._server.add_generic_rpc_handlers((self._handlers(), *extras))
            self._server.add_insecure_port(f"unix:{inner}")
            await self._server.start()
            limits = self._limits
            self._pool = AttestationPool(
                workers=limits.attest_workers, per_uid=limits.attest_per_uid
            )
            self._proxy = PeerTaggingProxy(
                self._socket_path,
                inner,
                admit=self._admit,
                limits=limits,
                on_event=self._observe_connection,
            )
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
        if self._pool is not None:  # after the calls that may still be using it
            self._pool.close()
            self._pool = None
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

    def _x509_svid(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        def build(selectors: frozenset[Selector]) -> bytes:
            svids = self._provider.svids_for(selectors)
            if not svids:
                raise NotAuthorized("no identity issued")
            bundles = self._provider.bundles_for(selectors)
            return self._memo.get(msg.x509_svid_response, svids, bundles, self._provider.crls())

        return self._watch(ctx, build)

    def _x509_bundles(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        def build(selectors: frozenset[Selector]) -> bytes:
            bundles = self._provider.bundles_for(selectors)
            return self._memo.get(msg.x509_bundles_response, bundles, self._provider.crls())

        return self._bundles_stream(ctx, build)

    def _jwt_bundles(self, _req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
        def build(selectors: frozenset[Selector]) -> bytes:
            return self._memo.get(msg.jwt_bundles_response, self._provider.bundles_for(selectors))

        return self._bundles_stream(ctx, build)

    async def _bundles_stream(
        self, ctx: Ctx, build: Callable[[frozenset[Selector]], bytes]
    ) -> AsyncIterator[bytes]:
        """A bundles stream, for a caller with an identity (or any, with open verifiers)."""
        selectors = await self._attest(ctx)
        self._require_identity(selectors)
        async for data in self._watch(ctx, build, selectors):
            yield data

    async def _watch(
        self,
        ctx: Ctx,
        build: Callable[[frozenset[Selector]], bytes],
        selectors: frozenset[Selector] | None = None,
    ) -> AsyncIterator[bytes]:
        """First message at once, then the full state after every change; no duplicates.

        Before every message the caller is checked to still be the process that connected
        (:meth:`Attestor.recheck`: ids, binary, start time; the selectors derive from those), and
        at least every ``reattest_interval`` it is attested in full (fresh selectors)."""
        loop = self._loop or asyncio.get_running_loop()
        interval = self._limits.reattest_interval
        if selectors is None:
            selectors = await self._attest(ctx)
        attested_at = loop.time()
        last = b""
        version = self._provider.version
        while True:
            data = build(selectors)
            if data != last:
                yield data
                last = data
            with contextlib.suppress(TimeoutError):
                version = await within(
                    self._provider.wait_for_update(version),
                    max(attested_at + interval - loop.time(), 0.0),
                )
            if loop.time() - attested_at >= interval:
                selectors = await self._attest(ctx)
                attested_at = loop.time()
            else:
                await self._recheck(ctx, version)

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
        if len(chosen) == 1:  # the usual case: no task per token
            tokens = [await self._provider.fetch_jwt_svid(chosen[0][0], audience)]
        else:
            tokens = await asyncio.gather(
                *(self._provider.fetch_jwt_svid(sid, audience) for sid, _ in chosen)
            )
        return msg.jwt_svid_response(chosen, tokens)

    async def _validate_jwt(self, req: Any, ctx: Ctx) -> pb.ValidateJWTSVIDResponse:
        if not req.audience:
            raise InvalidRequest("audience must be specified")
        if not req.svid:
            raise InvalidRequest("svid must be specified")
        selectors = await self._attest(ctx)
        self._require_identity(selectors)
        spiffe_id, claims = self._provider.validate_jwt(req.svid, req.audience)
        # The agent may hold a federated bundle for another of its entries: a caller trusts
        # only the trust domains of its own bundles (what FetchJWTBundles gives it).
        td = spiffe_id.trust_domain
        if td not in self._provider.bundles_for(selectors).trust_domains():
            raise InvalidToken(f"the caller does not trust trust domain {td}", reason="untrusted")
        return msg.validate_response(spiffe_id, claims)

    # -- guards -----------------------------------------------------------------------------

    async def _admit(self, pid: int, uid: int, gid: int) -> PeerCredentials:
        """Attest a caller as its connection is accepted (the proxy's ``admit``)."""

        def admit() -> PeerCredentials:
            # /proc/<pid> stays open for the connection: every call re-reads it (recheck)
            peer = open_peer(pid, uid, gid, proc_root=self._proc_root)
            try:
                return self._attestor.admit(peer)
            except BaseException:
                peer.close()
                raise

        if self._pool is None:
            raise Unavailable("the Workload API is shutting down")
        return await self._pool.run(uid, admit)

    async def _attest(self, ctx: Ctx) -> frozenset[Selector]:
        """The caller's selectors: checked on every call (:meth:`Attestor.recheck`, on the
        loop), derived in full (:meth:`Attestor.attest`, on the pool) when the connection has no
        attestation yet, its reading changed, or the last is ``reattest_interval`` old."""
        if self._proxy is None:
            raise Unavailable("the Workload API is shutting down")
        loop = self._loop or asyncio.get_running_loop()
        peer_name = ctx.peer()
        reading = self._check_now(ctx, self._attestor.recheck)
        memo = self._proxy.memo(peer_name)
        if (
            isinstance(memo, _Attested)
            and memo.reading == reading
            and loop.time() - memo.at < self._limits.reattest_interval
        ):
            return memo.selectors
        at = loop.time()
        selectors = await self._check_caller(ctx, self._attestor.attest)
        # Only a process that read the same before and after has these selectors for sure.
        if self._proxy is not None and self._check_now(ctx, self._attestor.recheck) == reading:
            self._proxy.remember(peer_name, _Attested(reading, selectors, at))
        return selectors

    async def _recheck(self, ctx: Ctx, version: int) -> None:
        """:meth:`Attestor.recheck` of this stream's caller after ``version`` was published,
        shared by the streams of one connection that wake for the same version (a process's
        channels share one connection, so a push would otherwise check it once per stream)."""
        key = (ctx.peer(), version)
        shared = self._rechecks.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._recheck_now(ctx))
            self._rechecks[key] = shared
            shared.add_done_callback(lambda task: self._recheck_done(key, task))
        await asyncio.shield(shared)

    def _recheck_done(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._rechecks.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every stream waiting on it may have gone

    async def _recheck_now(self, ctx: Ctx) -> None:
        self._check_now(ctx, self._attestor.recheck)

    def _check_now(self, ctx: Ctx, check: Callable[[PeerCredentials], _T]) -> _T:
        """``check(peer)`` here on the loop (``/proc`` reads only); a caller found to be
        another process than the one that connected loses the connection's every later call."""
        if self._proxy is None:
            raise Unavailable("the Workload API is shutting down")
        peer = self._proxy.credentials(ctx.peer())
        try:
            return check(peer)
        except NotAuthorized as exc:
            log.warning("workload_api.caller_changed", extra={"pid": peer.pid, "error": str(exc)})
            self._proxy.refuse_calls(ctx.peer(), exc)
            raise

    async def _check_caller(self, ctx: Ctx, check: Callable[[PeerCredentials], _T]) -> _T:
        """``check(peer)`` on the attestation pool; a caller found to be another process than
        the one that connected loses the connection's every later call."""
        if self._proxy is None or self._pool is None:
            raise Unavailable("the Workload API is shutting down")
        peer = self._proxy.credentials(ctx.peer())
        try:
            return await self._pool.run(peer.uid, check, peer)
        except NotAuthorized as exc:
            log.warning("workload_api.caller_changed", extra={"pid": peer.pid, "error": str(exc)})
            self._proxy.refuse_calls(ctx.peer(), exc)
            raise

    async def _identified(self, ctx: Ctx) -> None:
        """An extension's caller check: attested, with an identity (unless open verifiers)."""
        self._require_identity(await self._attest(ctx))

    def _require_identity(self, selectors: frozenset[Selector]) -> None:
        if not self._open_verifiers and not self._provider.svids_for(selectors):
            raise NotAuthorized("no identity issued")

    def _unary_guard(
        self, name: str, fn: Callable[[Any, Ctx], Awaitable[Any]]
    ) -> Callable[[Any, Ctx], Awaitable[Any]]:
        async def handler(req: Any, ctx: Ctx) -> Any:
            with self._in_call(ctx):
                async with self._guard.guarded(ctx, name):
                    return await fn(req, ctx)
            return None  # the call was aborted

        return handler

    def _stream_guard(
        self, name: str, fn: Callable[[Any, Ctx], AsyncIterator[bytes]]
    ) -> Callable[[Any, Ctx], AsyncIterator[bytes]]:
        async def handler(req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
            with self._in_call(ctx):
                async with self._guard.guarded(ctx, name):
                    async for data in fn(req, ctx):
                        yield data

        return handler

    def _in_call(self, ctx: Ctx) -> contextlib.AbstractContextManager[None]:
        """The connection is busy (not idle) while the call runs."""
        if self._proxy is None:
            return contextlib.nullcontext()
        return self._proxy.call(ctx.peer())


@dataclass(frozen=True, slots=True)
class _Attested:
    """A connection's last full attestation: the caller's reading then, its selectors, when."""

    reading: Hashable
    selectors: frozenset[Selector]
    at: float


async def _unimplemented(_req: Any, _ctx: Ctx) -> AsyncIterator[bytes]:
    raise Unimplemented("the WIT-SVID profile is not supported by this agent")
    yield b""  # pragma: no cover - makes this an async generator


def _identity(data: bytes) -> bytes:
    return data


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
