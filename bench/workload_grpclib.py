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
