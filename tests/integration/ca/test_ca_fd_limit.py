"""``s2s-ca serve`` raises its soft open-files limit to the hard one at start and logs it once
(``ca.fd_limit``, before/after); with no room (hard == soft) it starts unchanged, no warning."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from process_limits import events, open_files_limit, with_limit
from test_admin_cli import CLI, TD, s2s_ca


@contextmanager
def serving(tmp_path: Path, soft: int, hard: int) -> Iterator[tuple[int, list[str]]]:
    """``s2s-ca serve`` under an open-files limit of (soft, hard) until ``ca.started``; yields
    its pid and (after it stopped) its log."""
    data_dir = tmp_path / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*with_limit(soft, hard), *CLI, "--data-dir", str(data_dir),
             "serve", "--listen", "127.0.0.1:0"],
            stdout=out, stderr=out,
        )  # fmt: skip
    text: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while '"ca.started"' not in log.read_text():
            assert process.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"serve did not start: {log.read_text()[-2000:]}"
            time.sleep(0.02)
        yield process.pid, text
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()[-2000:]
        text.append(log.read_text())


def test_serve_raises_the_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    with serving(tmp_path, 256, 4096) as (pid, log):
        assert open_files_limit(pid) == (4096, 4096)
    (line,) = events(log[0], "ca.fd_limit")
    assert (line["level"], line["before"], line["after"], line["limit"]) == (
        "info",
        256,
        4096,
        4096,
    )


def test_serve_with_no_room_starts_with_its_limit_unchanged(tmp_path: Path) -> None:
    with serving(tmp_path, 256, 256) as (pid, log):
        assert open_files_limit(pid) == (256, 256)
    (line,) = events(log[0], "ca.fd_limit")
    assert (line["level"], line["before"], line["after"]) == ("info", 256, 256)
    assert "error" not in line
