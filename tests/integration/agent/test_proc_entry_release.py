"""Each Workload API connection holds its caller's /proc entry open, and only while it lasts.

A real server on a real Unix socket: the entry (two fds: /proc/<pid> and its status)
is opened when a connection is accepted, read on every call, and released when the connection
closes or once its caller was found to have changed (its calls are refused from then on).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.testing import TestAuthority
from s2s.workload_proto import workload_pb2 as pb

HEADER = (("workload.spiffe.io", "true"),)
PID = os.getpid()
FIELDS = " ".join(str(n) for n in range(3, 30))  # stat field n holds n: start time 22


def held_under(prefix: str) -> int:
    """This process's fds whose target starts with ``prefix``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                count += 1
        except OSError:
            continue
    return count


async def until(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def channel(sock: Path) -> grpc.aio.Channel:
    # a connection of its own (no subchannel shared with the other channels)
    return grpc.aio.insecure_channel(
        f"unix:{sock}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def fetch_jwt(ch: grpc.aio.Channel) -> grpc.StatusCode:
    unary = ch.unary_unary(
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.JWTSVIDResponse.FromString,
    )
    try:
        await unary(pb.JWTSVIDRequest(audience=["db"]), metadata=HEADER, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_each_connection_holds_the_entry_until_it_closes(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path
) -> None:
    provider.put(
        "me", [f"unix:uid:{os.getuid()}"], authority.issue_x509_svid("spiffe://example.org/me")
    )
    baseline = held_under(f"/proc/{PID}")
    sock = socket_dir / "agent.sock"
    async with WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=str(sock)):
        channels = [channel(sock) for _ in range(3)]
        for ch in channels:
            assert await fetch_jwt(ch) == grpc.StatusCode.OK
            assert await fetch_jwt(ch) == grpc.StatusCode.OK  # the same connection again
        assert held_under(f"/proc/{PID}") == baseline + 3 * 2
        for ch in channels:
            await ch.close()
        await until(lambda: held_under(f"/proc/{PID}") == baseline)
    assert held_under(f"/proc/{PID}") == baseline


async def test_a_caller_found_changed_releases_the_entry_at_once(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "proc"
    d = fake / str(PID)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{PID} (x) {FIELDS}\n")
    uid, gid = os.getuid(), os.getgid()
    status = f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\nGroups:\t10\n"
    (d / "status").write_text(status)
    (tmp_path / "billing").write_bytes(b"\x7fELF billing")
    (d / "exe").symlink_to(tmp_path / "billing")
    provider.put("me", [f"unix:uid:{uid}"], authority.issue_x509_svid("spiffe://example.org/me"))
    attestor = UnixAttestor(
        proc_root=str(fake), user_name=lambda _: None, group_name=lambda _: None
    )
    sock = socket_dir / "agent.sock"
    async with (
        WorkloadApiServer(
            provider=provider, attestor=attestor, socket_path=str(sock), proc_root=str(fake)
        ),
        channel(sock) as ch,
    ):
        assert await fetch_jwt(ch) == grpc.StatusCode.OK
        assert held_under(str(d)) == 2  # twin: a caller that stays holds it
        (d / "status").write_text(status.replace("\t10\n", "\t10 20\n"))  # new groups
        assert await fetch_jwt(ch) == grpc.StatusCode.PERMISSION_DENIED
        assert held_under(str(d)) == 0  # the connection is still open
        assert await fetch_jwt(ch) == grpc.StatusCode.PERMISSION_DENIED
