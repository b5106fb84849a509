"""Connection limits and idle timeouts of the Workload API, with callers of two uids.

The test process (root) holds connections as raw sockets; a subprocess that drops to uid 65534
before connecting is the other caller. Every refusal has a twin that is served.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.metrics import AgentMetrics
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.agent.workload_limits import WorkloadLimits
from s2s.testing import TestAuthority
from s2s.workload_proto import workload_pb2 as pb

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run workloads as 65534")

ME = f"unix:uid:{os.getuid()}"
NOBODY = 65534
HEADER = (("workload.spiffe.io", "true"),)

FETCH_AS_NOBODY = r"""
import json, os, sys, grpc
from s2s.workload_proto import workload_pb2 as pb
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after the imports: /root is 0700
with grpc.insecure_channel("unix:" + sys.argv[1]) as channel:
    call = channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda b: b,
        response_deserializer=pb.X509SVIDResponse.FromString,
    )(b"", metadata=(("workload.spiffe.io", "true"),), timeout=10, wait_for_ready=False)
    try:
        print(json.dumps({"ids": [s.spiffe_id for s in next(call).svids]}))
    except grpc.RpcError as exc:
        print(json.dumps({"code": exc.code().name}))
"""


async def fetch_as_nobody(server: WorkloadApiServer) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FETCH_AS_NOBODY,
        server.socket_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def fetch_as_me(server: WorkloadApiServer) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as channel:
        call = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.X509SVIDResponse.FromString,
        )(pb.X509SVIDRequest(), metadata=HEADER, timeout=10)
        try:
            return {"ids": [s.spiffe_id for s in (await call.read()).svids]}
        except grpc.aio.AioRpcError as exc:
            return {"code": exc.code().name}
        finally:
            call.cancel()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the agent has closed ``sock`` (EOF or reset); grpc's greeting is skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while await asyncio.wait_for(loop.sock_recv(sock, 1024), deadline - loop.time()):
            pass
    except ConnectionResetError:
        pass
    return True


@contextmanager
def raw_connections(path: str, n: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.setblocking(False)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def entries(provider: StaticIdentityProvider, authority: TestAuthority) -> StaticIdentityProvider:
    provider.put("root", [ME], authority.issue_x509_svid("spiffe://example.org/root"))
    nobody = authority.issue_x509_svid("spiffe://example.org/nobody")
    provider.put("nobody", [f"unix:uid:{NOBODY}"], nobody)
    return provider


@asynccontextmanager
async def serving(
    provider: StaticIdentityProvider, socket_dir: Path, limits: WorkloadLimits
) -> AsyncIterator[tuple[WorkloadApiServer, AgentMetrics, list[tuple[str, str]]]]:
    metrics = AgentMetrics()
    events: list[tuple[str, str]] = []

    def observe(event: str, reason: str) -> None:
        events.append((event, reason))
        metrics.observe_connection(event, reason)

    async with WorkloadApiServer(
        provider=provider,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        observe_connection=observe,
        limits=limits,
    ) as srv:
        yield srv, metrics, events


def metric(metrics: AgentMetrics, name: str, reason: str) -> float | None:
    value = metrics.registry.get_sample_value(name, {"reason": reason})
    return value


async def test_uid_at_its_limit_does_not_stop_another_uid(
    entries: StaticIdentityProvider, socket_dir: Path
) -> None:
    limits = WorkloadLimits(max_connections=10, max_connections_per_uid=2)
    async with serving(entries, socket_dir, limits) as (srv, metrics, events):
        with raw_connections(srv.socket_path, 2) as held:
            await until(lambda: srv.open_connections == 2, "two connections of uid 0")
            # uid 0 is at its limit: a third connection is closed at once ...
            with raw_connections(srv.socket_path, 1) as (extra,):
                assert await closed_by_peer(extra)
            assert await fetch_as_me(srv) == {"code": "UNAVAILABLE"}
            # ... while uid 65534 is served.
            assert await fetch_as_nobody(srv) == {"ids": ["spiffe://example.org/nobody"]}
            assert srv.open_connections == 2
            held[0].close()
            await until(lambda: srv.open_connections == 1, "the agent to see the close")
            # Twin: below its limit again, uid 0 is served.
            assert await fetch_as_me(srv) == {"ids": ["spiffe://example.org/root"]}
    assert set(events) == {("refused", "uid_limit")}
    refused = metric(metrics, "s2s_agent_workload_api_connections_refused_total", "uid_limit")
    assert refused == len(events) >= 2


async def test_total_limit_refuses_every_uid(
    entries: StaticIdentityProvider, socket_dir: Path
) -> None:
    limits = WorkloadLimits(max_connections=2, max_connections_per_uid=2)
    async with serving(entries, socket_dir, limits) as (srv, metrics, events):
        with raw_connections(srv.socket_path, 2) as held:
            await until(lambda: srv.open_connections == 2, "two connections")
            assert await fetch_as_nobody(srv) == {"code": "UNAVAILABLE"}
            held[1].close()
            await until(lambda: srv.open_connections == 1, "the agent to see the close")
            assert await fetch_as_nobody(srv) == {"ids": ["spiffe://example.org/nobody"]}
    assert ("refused", "total_limit") in events
    assert metric(metrics, "s2s_agent_workload_api_connections_refused_total", "total_limit")


async def test_idle_connection_is_closed_but_open_stream_is_not(
    entries: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path
) -> None:
    limits = WorkloadLimits(idle_timeout=0.3)
    async with serving(entries, socket_dir, limits) as (srv, metrics, events):
        async with grpc.aio.insecure_channel(f"unix:{srv.socket_path}") as channel:
            stream = channel.unary_stream(
                "/SpiffeWorkloadAPI/FetchX509SVID",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.X509SVIDResponse.FromString,
            )(pb.X509SVIDRequest(), metadata=HEADER, timeout=30)
            first = await stream.read()
            # A connection that never calls is closed after the timeout; by then the stream's
            # connection, which is older, has been without a new call for longer than that.
            with raw_connections(srv.socket_path, 1) as (silent,):
                assert await closed_by_peer(silent)
            assert ("closed", "idle") in events
            rotated = authority.issue_x509_svid("spiffe://example.org/root")
            entries.put("root", [ME], rotated)
            second = await stream.read()
            assert second.svids[0].x509_svid != first.svids[0].x509_svid
            stream.cancel()
        # A channel whose connection was closed while idle reconnects for its next call.
        async with grpc.aio.insecure_channel(f"unix:{srv.socket_path}") as channel:
            bundles = channel.unary_stream(
                "/SpiffeWorkloadAPI/FetchJWTBundles",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.JWTBundlesResponse.FromString,
            )
            for _ in range(2):
                idle_closes = events.count(("closed", "idle"))
                call = bundles(pb.JWTBundlesRequest(), metadata=HEADER, timeout=10)
                assert list((await call.read()).bundles) == ["spiffe://example.org"]
                call.cancel()
                await until(
                    lambda n=idle_closes: events.count(("closed", "idle")) > n,  # type: ignore[misc]
                    "the idle connection to be closed",
                )
                # The client must have seen the close before its next call: a call written in
                # the instant the server hangs up fails UNAVAILABLE, as with any gRPC server.
                await until(
                    lambda: channel.get_state() != grpc.ChannelConnectivity.READY,
                    "the client to see its connection closed",
                )
    assert metric(metrics, "s2s_agent_workload_api_connections_closed_total", "idle")


async def test_a_connection_with_calls_spread_over_the_timeout_is_not_idle(
    entries: StaticIdentityProvider, socket_dir: Path
) -> None:
    # The idle timer is not moved by each call: when it fires after a call, it waits for the
    # rest of the time since that call's end (here calls every 0.1 s for 2.5 timeouts of 1 s).
    # The timeout is well above the pacing: a gap between two calls longer than the timeout (a
    # loaded machine stalling the loop) would close the connection as idle, rightly.
    limits = WorkloadLimits(idle_timeout=1.0)
    async with (
        serving(entries, socket_dir, limits) as (srv, _metrics, events),
        grpc.aio.insecure_channel(f"unix:{srv.socket_path}") as channel,
    ):
        bundles = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchJWTBundles",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.JWTBundlesResponse.FromString,
        )
        for _ in range(25):
            call = bundles(pb.JWTBundlesRequest(), metadata=HEADER, timeout=10)
            await call.read()
            call.cancel()
            await asyncio.sleep(0.1)  # pacing the calls, not waiting for an outcome
        assert ("closed", "idle") not in events
        await until(lambda: ("closed", "idle") in events, "the idle connection to be closed")
