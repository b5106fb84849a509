"""A bare grpclib server sending the bench's pre-built Workload API answers (the ``grpclib`` kind
of ``bench.workload_api`` / ``bench.workload_curve``).

grpclib (pure-Python HTTP/2 on asyncio, where each connection's transport, and so its socket's
SO_PEERCRED, is reachable) is the alternative to grpc.aio behind the front proxy. It is not a
dependency of s2s: ``pip install grpclib`` to measure it; the curve skips it otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from bench.workload_api import prebuilt


async def serve_grpclib(provider: Any, path: str) -> Callable[[Any], Awaitable[None]]:
    from grpclib.const import Cardinality, Handler  # noqa: PLC0415 (optional package)
    from grpclib.encoding.base import CodecBase  # noqa: PLC0415
    from grpclib.server import Server  # noqa: PLC0415

    x509, jwt_resp = await prebuilt(provider)

    class Raw(CodecBase):  # the answers are already encoded
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    async def fetch_x509(stream: Any) -> None:
        await stream.recv_message()
        version = provider.version
        while True:
            await stream.send_message(x509)
            version = await provider.wait_for_update(version)

    async def fetch_jwt(stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(jwt_resp)

    class Handlers:
        def __mapping__(self) -> dict[str, Any]:
            return {
                "/SpiffeWorkloadAPI/FetchX509SVID": Handler(
                    fetch_x509, Cardinality.UNARY_STREAM, bytes, bytes
                ),
                "/SpiffeWorkloadAPI/FetchJWTSVID": Handler(
                    fetch_jwt, Cardinality.UNARY_UNARY, bytes, bytes
                ),
            }

    server = Server([Handlers()], codec=Raw())
    await server.start(path=path)

    async def stop(_grace: Any) -> None:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return stop


class _Connections:
    """What the front proxy gives the server (who is on a connection, its memo), for grpclib
    connections: a prototype reaching into private parts of grpclib and of the server."""

    def __init__(self) -> None:
        self.peers: dict[str, Any] = {}
        self.memos: dict[str, object] = {}

    def credentials(self, tag: str) -> Any:
        peer = self.peers[tag]
        if isinstance(peer, Exception):
            raise peer
        return peer

    def memo(self, tag: str) -> object:
        return self.memos.get(tag)

    def remember(self, tag: str, value: object) -> None:
        self.memos[tag] = value

    def refuse_calls(self, tag: str, reason: Exception) -> None:
        self.peers[tag] = reason
        self.memos.pop(tag, None)

    def call(self, _tag: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


async def serve_s2s_grpclib(provider: Any, path: str) -> Callable[[Any], Awaitable[None]]:
    """The s2s Workload API handlers (header, attestation with the per-connection reading,
    provider, encoding, error mapping) on grpclib, SO_PEERCRED read from each connection's
    socket: no front proxy. A measurement prototype, not a product path (no limits, no idle
    timeouts, no health or extensions)."""
    from grpclib.const import Cardinality, Handler, Status  # noqa: PLC0415 (optional package)
    from grpclib.encoding.base import CodecBase  # noqa: PLC0415
    from grpclib.exceptions import GRPCError  # noqa: PLC0415
    from grpclib.server import Server  # noqa: PLC0415

    from s2s.agent.attest_pool import AttestationPool  # noqa: PLC0415
    from s2s.agent.attestors.peercred import socket_peer  # noqa: PLC0415
    from s2s.agent.attestors.unix import UnixAttestor  # noqa: PLC0415
    from s2s.agent.workload_api import WorkloadApiServer  # noqa: PLC0415
    from s2s.workload_proto import workload_pb2 as pb  # noqa: PLC0415

    wl = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=path)
    wl._pool = AttestationPool()
    conns = _Connections()
    wl._proxy = conns  # type: ignore[assignment]
    fetch_x509 = wl._stream_guard("FetchX509SVID", wl._x509_svid)
    fetch_jwt = wl._unary_guard("FetchJWTSVID", wl._jwt_svid)

    class Ctx:
        def __init__(self, stream: Any, tag: str) -> None:
            self._stream, self._tag = stream, tag

        def peer(self) -> str:
            return self._tag

        def invocation_metadata(self) -> Any:
            return list(self._stream.metadata.items()) if self._stream.metadata else ()

        async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
            raise GRPCError(Status(code.value[0]), details)

    async def context(stream: Any) -> Ctx:
        transport = stream.peer._transport
        tag = f"conn-{id(transport)}"
        if tag not in conns.peers:  # first call on this connection: admit its caller
            try:
                conns.peers[tag] = await wl._admit(*socket_peer(transport.get_extra_info("socket")))
            except Exception as exc:  # kept: every call on the connection fails with it
                conns.peers[tag] = exc
        return Ctx(stream, tag)

    async def x509(stream: Any) -> None:
        request = pb.X509SVIDRequest.FromString(await stream.recv_message())
        async for data in fetch_x509(request, await context(stream)):  # type: ignore[arg-type]
            await stream.send_message(data)

    async def jwt(stream: Any) -> None:
        request = pb.JWTSVIDRequest.FromString(await stream.recv_message())
        response = await fetch_jwt(request, await context(stream))  # type: ignore[arg-type]
        await stream.send_message(response.SerializeToString())

    class Raw(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    class Handlers:
        def __mapping__(self) -> dict[str, Any]:
            return {
                "/SpiffeWorkloadAPI/FetchX509SVID": Handler(
                    x509, Cardinality.UNARY_STREAM, bytes, bytes
                ),
                "/SpiffeWorkloadAPI/FetchJWTSVID": Handler(
                    jwt, Cardinality.UNARY_UNARY, bytes, bytes
                ),
            }

    server = Server([Handlers()], codec=Raw())
    await server.start(path=path)

    async def stop(_grace: Any) -> None:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        wl._pool.close()  # type: ignore[union-attr]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return stop
