"""A connection does not carry the identity of a binary its process exec'd after connecting.

A helper process P connects to the Workload API, opens a relay socket, and forks. Its child C
runs a grpc client whose bytes the relay copies over P's connection, so the agent sees P (by
SO_PEERCRED) on every call C makes. P then either stays as it is or execs another binary; a
binary registered with ``unix:path`` must not hand its identity to C, and a stream C holds must
end once P is no longer the process that connected. The twins show that a registered process and
its forked children (same binary) keep being served.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import s2s
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.agent.workload_limits import WorkloadLimits
from s2s.testing import TestAuthority

REGISTERED = "spiffe://example.org/registered"
PYTHON = os.path.realpath(sys.executable)

HELPER = r"""
import json, os, socket, sys, threading, time
agent, relay_dir, mode, exec_path, kind = sys.argv[1:6]
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(agent)
relay = os.path.join(relay_dir, f"relay-{os.getpid()}.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(relay)
listener.listen(1)
go_r, go_w = os.pipe()
parent = os.getpid()
if os.fork():
    # P: once the child has made its first call, stay as we are or become another binary.
    os.close(go_w)
    os.read(go_r, 1)
    if mode == "exec":
        os.execv(exec_path, [exec_path, "-c", "import sys; sys.stdin.read()"])
    sys.stdin.read()
    sys.exit(0)

os.close(go_r)

def pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def serve_relay():
    client, _ = listener.accept()
    threading.Thread(target=pump, args=(client, conn), daemon=True).start()
    pump(conn, client)

threading.Thread(target=serve_relay, daemon=True).start()

import grpc
from s2s.workload_proto import workload_pb2 as pb

def say(**fields):
    print(json.dumps(fields), flush=True)

def outcome(read):
    try:
        return {"id": pb.X509SVIDResponse.FromString(read()).svids[0].spiffe_id}
    except grpc.RpcError as exc:
        return {"code": exc.code().name, "details": exc.details()}

channel = grpc.insecure_channel("unix:" + relay)
fetch = channel.unary_stream(
    "/SpiffeWorkloadAPI/FetchX509SVID",
    request_serializer=lambda b: b,
    response_deserializer=lambda b: b,
)
def open_stream():
    return fetch(b"", metadata=(("workload.spiffe.io", "true"),), timeout=20)

stream = open_stream()
say(step="first", **outcome(lambda: next(stream)))
if kind == "unary":
    stream.cancel()
os.write(go_w, b"x")
deadline = time.monotonic() + 10
while mode == "exec" and time.monotonic() < deadline:
    try:
        if os.readlink(f"/proc/{parent}/exe") == exec_path:
            break
    except OSError:
        pass
    time.sleep(0.01)
say(step="changed", exe=os.readlink(f"/proc/{parent}/exe"))
if kind == "unary":
    again = open_stream()
    say(step="after", **outcome(lambda: next(again)))
else:
    say(step="after", **outcome(lambda: next(stream)))
channel.close()
os._exit(0)
"""


@pytest.fixture
def registered_python(short_dir: Path) -> str:
    """A copy of this interpreter at a path of its own (``unix:path`` tells it apart)."""
    copy = short_dir / "registered-python"
    shutil.copy2(PYTHON, copy)
    return str(copy)


@pytest.fixture
def provider_with_entry(
    provider: StaticIdentityProvider, authority: TestAuthority, registered_python: str
) -> StaticIdentityProvider:
    provider.put("reg", [f"unix:path:{registered_python}"], authority.issue_x509_svid(REGISTERED))
    return provider


@pytest.fixture
async def served(
    provider_with_entry: StaticIdentityProvider, socket_dir: Path
) -> AsyncIterator[WorkloadApiServer]:
    async with WorkloadApiServer(
        provider=provider_with_entry,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        limits=WorkloadLimits(reattest_interval=0.3),
    ) as srv:
        yield srv


class Helper:
    """P (and through it C) as a subprocess; ``line()`` is C's next report."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert raw, "the helper ended without reporting"
        got: dict[str, Any] = json.loads(raw)
        return got

    async def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def start_helper(
    server: WorkloadApiServer, relay_dir: Path, *, run_as: str, mode: str, exec_path: str, kind: str
) -> Helper:
    repo = str(Path(s2s.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": f"{repo}:{sysconfig.get_paths()['purelib']}"}
    proc = await asyncio.create_subprocess_exec(
        run_as,
        "-c",
        HELPER,
        server.socket_path,
        str(relay_dir),
        mode,
        exec_path,
        kind,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    return Helper(proc)


async def run_unary(
    server: WorkloadApiServer, relay_dir: Path, *, run_as: str, mode: str, exec_path: str
) -> list[dict[str, Any]]:
    helper = await start_helper(
        server, relay_dir, run_as=run_as, mode=mode, exec_path=exec_path, kind="unary"
    )
    try:
        return [await helper.line() for _ in range(3)]
    finally:
        await helper.finish()


async def test_child_of_a_process_that_execs_a_registered_binary_is_refused(
    served: WorkloadApiServer, short_dir: Path, registered_python: str
) -> None:
    first, changed, after = await run_unary(
        served, short_dir, run_as=PYTHON, mode="exec", exec_path=registered_python
    )
    assert first["code"] == "PERMISSION_DENIED"  # P runs an unregistered binary
    assert changed["exe"] == registered_python  # P now runs the registered one ...
    assert after["code"] == "PERMISSION_DENIED", after  # ... but its connection does not
    assert "not the process that opened this connection" in after["details"]


async def test_registered_process_and_its_forked_child_are_served(
    served: WorkloadApiServer, short_dir: Path, registered_python: str
) -> None:
    first, changed, after = await run_unary(
        served, short_dir, run_as=registered_python, mode="stay", exec_path=""
    )
    assert first == {"step": "first", "id": REGISTERED}
    assert changed["exe"] == registered_python
    assert after == {"step": "after", "id": REGISTERED}


async def test_unregistered_process_that_stays_is_refused(
    served: WorkloadApiServer, short_dir: Path
) -> None:
    first, _, after = await run_unary(served, short_dir, run_as=PYTHON, mode="stay", exec_path="")
    assert first["code"] == after["code"] == "PERMISSION_DENIED"
    assert "no identity issued" in after["details"]


@pytest.mark.parametrize("rotate", [True, False], ids=["on-rotation", "periodic"])
async def test_stream_ends_when_its_caller_execs_another_binary(
    served: WorkloadApiServer,
    provider_with_entry: StaticIdentityProvider,
    authority: TestAuthority,
    short_dir: Path,
    registered_python: str,
    rotate: bool,
) -> None:
    helper = await start_helper(
        served, short_dir, run_as=registered_python, mode="exec", exec_path=PYTHON, kind="stream"
    )
    try:
        assert await helper.line() == {"step": "first", "id": REGISTERED}
        assert (await helper.line())["exe"] == PYTHON
        if rotate:  # a push re-attests the caller before anything is sent
            entry = [f"unix:path:{registered_python}"]
            provider_with_entry.put("reg", entry, authority.issue_x509_svid(REGISTERED))
        after = await helper.line()
    finally:
        await helper.finish()
    assert after["code"] == "PERMISSION_DENIED", after
    assert "not the process that opened this connection" in after["details"]


async def test_stream_of_a_registered_process_that_stays_gets_rotations(
    served: WorkloadApiServer,
    provider_with_entry: StaticIdentityProvider,
    authority: TestAuthority,
    short_dir: Path,
    registered_python: str,
) -> None:
    helper = await start_helper(
        served, short_dir, run_as=registered_python, mode="stay", exec_path="", kind="stream"
    )
    try:
        assert await helper.line() == {"step": "first", "id": REGISTERED}
        await helper.line()
        rotated = authority.issue_x509_svid(REGISTERED)
        provider_with_entry.put("reg", [f"unix:path:{registered_python}"], rotated)
        after = await helper.line()
    finally:
        await helper.finish()
    assert after == {"step": "after", "id": REGISTERED}
