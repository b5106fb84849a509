"""Workload attestation against the kernel's own view of real processes."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2s.agent.attestors.peercred import PeerCredentials, peer_credentials, process_start_time
from s2s.agent.attestors.unix import UnixAttestor, UnixAttestorConfig
from s2s.core.errors import AttestationFailed, InvalidConfig
from s2s.core.selectors import Selector


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "a.sock"))
    sock.listen(4)
    try:
        yield sock
    finally:
        sock.close()


def accept_from_self(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    server_side, _ = listener.accept()
    return client, server_side


def unix(value: str) -> Selector:
    return Selector("unix", value)


def test_selectors_match_the_kernels_view_of_this_process(listener: socket.socket) -> None:
    client, conn = accept_from_self(listener)
    with client, conn:
        peer = peer_credentials(conn)
        assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
        selectors = UnixAttestor().attest(peer)
    exe = os.readlink("/proc/self/exe")
    with open(exe, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    expected = {
        unix(f"uid:{os.geteuid()}"),
        unix(f"gid:{os.getegid()}"),
        unix(f"user:{pwd.getpwuid(os.geteuid()).pw_name}"),
        unix(f"group:{grp.getgrgid(os.getegid()).gr_name}"),
        unix(f"path:{exe}"),
        unix(f"sha256:{digest}"),
    }
    for gid in os.getgroups():
        expected.add(unix(f"supplementary_gid:{gid}"))
        expected.add(unix(f"supplementary_group:{grp.getgrgid(gid).gr_name}"))
    assert selectors == expected


CHILD = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
if sys.argv[2] == "setuid":
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
print("ready", flush=True)
sys.stdin.readline()
"""


def spawn_child(
    listener: socket.socket, mode: str = ""
) -> tuple[subprocess.Popen[str], socket.socket]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, listener.getsockname(), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    conn, _ = listener.accept()
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child, conn


def finish(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(30)


def test_child_process_is_attested_by_its_own_pid(listener: socket.socket) -> None:
    child, conn = spawn_child(listener)
    try:
        peer = peer_credentials(conn)
        assert peer.pid == child.pid
        assert peer.start_time == process_start_time(child.pid)
        selectors = UnixAttestor().attest(peer)
        assert unix(f"path:{os.readlink(f'/proc/{child.pid}/exe')}") in selectors
    finally:
        conn.close()
        finish(child)


def test_exited_caller_fails_attestation(listener: socket.socket) -> None:
    child, conn = spawn_child(listener)
    with conn:
        peer = peer_credentials(conn)
        finish(child)
        with pytest.raises(AttestationFailed):
            UnixAttestor().attest(peer)


def test_reused_pid_fails_attestation(listener: socket.socket) -> None:
    """Same pid, different start time: another process now owns the pid."""
    client, conn = accept_from_self(listener)
    with client, conn:
        peer = peer_credentials(conn)
    assert UnixAttestor().attest(peer)
    reused = PeerCredentials(peer.pid, peer.uid, peer.gid, peer.start_time - 1)
    with pytest.raises(AttestationFailed, match="pid now names another process"):
        UnixAttestor().attest(reused)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to setuid")
def test_caller_that_drops_privileges_after_connecting_fails(listener: socket.socket) -> None:
    child, conn = spawn_child(listener, "setuid")
    try:
        peer = peer_credentials(conn)
        assert peer.uid == 0
        with pytest.raises(AttestationFailed, match="changed its uid"):
            UnixAttestor().attest(peer)
    finally:
        conn.close()
        finish(child)


def test_sha256_size_limit_and_switches(listener: socket.socket) -> None:
    client, conn = accept_from_self(listener)
    with client, conn:
        peer = peer_credentials(conn)
        full = UnixAttestor().attest(peer)
        limited = UnixAttestor(UnixAttestorConfig(sha256_max_bytes=1)).attest(peer)
        no_hash = UnixAttestor(UnixAttestorConfig(sha256=False)).attest(peer)
        bare = UnixAttestor(UnixAttestorConfig(discover_path=False, sha256=False)).attest(peer)
    kinds = {s.value.split(":")[0] for s in full}
    assert {"path", "sha256"} <= kinds
    assert {s.value.split(":")[0] for s in limited} == kinds - {"sha256"}
    assert no_hash == limited
    assert {s.value.split(":")[0] for s in bare} == kinds - {"sha256", "path"}


def test_bad_config() -> None:
    with pytest.raises(InvalidConfig):
        UnixAttestorConfig(sha256_max_bytes=-1)
    with pytest.raises(InvalidConfig):
        UnixAttestorConfig(discover_path=False, sha256=True)


def write_proc(root: Path, pid: int, *, stat: str, status: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(stat)
    (d / "status").write_text(status)


def test_start_time_parsing_survives_odd_process_names(tmp_path: Path) -> None:
    fields = " ".join(str(n) for n in range(3, 30))  # field n holds n
    write_proc(tmp_path, 7, stat=f"7 (a) b (c)) {fields}\n", status="")
    assert process_start_time(7, proc_root=str(tmp_path)) == 22


def test_unreadable_proc_entries_fail_attestation(tmp_path: Path) -> None:
    with pytest.raises(AttestationFailed):
        process_start_time(424242, proc_root=str(tmp_path))
    write_proc(tmp_path, 8, stat="8 (x) garbage\n", status="Uid:\tnope\n")
    with pytest.raises(AttestationFailed):
        process_start_time(8, proc_root=str(tmp_path))
    fields = " ".join(str(n) for n in range(3, 30))
    write_proc(
        tmp_path,
        9,
        stat=f"9 (x) {fields}\n",
        status="Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\tone two\n",
    )
    attestor = UnixAttestor(
        UnixAttestorConfig(discover_path=False, sha256=False), proc_root=str(tmp_path)
    )
    with pytest.raises(AttestationFailed, match="Groups"):
        attestor.attest(PeerCredentials(9, 0, 0, 22))
    (tmp_path / "9" / "status").write_text("Name:\tx\n")
    with pytest.raises(AttestationFailed, match="Uid"):
        attestor.attest(PeerCredentials(9, 0, 0, 22))


def test_names_are_omitted_for_unknown_accounts(tmp_path: Path) -> None:
    fields = " ".join(str(n) for n in range(3, 30))
    status = "Uid:\t4242\t4242\t4242\t4242\nGid:\t4343\t4343\t4343\t4343\nGroups:\t4444\n"
    write_proc(tmp_path, 10, stat=f"10 (x) {fields}\n", status=status)
    attestor = UnixAttestor(
        UnixAttestorConfig(discover_path=False, sha256=False),
        proc_root=str(tmp_path),
        user_name=lambda uid: None,
        group_name=lambda gid: None,
    )
    assert attestor.attest(PeerCredentials(10, 4242, 4343, 22)) == {
        unix("uid:4242"),
        unix("gid:4343"),
        unix("supplementary_gid:4444"),
    }
