"""The proxy's forwarding halves hold bytes that arrive before they are linked."""

from __future__ import annotations

import asyncio
import socket
import time

from s2s.agent.uds_proxy import _Forward


async def _recv(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    deadline = time.monotonic() + 5
    while len(data) < size:
        assert time.monotonic() < deadline, f"only {data!r} arrived"
        data += await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), timeout=5)
    return data


async def _until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_bytes_sent_before_linking_reach_the_other_side() -> None:
    loop = asyncio.get_running_loop()
    front_sock, workload = socket.socketpair()
    back_sock, grpc_server = socket.socketpair()
    for s in (workload, grpc_server):
        s.setblocking(False)
    _, front = await loop.connect_accepted_socket(_Forward, front_sock)
    _, back = await loop.connect_accepted_socket(_Forward, back_sock)
    # Both ends speak before the halves are linked (client preface / server SETTINGS).
    workload.send(b"PRI * HTTP/2.0")
    grpc_server.send(b"SETTINGS")
    await _until(lambda: front._pending and back._pending, "both halves to hold bytes")

    front.link(back)
    back.link(front)
    assert await _recv(grpc_server, 14) == b"PRI * HTTP/2.0"
    assert await _recv(workload, 8) == b"SETTINGS"

    # and after linking, bytes flow straight through
    workload.send(b"more")
    assert await _recv(grpc_server, 4) == b"more"
    for s in (workload, grpc_server):
        s.close()


async def test_a_flood_before_linking_closes_the_connection() -> None:
    loop = asyncio.get_running_loop()
    front_sock, workload = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(_Forward, front_sock)
    workload.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    deadline = time.monotonic() + 5
    while not transport.is_closing():
        assert time.monotonic() < deadline, "the flood was never cut off"
        try:
            sent += workload.send(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            await asyncio.sleep(0.01)
    assert sent > 256 * 1024
    workload.close()
