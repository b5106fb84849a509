"""Child processes for the demo: each in its own session (process group), its output read line by
line, stopped with SIGTERM to the whole group, waited for with a deadline, killed as a last resort.

Children run in their own session so that Ctrl-C in the terminal reaches only the launcher, which
then stops them in order (client, server, agent, CA). When ``setpriv`` (util-linux) is present,
children also get a parent-death signal, so even a launcher killed with SIGKILL leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from s2s.aio import within

__all__ = ["STOP_TIMEOUT", "Child", "CliResult", "run_cli"]

STOP_TIMEOUT: Final = 8.0
_LINE_LIMIT: Final = 1 << 20

LineHandler = Callable[[str, str], None]  # (stream name "stdout"/"stderr", line)


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


@dataclass(slots=True)
class Child:
    """One long-running child process."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    on_line: LineHandler
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *_pdeathsig_prefix(),
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(self.env),
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        for stream_name in ("stdout", "stderr"):
            stream = getattr(self.process, stream_name)
            self._readers.append(asyncio.create_task(self._read(stream_name, stream)))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _read(self, stream_name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line above the limit: skip it
                continue
            if not raw:
                return
            self.on_line(stream_name, raw.decode("utf-8", "replace").rstrip("\n"))

    async def send(self, line: str) -> None:
        """Write one line to the child's stdin (ignored once it has exited)."""
        if self.process is None or self.process.stdin is None or not self.running:
            return
        with contextlib.suppress(ConnectionError):
            self.process.stdin.write(line.encode() + b"\n")
            await self.process.stdin.drain()

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the child's process group, wait up to ``timeout``, then SIGKILL the group."""
        if self.process is None:
            return None
        self.stopping = True
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.running:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                return await within(self.wait(), timeout)
            except TimeoutError:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # stragglers of the group, if any
        return await self.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True, slots=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


async def run_cli(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float = 30.0
) -> CliResult:
    """Run a short command (``s2s-ca entry create ...``) to completion, in its own process group."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    try:
        out, err = await within(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
