"""A loopback TCP proxy that delays every chunk by ``delay`` seconds, each way, in order: the
latency of a slow network between CA replicas and etcd, for the fleet benchmark.

``DelayProxy(("127.0.0.1", 2379))`` listens on 127.0.0.1 (a free port, :attr:`address`); each
chunk read from one side is written to the other ``delay`` seconds after it was read (a
round trip gains ``2 * delay``). The delay can be changed while connections are open; a chunk
keeps the delay in force when it was read, and chunks never overtake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys


class DelayProxy:
    """Forwards 127.0.0.1:``port`` to ``target``, each chunk held ``delay`` seconds."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self.port = 0
        self.chunks = 0  # chunks forwarded (both ways)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer))
                group.create_task(self._pump(up_reader, writer))
        except* (OSError, EOFError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks and write each ``delay`` after it arrived; EOF is passed on in turn."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                self.chunks += 1
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if sender.done():  # the other side is gone: say why
                    sender.result()
                    return
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


async def serve(targets: list[tuple[str, int]]) -> None:
    """Proxies for ``targets`` in this process: prints ``{"ports": [...]}`` once listening, then
    takes ``delay SECONDS`` lines on stdin (answered ``{"delay": SECONDS}``) until EOF."""
    proxies = [await DelayProxy(target).start() for target in targets]
    print(json.dumps({"ports": [p.port for p in proxies]}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            word, _, value = line.decode().strip().partition(" ")
            try:
                delay = float(value) if word == "delay" else -1.0
            except ValueError:
                delay = -1.0
            if delay < 0:
                wrong = line.decode().strip()
                print(json.dumps({"error": f"not a command: {wrong!r}"}), flush=True)
                continue
            for proxy in proxies:
                proxy.delay = delay
            print(json.dumps({"delay": delay}), flush=True)
    finally:
        for proxy in proxies:
            await proxy.close()


def main(argv: list[str]) -> int:
    """``python -m bench.delay_proxy HOST:PORT...``: one delay proxy per target, in a process of
    its own (a benchmark's own work must not delay the traffic it forwards)."""
    targets = []
    for arg in argv:
        host, _, port = arg.rpartition(":")
        if not host or not port.isdigit():
            print(f"not HOST:PORT: {arg!r}", file=sys.stderr)
            return 2
        targets.append((host, int(port)))
    if not targets:
        print("usage: python -m bench.delay_proxy HOST:PORT [HOST:PORT...]", file=sys.stderr)
        return 2
    asyncio.run(serve(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
