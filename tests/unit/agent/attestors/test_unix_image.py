"""The caller's image (binary, ids) at accept time against each call, and the hash cache,
on a /proc laid out in a temp dir."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from s2s.agent.attestors.peercred import PeerCredentials
from s2s.agent.attestors.unix import UnixAttestor, UnixAttestorConfig
from s2s.core.errors import AttestationFailed, InvalidConfig, NotAuthorized
from s2s.core.selectors import Selector

FIELDS = " ".join(str(n) for n in range(3, 30))  # stat field n holds n: start time 22


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root

    def process(self, pid: int, exe: Path, *, groups: str = "10 20", uid: int = 1000) -> None:
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "stat").write_text(f"{pid} (x) {FIELDS}\n")
        (d / "status").write_text(
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t100\t100\t100\t100\nGroups:\t{groups}\n"
        )
        self.exec(pid, exe)

    def exec(self, pid: int, exe: Path) -> None:
        link = self.root / str(pid) / "exe"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(exe)


def binary(tmp_path: Path, name: str, content: bytes = b"\x7fELF") -> Path:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def attestor(proc: FakeProc, **config: int) -> UnixAttestor:
    return UnixAttestor(
        UnixAttestorConfig(**config),  # type: ignore[arg-type]
        proc_root=str(proc.root),
        user_name=lambda uid: None,
        group_name=lambda gid: None,
    )


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def peer(pid: int = 7, uid: int = 1000) -> PeerCredentials:
    return PeerCredentials(pid, uid, 100, 22)


def test_calls_by_the_admitted_process_pass(tmp_path: Path, proc: FakeProc) -> None:
    exe = binary(tmp_path, "billing")
    proc.process(7, exe)
    unix = attestor(proc)
    admitted = unix.admit(peer())
    assert admitted.image is not None
    assert admitted.image.exe == str(exe)
    selectors = unix.attest(admitted)
    assert Selector("unix", f"path:{exe}") in selectors
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    assert Selector("unix", f"sha256:{digest}") in selectors
    assert unix.attest(admitted) == selectors  # and again


def test_exec_of_another_binary_after_accept_is_refused(tmp_path: Path, proc: FakeProc) -> None:
    proc.process(7, binary(tmp_path, "shell"))
    unix = attestor(proc)
    admitted = unix.admit(peer())
    registered = binary(tmp_path, "billing")
    proc.exec(7, registered)
    with pytest.raises(NotAuthorized, match=r"now runs .*billing.* ran .*shell"):
        unix.attest(admitted)
    # Twin: a connection accepted after the exec is the registered binary's.
    assert Selector("unix", f"path:{registered}") in unix.attest(unix.admit(peer()))


def test_exec_of_a_binary_at_the_same_path_is_refused(tmp_path: Path, proc: FakeProc) -> None:
    exe = binary(tmp_path, "tool", b"old")
    proc.process(7, exe)
    unix = attestor(proc)
    admitted = unix.admit(peer())
    os.replace(binary(tmp_path, "tool.new", b"new"), exe)  # another inode at the same path
    with pytest.raises(NotAuthorized):
        unix.attest(admitted)


def test_changed_groups_after_accept_are_refused(tmp_path: Path, proc: FakeProc) -> None:
    exe = binary(tmp_path, "billing")
    proc.process(7, exe)
    unix = attestor(proc)
    admitted = unix.admit(peer())
    proc.process(7, exe, groups="10 20 30")
    with pytest.raises(NotAuthorized, match="supplementary groups"):
        unix.attest(admitted)


def test_without_binaries_only_ids_are_compared(tmp_path: Path, proc: FakeProc) -> None:
    proc.process(7, binary(tmp_path, "a"))
    unix = attestor(proc, discover_path=False, sha256=False)  # type: ignore[arg-type]
    admitted = unix.admit(peer())
    proc.exec(7, binary(tmp_path, "b"))
    assert Selector("unix", "uid:1000") in unix.attest(admitted)


def test_admit_fails_for_a_process_that_is_gone_or_changed_uid(
    tmp_path: Path, proc: FakeProc
) -> None:
    with pytest.raises(AttestationFailed):
        attestor(proc).admit(peer(pid=99))
    proc.process(7, binary(tmp_path, "a"), uid=0)
    with pytest.raises(AttestationFailed, match="changed its uid"):
        attestor(proc).admit(peer())


def test_hash_cache_is_bounded_and_follows_content(tmp_path: Path, proc: FakeProc) -> None:
    unix = attestor(proc, hash_cache_size=2)
    digests = {}
    for pid, name in enumerate(("a", "b", "c"), start=10):
        exe = binary(tmp_path, name, name.encode() * 100)
        proc.process(pid, exe)
        selectors = unix.attest(unix.admit(peer(pid)))
        digests[name] = {s.value for s in selectors if s.value.startswith("sha256:")}
        assert digests[name] == {f"sha256:{hashlib.sha256(exe.read_bytes()).hexdigest()}"}
    assert unix.cached_hashes == 2  # least recently used first out
    # New content (new size and mtime) is hashed again, never served from the cache.
    exe = tmp_path / "bin" / "c"
    exe.write_bytes(b"changed")
    os.utime(exe, ns=(1, 1))
    got = {s.value for s in unix.attest(unix.admit(peer(12))) if s.value.startswith("sha256:")}
    assert got == {f"sha256:{hashlib.sha256(b'changed').hexdigest()}"}


def test_bad_cache_size() -> None:
    with pytest.raises(InvalidConfig):
        UnixAttestorConfig(hash_cache_size=0)


def test_recheck_holds_the_caller_to_its_image_and_start_time(
    tmp_path: Path, proc: FakeProc
) -> None:
    exe = binary(tmp_path, "billing")
    proc.process(7, exe)
    unix = attestor(proc)
    admitted = unix.admit(peer())
    unix.recheck(admitted)  # unchanged: passes
    proc.exec(7, binary(tmp_path, "other"))
    with pytest.raises(NotAuthorized, match="not the process that opened this connection"):
        unix.recheck(admitted)
    proc.exec(7, exe)
    (proc.root / "7" / "stat").write_text(f"7 (x) {FIELDS.replace(' 22 ', ' 23 ')}\n")
    with pytest.raises(AttestationFailed, match="pid now names another process"):
        unix.recheck(admitted)  # the pid was reused


def test_a_status_longer_than_one_read_is_read_whole(tmp_path: Path, proc: FakeProc) -> None:
    groups = " ".join(str(g) for g in range(1000, 6000))  # about 25 KB of Groups line
    proc.process(7, binary(tmp_path, "billing"), groups=groups)
    unix = attestor(proc, sha256=False)
    selectors = unix.attest(unix.admit(peer()))
    assert Selector("unix", "supplementary_gid:5999") in selectors
    assert len([s for s in selectors if s.value.startswith("supplementary_gid:")]) == 5000
