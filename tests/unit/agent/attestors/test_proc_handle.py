"""A caller's /proc entry held open (ProcHandle): the per-call check reads through it.

Real processes under the real /proc: the held entry reads what the path functions read, fails
once its process is gone, and refuses to read once released; the binary's key from statx is the
one os.stat gives. A /proc laid out in a temp dir covers a status longer than one read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2s.agent.attestors.peercred import (
    PeerCredentials,
    ProcHandle,
    file_key,
    open_peer,
    process_reading,
    process_start_time,
    recheck_reading,
)
from s2s.core.errors import AttestationFailed


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    yield proc
    proc.kill()
    proc.wait()


def proc_fds() -> set[str]:
    """What this process's fds under /proc/<pid>... point at."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/proc/") and target.split("/")[2].isdigit():
            out.add(f"{fd} {target}")
    return out


def test_the_held_entry_reads_what_the_paths_read(child: subprocess.Popen[bytes]) -> None:
    peer = open_peer(child.pid, os.getuid(), os.getgid())
    try:
        assert peer.proc is not None
        assert peer.start_time == process_start_time(child.pid)
        by_path = process_reading(peer)
        assert peer.proc.reading(peer, with_binary=True) == by_path
        assert recheck_reading(peer) == by_path
        assert by_path[0].exe == os.path.realpath(sys.executable)
    finally:
        peer.close()


def test_the_held_entry_fails_once_its_process_is_gone(child: subprocess.Popen[bytes]) -> None:
    peer = open_peer(child.pid, os.getuid(), os.getgid())
    try:
        assert peer.proc is not None
        assert peer.proc.bound  # procfs: the start time need not be read on every call
        recheck_reading(peer)  # twin: alive, it passes
        child.kill()
        child.wait()  # reaped: the pid is free for another process
        with pytest.raises(AttestationFailed):
            recheck_reading(peer)
        assert peer.proc is not None
        with pytest.raises(AttestationFailed):
            peer.proc.start_time()
    finally:
        peer.close()


def test_ids_other_than_the_connect_time_ones_are_refused(child: subprocess.Popen[bytes]) -> None:
    peer = open_peer(child.pid, os.getuid() + 1, os.getgid())
    try:
        with pytest.raises(AttestationFailed, match="uid or gid"):
            recheck_reading(peer)
    finally:
        peer.close()


def test_a_released_entry_reads_nothing_and_holds_no_fd(child: subprocess.Popen[bytes]) -> None:
    before = proc_fds()
    peer = open_peer(child.pid, os.getuid(), os.getgid())
    assert len(proc_fds() - before) == 2  # /proc/<pid> and its status
    peer.close()
    peer.close()  # twice is harmless
    assert proc_fds() == before
    assert peer.proc is not None
    assert peer.proc.closed
    with pytest.raises(AttestationFailed, match="released"):
        recheck_reading(peer)


def test_a_handle_nobody_closed_is_closed_when_collected(child: subprocess.Popen[bytes]) -> None:
    before = proc_fds()
    handle = ProcHandle(child.pid)
    assert proc_fds() != before
    del handle
    assert proc_fds() == before


def test_a_missing_process_fails_and_leaves_no_fd(tmp_path: Path) -> None:
    before = proc_fds()
    with pytest.raises(AttestationFailed):
        open_peer(2**22 + 7, 0, 0)  # above pid_max
    (tmp_path / "7").mkdir()  # an entry without stat: opened, then refused
    (tmp_path / "7" / "status").write_text("Uid:\t0\t0\t0\t0\n")
    with pytest.raises(AttestationFailed):
        open_peer(7, 0, 0, proc_root=str(tmp_path))
    assert proc_fds() == before


def test_the_binary_key_is_the_stat_key(child: subprocess.Popen[bytes], tmp_path: Path) -> None:
    handle = ProcHandle(child.pid)
    try:
        assert handle._binary_key() == file_key(os.stat(f"/proc/{child.pid}/exe"))
    finally:
        handle.close()
    d = tmp_path / "7"
    d.mkdir()
    (d / "stat").write_text("7 (x) " + " ".join(str(n) for n in range(3, 30)) + "\n")
    (d / "status").write_text("Uid:\t0\t0\t0\t0\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x7fELF one")
    (d / "exe").symlink_to(binary)
    handle = ProcHandle(7, proc_root=str(tmp_path))
    try:
        first = handle._binary_key()
        assert first == file_key(os.stat(binary))
        binary.write_bytes(b"\x7fELF two, longer")  # rewritten in place: another key
        assert handle._binary_key() != first
        assert handle._binary_key() == file_key(os.stat(binary))
        binary.unlink()
        with pytest.raises(FileNotFoundError):
            handle._binary_key()
    finally:
        handle.close()


def test_a_status_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    d = tmp_path / "7"
    d.mkdir()
    fields = " ".join(str(n) for n in range(3, 30))
    (d / "stat").write_text(f"7 (x) {fields}\n")
    groups = " ".join(str(g) for g in range(1, 5000))  # about 24 KB
    pad = "x" * 9000
    (d / "status").write_text(
        f"Uid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\nPad:\t{pad}\nGroups:\t{groups}\n"
    )
    peer = open_peer(7, 5, 6, proc_root=str(tmp_path))
    try:
        assert peer.proc is not None
        assert not peer.proc.bound  # not procfs: the start time is compared on every call
        image, key = recheck_reading(peer, proc_root=str(tmp_path), with_binary=False)
        assert key is None
        assert image.groups == tuple(range(1, 5000))
    finally:
        peer.close()


def test_without_a_held_entry_the_paths_are_read(child: subprocess.Popen[bytes]) -> None:
    peer = PeerCredentials(child.pid, os.getuid(), os.getgid(), process_start_time(child.pid))
    assert recheck_reading(peer) == process_reading(peer)
    stale = PeerCredentials(child.pid, os.getuid(), os.getgid(), peer.start_time + 1)
    with pytest.raises(AttestationFailed, match="another process"):
        recheck_reading(stale)
