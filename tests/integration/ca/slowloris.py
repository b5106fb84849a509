"""A slowloris against a TLS server, run as its own process by test_slow_clients.py (so its
handshakes and trickled bytes do not share the CA's event loop or CPU time slice).

``python slowloris.py PORT SOURCE N KIND SECONDS``: N attackers from address SOURCE connect to
127.0.0.1:PORT, each connecting again as soon as its connection ends, for SECONDS. KIND is
``byte-at-a-time`` (TLS, then a request header one byte every 0.1 s), ``idle-tls`` (TLS, then
nothing) or ``idle-tcp`` (no TLS handshake at all). Prints one JSON summary line at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time

HEADER = b"GET /healthz HTTP/1.1\r\nHost: ca\r\nX-Pad: "


class Attack:
    def __init__(self, port: int, source: str, kind: str) -> None:
        self.port, self.source, self.kind = port, source, kind
        self.lived: list[float] = []  # connections the server took: how long until it closed
        self.refused = 0  # connections that ended before the attacker could use them
        self.open = 0
        self.most_open = 0
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    async def one(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        self.port,
                        ssl=None if self.kind == "idle-tcp" else self.tls,
                        local_addr=(self.source, 0),
                    ),
                    10,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                self.refused += 1
                await asyncio.sleep(0.05)
                continue
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                self.lived.append(await self.hold(reader, writer))
            finally:
                self.open -= 1

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        started = time.monotonic()
        i = 0
        try:
            while True:
                if self.kind == "byte-at-a-time":
                    writer.write(HEADER[i : i + 1] or b"a")
                    await writer.drain()
                    i += 1
                try:
                    if await asyncio.wait_for(reader.read(1024), 0.1) == b"":
                        break
                except TimeoutError:
                    continue
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()
        return time.monotonic() - started


async def main(port: int, source: str, n: int, kind: str, seconds: float) -> None:
    attack = Attack(port, source, kind)
    tasks = [asyncio.create_task(attack.one()) for _ in range(n)]
    await asyncio.sleep(seconds)
    summary = {
        "connections": len(attack.lived),
        "refused": attack.refused,
        "most_open": attack.most_open,
        "lived_max": max(attack.lived, default=0.0),
    }
    print(json.dumps(summary), flush=True)
    # Python 3.11's wait_for can swallow a cancellation; leave without waiting for the tasks.
    del tasks
    os._exit(0)


if __name__ == "__main__":
    port, source, n, kind, seconds = sys.argv[1:6]
    asyncio.run(main(int(port), source, int(n), kind, float(seconds)))
