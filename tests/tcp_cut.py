"""A loopback TCP forwarder that a test can cut (a network partition between a client and one
server) and heal again. While cut, open connections are aborted and new ones are closed at once.
While stalled (a silent partition: packets dropped, nothing reset), nothing is forwarded and new
connections get no answer; on heal the held bytes flow again, as TCP retransmission would.
``delay`` (seconds, settable at any time) holds every chunk that long before passing it on: a
slow link, in both directions."""

from __future__ import annotations

import asyncio
import contextlib


class TcpCut:
    """Forwards 127.0.0.1:``port`` to ``target`` until :meth:`cut`; :meth:`heal` lets it through."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.is_cut = False
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpCut:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def stall(self) -> None:
        """Forward nothing until :meth:`heal`; keep every connection open."""
        self._flowing.clear()

    def heal(self) -> None:
        self.is_cut = False
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        self._flowing.set()  # release what a stall holds: everything ends as cut
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        await self._flowing.wait()
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                await self._flowing.wait()  # stalled: hold the bytes (the sender backs off)
                if self.delay:
                    await asyncio.sleep(self.delay)  # the link's latency, not a wait for an event
                if self.is_cut:
                    break
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        self._writers.discard(dst)
