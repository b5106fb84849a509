"""``s2s.fd_limit``: raising the soft open-files limit (capped, never lowered) in a child process
under ``prlimit``; accept failures out of descriptors logged once per interval."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import subprocess
import sys

import pytest

from s2s.fd_limit import AcceptFailures

LOGGER = "s2s.test.fd_limit"
SHOW = (
    "import json; from s2s.fd_limit import raise_fd_limit as r; "
    "x = r({cap}); print(json.dumps([x.before, x.after, x.hard, x.error]))"
)


def raised_in_child(soft: int, hard: int, cap: int) -> list[object]:
    done = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", "--", sys.executable, "-c", SHOW.format(cap=cap)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: list[object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "expected"),
    [
        (256, 4096, 1 << 20, [256, 4096, 4096, None]),  # to the hard limit
        (256, 4096, 1000, [256, 1000, 4096, None]),  # capped
        (256, 256, 1 << 20, [256, 256, 256, None]),  # no room: unchanged, no error
        (2000, 4096, 1000, [2000, 2000, 4096, None]),  # above the cap: never lowered
    ],
)
def test_raise_fd_limit(soft: int, hard: int, cap: int, expected: list[object]) -> None:
    assert raised_in_child(soft, hard, cap) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def out_of_fds(sock: socket.socket) -> dict[str, object]:
    """The context asyncio's selector loop reports when accept() fails with EMFILE."""
    return {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
        "socket": sock,
    }


async def test_accept_failures_are_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    handler = AcceptFailures(logging.getLogger(LOGGER), "x.accept_failed", monotonic=clock)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        for _ in range(5):  # asyncio retries once a second
            handler(loop, out_of_fds(sock))
            clock.now += 1
        clock.now = 10.5
        handler(loop, out_of_fds(sock))
        address = str(sock.getsockname())
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.getMessage(), r.levelno) for r in lines] == [
        ("x.accept_failed", logging.WARNING)
    ] * 2
    assert [r.__dict__["count"] for r in lines] == [0, 4]  # the second says 4 were not logged
    assert lines[0].__dict__["socket"] == address
    assert "Too many open files" in lines[0].__dict__["error"]


async def test_other_loop_errors_go_to_the_default_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twin: anything else is asyncio's to report, as before."""
    handler = AcceptFailures(logging.getLogger(LOGGER), "x.accept_failed")
    handler(asyncio.get_running_loop(), {"message": "Task exception was never retrieved"})
    assert [r.name for r in caplog.records] == ["asyncio"]
    assert "Task exception was never retrieved" in caplog.records[0].getMessage()
