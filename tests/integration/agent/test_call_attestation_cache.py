"""A connection's attestation is reused while a cheap reading of its caller stays the same.

The server runs the full attestation (selectors, binary hash) on the first call of a connection
and again only when the caller's reading (/proc start time, ids, groups, binary path and file
identity) changes or ``reattest_interval`` has passed; every call still checks the reading. The
caller here is this process, described by a /proc laid out in a temp dir, so that each change
(exec, binary rewritten, pid reused, uid or groups changed) can be made under a warm cache.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from s2s.agent.attestors.peercred import PeerCredentials
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.agent.workload_limits import WorkloadLimits
from s2s.core.selectors import Selector
from s2s.testing import TestAuthority
from s2s.workload_proto import workload_pb2 as pb

HEADER = (("workload.spiffe.io", "true"),)
FIELDS = " ".join(str(n) for n in range(3, 30))  # stat field n holds n: start time 22
PID, UID, GID = os.getpid(), os.getuid(), os.getgid()


class FakeProc:
    """/proc/<this pid> with stat, status and an exe link."""

    def __init__(self, root: Path, exe: Path) -> None:
        self.dir = root / str(PID)
        self.dir.mkdir(parents=True)
        self.start(22)
        self.ids(UID, groups="10 20")
        self.exec(exe)

    def start(self, start_time: int) -> None:
        fields = FIELDS.replace(" 22 ", f" {start_time} ")
        (self.dir / "stat").write_text(f"{PID} (x) {fields}\n")

    def ids(self, uid: int, *, groups: str) -> None:
        (self.dir / "status").write_text(
            f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"Gid:\t{GID}\t{GID}\t{GID}\t{GID}\nGroups:\t{groups}\n"
        )

    def exec(self, exe: Path) -> None:
        link = self.dir / "exe"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(exe)


class CountingAttestor(UnixAttestor):
    def __init__(self, proc_root: str) -> None:
        super().__init__(proc_root=proc_root, user_name=lambda _: None, group_name=lambda _: None)
        self.attests = 0
        self._count_lock = threading.Lock()

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]:
        with self._count_lock:
            self.attests += 1
        return super().attest(peer)


def write_binary(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def bins(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


@pytest.fixture
def proc(tmp_path: Path, bins: Path) -> FakeProc:
    write_binary(bins / "billing", b"\x7fELF billing v1")
    return FakeProc(tmp_path / "proc", bins / "billing")


@pytest.fixture
def attestor(proc: FakeProc) -> CountingAttestor:
    return CountingAttestor(str(proc.dir.parent))


async def serve(
    provider: StaticIdentityProvider,
    attestor: UnixAttestor,
    socket_dir: Path,
    limits: WorkloadLimits | None = None,
) -> WorkloadApiServer:
    srv = WorkloadApiServer(
        provider=provider,
        attestor=attestor,
        socket_path=str(socket_dir / "agent.sock"),
        proc_root=attestor._proc,
        limits=limits,
    )
    await srv.start()
    return srv


@pytest.fixture
async def channel(socket_dir: Path) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix:{socket_dir / 'agent.sock'}") as ch:
        yield ch


async def fetch(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """One FetchX509SVID: OK once the first message arrives, else the call's code."""
    call = channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.X509SVIDResponse.FromString,
    )(pb.X509SVIDRequest(), metadata=HEADER, timeout=30)
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    call.cancel()
    return grpc.StatusCode.OK


async def fetch_jwt(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """One FetchJWTSVID (a unary call: it attests once, where a stream may attest again)."""
    unary = channel.unary_unary(
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.JWTSVIDResponse.FromString,
    )
    try:
        await unary(pb.JWTSVIDRequest(audience=["db"]), metadata=HEADER, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def register(provider: StaticIdentityProvider, authority: TestAuthority, *selectors: str) -> None:
    svid = authority.issue_x509_svid("spiffe://example.org/billing")
    provider.put("billing", [f"unix:uid:{UID}", *selectors], svid)


async def test_repeated_calls_reuse_the_connections_attestation(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
) -> None:
    register(provider, authority)
    srv = await serve(provider, attestor, socket_dir)
    try:
        for _ in range(5):
            assert await fetch_jwt(channel) == grpc.StatusCode.OK
        assert attestor.attests == 1
    finally:
        await srv.stop()


async def test_an_expired_attestation_is_made_again(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
) -> None:
    register(provider, authority)
    limits = WorkloadLimits(reattest_interval=1e-9)
    srv = await serve(provider, attestor, socket_dir, limits)
    try:
        for _ in range(3):
            assert await fetch_jwt(channel) == grpc.StatusCode.OK
        assert attestor.attests == 3
    finally:
        await srv.stop()


async def test_a_binary_rewritten_in_place_is_hashed_again(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
    bins: Path,
) -> None:
    digest = hashlib.sha256((bins / "billing").read_bytes()).hexdigest()
    register(provider, authority, f"unix:sha256:{digest}")
    srv = await serve(provider, attestor, socket_dir)
    try:
        assert await fetch_jwt(channel) == grpc.StatusCode.OK
        assert await fetch_jwt(channel) == grpc.StatusCode.OK
        write_binary(bins / "billing", b"\x7fELF billing v2, other size")  # same inode
        assert await fetch_jwt(channel) == grpc.StatusCode.PERMISSION_DENIED
        assert attestor.attests == 2
    finally:
        await srv.stop()


async def test_an_exec_under_a_warm_cache_is_refused(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
    proc: FakeProc,
    bins: Path,
) -> None:
    register(provider, authority)
    srv = await serve(provider, attestor, socket_dir)
    try:
        assert await fetch(channel) == grpc.StatusCode.OK
        write_binary(bins / "other", b"\x7fELF other")
        proc.exec(bins / "other")
        assert await fetch(channel) == grpc.StatusCode.PERMISSION_DENIED
        proc.exec(bins / "billing")  # back to the admitted binary: the connection stays refused
        assert await fetch(channel) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await srv.stop()


async def test_a_reused_pid_under_a_warm_cache_is_refused(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
    proc: FakeProc,
) -> None:
    register(provider, authority)
    srv = await serve(provider, attestor, socket_dir)
    try:
        assert await fetch(channel) == grpc.StatusCode.OK
        proc.start(23)  # another process with the same pid
        assert await fetch(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.stop()


async def test_changed_ids_under_a_warm_cache_are_refused(
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    socket_dir: Path,
    attestor: CountingAttestor,
    channel: grpc.aio.Channel,
    proc: FakeProc,
) -> None:
    register(provider, authority)
    srv = await serve(provider, attestor, socket_dir)
    try:
        assert await fetch(channel) == grpc.StatusCode.OK
        proc.ids(UID, groups="10 20 30")
        assert await fetch(channel) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await srv.stop()
    proc.ids(UID, groups="10 20")
    srv = await serve(provider, attestor, socket_dir)
    try:
        async with grpc.aio.insecure_channel(f"unix:{socket_dir / 'agent.sock'}") as fresh:
            assert await fetch(fresh) == grpc.StatusCode.OK
            proc.ids(UID + 1, groups="10 20")
            assert await fetch(fresh) == grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.stop()
