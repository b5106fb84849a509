"""Workload API latency: FetchX509SVID first response and FetchJWTSVID, 1/10/100 concurrent clients.

The s2s server (front proxy + SO_PEERCRED attestation + static provider) and the baseline (a plain
grpc.aio server on a Unix socket returning the same pre-built responses, without proxy, header
check or attestation) each run in their own subprocess; the clients are grpc.aio channels (one per
client, so one connection each) in this process. Latency is per call, channel already connected.
FetchJWTSVID hits the provider's per-(ID, audience) cache after the first call, as an agent would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc

from bench._harness import Figure, percentiles
from s2s.agent import workload_messages as msg
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.bundle import BundleSet
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority
from s2s.workload_proto import workload_pb2 as pb

HEADER = (("workload.spiffe.io", "true"),)
CONCURRENCY = (1, 10, 100)


def _jwt_request() -> bytes:
    data: bytes = pb.JWTSVIDRequest(audience=["bench"]).SerializeToString()
    return data


async def _call_x509(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )(b"", metadata=HEADER, timeout=30)
    message = await call.read()
    call.cancel()
    if not isinstance(message, bytes) or not message:
        raise RuntimeError("FetchX509SVID returned no message")


def _jwt_caller(request: bytes) -> Any:
    async def call(channel: grpc.aio.Channel) -> None:
        unary = channel.unary_unary(
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        await unary(request, metadata=HEADER, timeout=30)

    return call


async def _measure(path: str, call: Any, clients: int, per_client: int) -> list[float]:
    channels = [grpc.aio.insecure_channel(f"unix:{path}") for _ in range(clients)]
    try:
        await asyncio.gather(*(call(ch) for ch in channels))  # connect + warm up

        async def run(ch: grpc.aio.Channel) -> list[float]:
            out = []
            for _ in range(per_client):
                start = time.perf_counter()
                await call(ch)
                out.append(time.perf_counter() - start)
            return out

        results = await asyncio.gather(*(run(ch) for ch in channels))
        return [s for r in results for s in r]
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))


async def _rotation(server: _Server, streams: int, rounds: int) -> list[float]:
    """Seconds from asking the server to rotate until each open stream has the new message."""
    channels = [grpc.aio.insecure_channel(f"unix:{server.path}") for _ in range(streams)]
    calls = [
        ch.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )(b"", metadata=HEADER)
        for ch in channels
    ]
    try:
        await asyncio.gather(*(c.read() for c in calls))
        samples: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()

            async def arrival(call: Any, start: float = start) -> float:
                await call.read()
                return time.perf_counter() - start

            server.command("rotate")
            samples += await asyncio.gather(*(arrival(c) for c in calls))
        return samples
    finally:
        for c in calls:
            c.cancel()
        await asyncio.gather(*(ch.close(None) for ch in channels))


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, all its threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Server:
    """One kind's server in a process of its own; ``tree``: run that kind from another checkout
    of the repository (``git archive <commit>`` unpacked there), e.g. the code before a change."""

    def __init__(self, kind: str, tree: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="s2s-bench-wl-")
        self.path = os.path.join(self.dir, "agent.sock")
        env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.workload_api", "serve", kind, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
            env=env,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {kind} server did not start")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        os.rmdir(self.dir)


def run(quick: bool) -> list[Figure]:
    per_client = {1: 60, 10: 10, 100: 2} if quick else {1: 1000, 10: 150, 100: 20}
    rounds = 5 if quick else 40
    servers = {kind: _Server(kind) for kind in ("s2s", "plain")}
    figures: list[Figure] = []
    try:
        calls = {
            "FetchX509SVID first response": _call_x509,
            "FetchJWTSVID": _jwt_caller(_jwt_request()),
        }
        for label, call in calls.items():
            for clients in CONCURRENCY:
                got: dict[str, list[float]] = {}
                cpu: dict[str, float] = {}
                calls_made = 0
                for kind, srv in servers.items():
                    start = server_cpu_seconds(srv.proc.pid)
                    got[kind] = asyncio.run(_measure(srv.path, call, clients, per_client[clients]))
                    # The warm-up calls (one per client) count too.
                    calls_made = len(got[kind]) + clients
                    cpu[kind] = (server_cpu_seconds(srv.proc.pid) - start) / calls_made
                tick = 1e6 / os.sysconf("SC_CLK_TCK") / calls_made
                figures += _latency_figures(
                    got, f"{label} {{p}}, {clients} client(s)", "plain grpc.aio, same call {p}"
                )
                figures.append(
                    Figure(
                        name=f"{label} server CPU per call, {clients} client(s)",
                        value=cpu["s2s"] * 1e6,
                        unit="us",
                        baseline_name="plain grpc.aio, same call",
                        baseline_value=cpu["plain"] * 1e6,
                        higher_is_better=False,
                        note=f"user+system, all threads; +-{tick:.0f} us (clock ticks)",
                    )
                )
        for streams in (1, 100):
            got = {
                kind: asyncio.run(_rotation(srv, streams, rounds)) for kind, srv in servers.items()
            }
            figures += _latency_figures(
                got,
                f"rotation -> open stream {{p}}, {streams} stream(s)",
                "plain grpc.aio push of a fixed message {p}",
            )
    finally:
        for srv in servers.values():
            srv.close()
    return figures


# -- the server subprocess --------------------------------------------------------------------


async def _serve(kind: str, path: str) -> None:
    """Serve until stdin closes; each ``rotate`` line replaces the SVID (alternating two)."""
    authority = TestAuthority("example.org")
    provider = StaticIdentityProvider(
        bundles=BundleSet.of(authority.bundle()), jwt_signer=authority.issue_jwt_svid
    )
    selectors = [f"unix:uid:{os.getuid()}"]
    svids = [authority.issue_x509_svid("spiffe://example.org/bench") for _ in range(2)]
    provider.put("bench", selectors, svids[0])
    stop: Any
    if kind in ("s2s", "s2s-noattest"):
        attestor = UnixAttestor() if kind == "s2s" else _NoAttestation(selectors[0])
        server = WorkloadApiServer(provider=provider, attestor=attestor, socket_path=path)
        await server.start()
        stop = server.stop
    elif kind == "grpclib":
        from bench.workload_grpclib import serve_grpclib  # noqa: PLC0415 (optional package)

        stop = await serve_grpclib(provider, path)
    elif kind == "s2s-grpclib":
        from bench.workload_grpclib import serve_s2s_grpclib  # noqa: PLC0415 (optional package)

        stop = await serve_s2s_grpclib(provider, path)
    elif kind == "plain-proxy":
        stop = await _proxied_plain_server(provider, path)
    else:
        plain = await _plain_server(provider, path)
        stop = plain.stop
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    rotations = 0
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "rotate":
        rotations += 1
        provider.put("bench", selectors, svids[rotations % 2])
    await stop(None)


class _NoAttestation:
    """An attestor that looks at nothing (diagnostic kind ``s2s-noattest``: what the front proxy
    and the gRPC frame cost without attestation). Never a product configuration."""

    def __init__(self, selector: str) -> None:
        self._selectors = frozenset({Selector.parse(selector)})

    def admit(self, peer: Any) -> Any:
        return peer

    def attest(self, _peer: Any) -> frozenset[Selector]:
        return self._selectors

    def recheck(self, _peer: Any) -> None:
        return None


async def prebuilt(provider: Any) -> tuple[bytes, bytes]:
    """The FetchX509SVID and FetchJWTSVID answers the bare servers send (built once)."""
    svids = provider.svids_for(frozenset({Selector.parse(f"unix:uid:{os.getuid()}")}))
    x509 = msg.x509_svid_response(svids, provider.bundles(), ())
    sid = SpiffeId.parse("spiffe://example.org/bench")
    token = await provider.fetch_jwt_svid(sid, ("bench",))
    return x509, msg.jwt_svid_response([(sid, "")], [token]).SerializeToString()


async def _plain_server(provider: Any, path: str) -> grpc.aio.Server:
    """The same responses, pre-built, from a bare grpc.aio server (no proxy, no attestation)."""
    x509, jwt_resp = await prebuilt(provider)

    async def fetch_x509(_req: bytes, _ctx: Any) -> Any:
        version = provider.version
        while True:  # the same pre-built message again on every change
            yield x509
            version = await provider.wait_for_update(version)

    async def fetch_jwt(_req: bytes, _ctx: Any) -> bytes:
        return jwt_resp

    handler = grpc.method_handlers_generic_handler(
        "SpiffeWorkloadAPI",
        {
            "FetchX509SVID": grpc.unary_stream_rpc_method_handler(fetch_x509, bytes, bytes),
            "FetchJWTSVID": grpc.unary_unary_rpc_method_handler(fetch_jwt, bytes, bytes),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


async def _proxied_plain_server(provider: Any, path: str) -> Any:
    """Diagnostic kind ``plain-proxy``: the bare server behind the agent's SO_PEERCRED front
    proxy (no attestation): what the proxy's extra hop costs on its own."""
    from s2s.agent.attestors.peercred import PeerCredentials  # noqa: PLC0415
    from s2s.agent.uds_proxy import PeerTaggingProxy  # noqa: PLC0415

    inner = f"{path}.inner"
    plain = await _plain_server(provider, inner)

    async def admit(pid: int, uid: int, gid: int) -> PeerCredentials:
        return PeerCredentials(pid, uid, gid, 0)

    proxy = PeerTaggingProxy(path, inner, admit=admit)
    await proxy.start()

    async def stop(grace: float | None) -> None:
        await proxy.close()
        await plain.stop(grace)
        if os.path.exists(inner):
            os.unlink(inner)

    return stop


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve(sys.argv[2], sys.argv[3]))
    else:
        for f in run("--quick" in sys.argv):
            print(f)


def _latency_figures(got: dict[str, list[float]], name: str, baseline: str) -> list[Figure]:
    """p50 and p99 of ``got["s2s"]`` beside ``got["plain"]``, in ms (``{p}`` names the point)."""
    ours, base = percentiles(got["s2s"], 50, 99), percentiles(got["plain"], 50, 99)
    return [
        Figure(
            name=name.format(p=p),
            value=ours[i] * 1e3,
            unit="ms",
            baseline_name=baseline.format(p=p),
            baseline_value=base[i] * 1e3,
            higher_is_better=False,
            note=f"n={len(got['s2s'])}",
        )
        for i, p in enumerate(("p50", "p99"))
    ]
