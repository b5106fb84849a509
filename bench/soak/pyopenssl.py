"""Soak of the pyOpenSSL transport (``python -m bench.soak.pyopenssl [--duration S]``).

    python -m bench.soak.pyopenssl --duration 1500 --report soak-pyopenssl.json
    python -m bench.soak.pyopenssl --tls stdlib --duration 600   # the same run on the stdlib path

Two processes on the transport under test, both following PEM files that this process rewrites
as a CA would (:class:`~s2s.verifier.source_pem.PemFileX509Source`, polled every 0.5 s):

* a server: a raw TLS echo server (``pyopenssl_tls.start_server``'s protocol) and an aiohttp site
  (``PyOpenSSLSite``), both requiring the client's SPIFFE ID;
* a client: new handshakes in a paced loop against both (one connection per request), and
  long-lived connections that exchange a line every second and are never reopened.

Timeline: each side gets a new leaf every ``--svid-every`` seconds (lifetime ``--svid-ttl``), a
new intermediate signs the leaves every ``--intermediate-every`` seconds, and every
``--root-every`` seconds the root rotates as ``s2s-ca rotate-root`` does: prepare (both roots in
every bundle), activate (leaves under the new root), retire after the leaf lifetime (the old
root leaves the bundles). Every 10 s this process samples the RSS and open fds of both.

Passes (exit 0) when no handshake failed on either side, no long-lived connection broke, every
rotation reached both sides, and RSS and fds did not grow after the warm-up beyond the bounds
below. Exit 1 otherwise, 2 for bad arguments. The report (JSON) has the timeline of samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

TD: Final = "soak.test"
SERVER_ID: Final = f"spiffe://{TD}/soak/server"
CLIENT_ID: Final = f"spiffe://{TD}/soak/client"
POLL: Final = 0.5  # PEM file poll interval of both sides
REPORT_EVERY: Final = 10.0
WARMUP: Final = 120.0  # seconds before the RSS and fd baselines are taken
RSS_BOUND_MB: Final = 8.0  # growth after the warm-up that fails the run
FD_BOUND: Final = 8
LINE: Final = b"ping\n"


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# -- the CA side: PEM files rewritten like an agent's helper would ---------------------------------


class Files:
    """The PEM files of both sides in ``root``; each written whole and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, data: bytes) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)

    def identity(self, side: str, svid: Any) -> None:
        key = svid.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
        self.write(f"{side}.key.pem", key)
        self.write(f"{side}.chain.pem", chain)

    def bundle(self, roots: Sequence[x509.Certificate]) -> None:
        self.write(
            "bundle.pem", b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)
        )


@dataclass
class Authority:
    """The trust domain's roots and the intermediate in use; issues both sides' leaves."""

    files: Files
    svid_ttl: float
    roots: list[Any] = field(default_factory=list)  # TestAuthority per root, oldest first
    signing: Any = None  # the TestAuthority whose intermediate signs
    intermediate: tuple[Any, Any] | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def start(self) -> None:
        from s2s.testing import TestAuthority  # noqa: PLC0415

        first = TestAuthority(TD)
        self.roots = [first]
        self.signing = first
        self.intermediate = (first.intermediate, first.intermediate_key)
        self.files.bundle([first.root])
        self.leaves()

    def leaves(self) -> None:
        import datetime as dt  # noqa: PLC0415

        ttl = dt.timedelta(seconds=self.svid_ttl)
        for side, sid in (("server", SERVER_ID), ("client", CLIENT_ID)):
            svid = self.signing.issue_x509_svid(sid, ttl=ttl, intermediate=self.intermediate)
            self.files.identity(side, svid)
        self.counts["leaves"] += 1

    def new_intermediate(self) -> None:
        self.intermediate = self.signing.new_intermediate()
        self.counts["intermediates"] += 1
        self.leaves()

    def prepare_root(self) -> None:
        from s2s.testing import TestAuthority  # noqa: PLC0415

        self.roots.append(TestAuthority(TD))
        self.files.bundle([a.root for a in self.roots])
        self.counts["roots_prepared"] += 1

    def activate_root(self) -> None:
        self.signing = self.roots[-1]
        self.intermediate = (self.signing.intermediate, self.signing.intermediate_key)
        self.counts["roots_activated"] += 1
        self.leaves()

    def retire_root(self) -> None:
        self.roots = [a for a in self.roots if a is self.signing]
        self.files.bundle([a.root for a in self.roots])
        self.counts["roots_retired"] += 1


async def rotate(auth: Authority, args: argparse.Namespace, until: float) -> None:
    """The rotation timeline until ``until`` (monotonic)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_leaf = start + args.svid_every
    next_intermediate = start + args.intermediate_every
    next_root = start + args.root_every
    activate_at = retire_at = float("inf")
    while True:
        now = loop.time()
        due = min(next_leaf, next_intermediate, next_root, activate_at, retire_at)
        if due >= until:
            return
        await asyncio.sleep(max(due - now, 0.0))
        now = loop.time()
        if now >= retire_at:
            auth.retire_root()
            say("root retired")
            retire_at = float("inf")
        if now >= activate_at:
            auth.activate_root()
            say("root activated")
            activate_at = float("inf")
            retire_at = now + args.svid_ttl + 4 * POLL + 2.0
            next_leaf = now + args.svid_every
        if now >= next_root and retire_at == float("inf") and activate_at == float("inf"):
            auth.prepare_root()
            say("root prepared")
            activate_at = now + 4 * POLL + 2.0  # both sides reloaded the bundle
            next_root = now + args.root_every
        if now >= next_intermediate:
            auth.new_intermediate()
            next_intermediate = now + args.intermediate_every
            next_leaf = now + args.svid_every
        if now >= next_leaf:
            auth.leaves()
            next_leaf = now + args.svid_every


# -- the two processes under test ------------------------------------------------------------------


class Echo(asyncio.Protocol):
    """Writes back what it reads (the raw server's application); ``counts`` (stdlib path)
    counts passed handshakes, as the application is connected only after one."""

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts = counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        if self.counts is not None:
            self.counts["handshakes_ok"] += 1

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _source(root: Path, side: str) -> Any:
    from s2s.verifier.source_pem import PemFileX509Source  # noqa: PLC0415

    return PemFileX509Source(
        root / f"{side}.chain.pem",
        root / f"{side}.key.pem",
        root / "bundle.pem",
        poll_interval=POLL,
    )


def _serials(source: Any, counts: Counter[str]) -> None:
    """Count every snapshot the source installs (each rotation reaching this side)."""
    source.subscribe(lambda _ctx: counts.update(("reloads",)))


def _emit(role: str, counts: Counter[str], extra: dict[str, Any], trim: bool = False) -> None:
    """One report line; with ``trim``, after a GC and ``malloc_trim(0)``, this process's RSS
    then (``rss_trimmed_mib``): what the heap still holds once freed memory is given back."""
    if trim:
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)
        extra["rss_trimmed_mib"] = round(sample(os.getpid())[0], 2)
    print(json.dumps({"role": role, "counts": dict(counts), **extra}), flush=True)


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web  # noqa: PLC0415
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from s2s.verifier.authorize import authorize_id  # noqa: PLC0415
    from s2s.verifier.metrics import PeerMetrics  # noqa: PLC0415
    from s2s.verifier.revocation_choice import no_revocation_check  # noqa: PLC0415

    root = Path(args.dir)
    source = _source(root, "server")
    await source.start()
    counts: Counter[str] = Counter()
    _serials(source, counts)
    metrics = PeerMetrics(CollectorRegistry())
    kw: dict[str, Any] = {
        "authorize": authorize_id(CLIENT_ID),
        "revocations": no_revocation_check(),
        "metrics": metrics,
    }

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(body=LINE)

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    loop = asyncio.get_running_loop()
    if args.tls == "pyopenssl":
        from s2s.verifier import pyopenssl_tls  # noqa: PLC0415
        from s2s.verifier.pyopenssl_aiohttp import PyOpenSSLSite  # noqa: PLC0415

        raw_ctx = pyopenssl_tls.server_context(source, **kw)
        factory = pyopenssl_tls.server_protocol_factory(raw_ctx, Echo)

        def counted() -> Any:
            tls = factory()
            tls.done.add_done_callback(lambda f: _count_server(f, counts))
            return tls

        server = await loop.create_server(counted, "127.0.0.1", args.raw_port)
        site: Any = PyOpenSSLSite(
            runner, "127.0.0.1", args.http_port, context=pyopenssl_tls.server_context(source, **kw)
        )
    else:
        from s2s.verifier import tls  # noqa: PLC0415
        from s2s.verifier.aiohttp import SpiffeTCPSite  # noqa: PLC0415

        def echo() -> Any:
            return Echo(counts)  # connection_made after the handshake: counted there

        server = await loop.create_server(
            echo, "127.0.0.1", args.raw_port, ssl=tls.server_context(source, **kw)
        )
        site = SpiffeTCPSite(
            runner, "127.0.0.1", args.http_port, ssl_context=tls.server_context(source, **kw)
        )
    await site.start()
    print(json.dumps({"role": "server", "ready": True}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_EVERY)
        rejections = {k: v for k, v in metrics.rejection_counts().items() if v}
        _emit("server", counts, {"rejections": rejections}, args.malloc_trim)
    server.close()
    await runner.cleanup()
    await source.close()


def _count_server(done: asyncio.Future[Any], counts: Counter[str]) -> None:
    if done.cancelled():
        counts["handshakes_cancelled"] += 1
    elif (exc := done.exception()) is not None:
        counts["handshakes_failed"] += 1
        counts[f"failed: {type(exc).__name__}: {str(exc)[:100]}"] += 1
    else:
        counts["handshakes_ok"] += 1


@dataclass
class Client:
    args: argparse.Namespace
    counts: Counter[str] = field(default_factory=Counter)
    raw_ctx: Any = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.args.tls == "pyopenssl":
            from s2s.verifier import pyopenssl_tls  # noqa: PLC0415

            return await pyopenssl_tls.open_connection(
                "127.0.0.1", self.args.raw_port, context=self.raw_ctx, handshake_timeout=20
            )
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", self.args.raw_port, ssl=self.raw_ctx, server_hostname=""
            ),
            20,
        )

    def _failed(self, what: str, exc: BaseException) -> None:
        self.counts[f"{what}_failed"] += 1
        self.counts[f"{what} failed: {type(exc).__name__}: {str(exc)[:100]}"] += 1

    async def paced(self, rate: float, once: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        while not self.stop.is_set():
            await once()
            t += 1.0 / rate
            await asyncio.sleep(max(t - loop.time(), 0.0))

    async def raw_once(self) -> None:
        try:
            reader, writer = await self._open()
        except (OSError, TimeoutError, ValueError) as exc:
            self._failed("raw_handshakes", exc)
            return
        try:
            writer.write(LINE)
            got = await asyncio.wait_for(reader.readexactly(len(LINE)), 20)
            if got != LINE:
                raise ValueError(f"echo answered {got!r}")
            self.counts["raw_handshakes_ok"] += 1
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            self._failed("raw_exchanges", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def http_loop(self, session: Any, rate: float) -> None:
        import aiohttp  # noqa: PLC0415

        url = f"https://127.0.0.1:{self.args.http_port}/"

        async def once() -> None:
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200 or body != LINE:
                        raise ValueError(f"{response.status} {body[:40]!r}")
                self.counts["http_handshakes_ok"] += 1
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._failed("http_handshakes", exc)

        await self.paced(rate, once)

    async def long_lived(self) -> None:
        """One connection for the whole run: a line every second, never reopened."""
        try:
            reader, writer = await self._open()
        except (OSError, TimeoutError, ValueError) as exc:
            self._failed("long_lived_opens", exc)
            return
        self.counts["long_lived_open"] += 1
        try:
            while not self.stop.is_set():
                writer.write(LINE)
                got = await asyncio.wait_for(reader.readexactly(len(LINE)), 20)
                if got != LINE:
                    raise ValueError(f"echo answered {got!r}")
                self.counts["long_lived_lines_ok"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            self._failed("long_lived", exc)
        finally:
            self.counts["long_lived_open"] -= 1
            writer.close()


async def call(args: argparse.Namespace) -> None:
    import aiohttp  # noqa: PLC0415
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from s2s.verifier.authorize import authorize_id  # noqa: PLC0415
    from s2s.verifier.metrics import PeerMetrics  # noqa: PLC0415
    from s2s.verifier.revocation_choice import no_revocation_check  # noqa: PLC0415

    source = _source(Path(args.dir), "client")
    await source.start()
    client = Client(args)
    _serials(source, client.counts)
    metrics = PeerMetrics(CollectorRegistry())
    kw: dict[str, Any] = {
        "authorize": authorize_id(SERVER_ID),
        "revocations": no_revocation_check(),
        "metrics": metrics,
    }
    if args.tls == "pyopenssl":
        from s2s.verifier import pyopenssl_tls  # noqa: PLC0415
        from s2s.verifier.pyopenssl_aiohttp import pyopenssl_connector  # noqa: PLC0415

        client.raw_ctx = pyopenssl_tls.client_context(source, **kw)
        connector: Any = pyopenssl_connector(source, force_close=True, **kw)
    else:
        from s2s.verifier import tls  # noqa: PLC0415
        from s2s.verifier.aiohttp import spiffe_connector  # noqa: PLC0415

        client.raw_ctx = tls.client_context(source, **kw)
        connector = spiffe_connector(source, force_close=True, **kw)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, client.stop.set)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        per_raw = args.raw_rate / args.raw_workers
        tasks = [
            *(client.paced(per_raw, client.raw_once) for _ in range(args.raw_workers)),
            *(client.http_loop(session, args.http_rate / 2) for _ in range(2)),
            *(client.long_lived() for _ in range(args.long_lived)),
        ]
        running = asyncio.gather(*tasks)
        while not client.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.stop.wait(), REPORT_EVERY)
            rejections = {k: v for k, v in metrics.rejection_counts().items() if v}
            _emit("client", client.counts, {"rejections": rejections}, args.malloc_trim)
        await running
    await source.close()


# -- the parent: start, rotate, sample, judge ------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of process ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Child:
    role: str
    proc: asyncio.subprocess.Process
    last: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("ready"):
                    self.ready.set()
                elif "counts" in record:
                    self.last = record


async def spawn(role: str, args: argparse.Namespace, log: Path, cpu: int | None) -> Child:
    argv = [sys.executable, "-m", "bench.soak.pyopenssl", "--role", role, "--dir", args.dir]
    argv += ["--tls", args.tls, "--raw-port", str(args.raw_port)]
    argv += ["--http-port", str(args.http_port), "--raw-rate", str(args.raw_rate)]
    argv += ["--raw-workers", str(args.raw_workers), "--http-rate", str(args.http_rate)]
    argv += ["--long-lived", str(args.long_lived)]
    if args.malloc_trim:
        argv.append("--malloc-trim")
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    return Child(role, proc)


def _growth(points: list[tuple[float, float]], warmup: float) -> dict[str, float]:
    """RSS or fd figures after the warm-up: first, last, max, and the least-squares slope/hour."""
    after = [(t, v) for t, v in points if t >= warmup] or points[-1:]
    ts, vs = [t for t, _ in after], [v for _, v in after]
    slope = 0.0
    if len(after) >= 3 and max(ts) > min(ts):
        slope = statistics.linear_regression(ts, vs).slope * 3600
    return {
        "first": round(vs[0], 2),
        "last": round(vs[-1], 2),
        "max": round(max(vs), 2),
        "growth": round(vs[-1] - vs[0], 2),
        "slope_per_hour": round(slope, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    auth = Authority(Files(root), args.svid_ttl)
    auth.start()
    log = root / "children.log"
    say(f"files and logs in {root}; {args.tls} path, {args.duration:.0f} s")
    server = await spawn("server", args, log, args.server_cpu)
    readers = [asyncio.create_task(server.read())]
    children = [server]
    timeline: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        await asyncio.wait_for(server.ready.wait(), 60)
        client = await spawn("client", args, log, args.client_cpu)
        children.append(client)
        readers.append(asyncio.create_task(client.read()))
        started = time.monotonic()
        until = asyncio.get_running_loop().time() + args.duration
        rotating = asyncio.create_task(rotate(auth, args, until))
        while not rotating.done():
            await asyncio.wait({rotating}, timeout=REPORT_EVERY)
            t = time.monotonic() - started
            point: dict[str, Any] = {"t": round(t, 1)}
            for child in children:
                if child.proc.returncode is not None:
                    raise RuntimeError(f"the {child.role} exited ({child.proc.returncode})")
                rss, fds = sample(child.proc.pid)
                point[child.role] = {"rss_mib": round(rss, 2), "fds": fds}
            point["handshakes"] = _handshakes(client.last)
            for child in children:
                if "rss_trimmed_mib" in child.last:
                    point[child.role]["rss_trimmed_mib"] = child.last["rss_trimmed_mib"]
            timeline.append(point)
            if len(timeline) % 6 == 0:
                say(json.dumps(point))
        rotating.result()
    finally:
        # The client first: a server that stopped first would refuse its last connections.
        for child in reversed(children):
            if child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), 30)
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
        await asyncio.gather(*readers, return_exceptions=True)
    return judge(args, auth, server.last, client.last, timeline)


def _handshakes(client: dict[str, Any]) -> int:
    c = client.get("counts", {})
    return int(c.get("raw_handshakes_ok", 0) + c.get("http_handshakes_ok", 0))


def judge(
    args: argparse.Namespace,
    auth: Authority,
    server: dict[str, Any],
    client: dict[str, Any],
    timeline: list[dict[str, Any]],
) -> dict[str, Any]:
    sc, cc = server.get("counts", {}), client.get("counts", {})
    failures: list[str] = []
    failed = {k: v for k, v in {**sc, **cc}.items() if "failed" in k and v}
    if failed:
        failures.append(f"failures: {failed}")
    if server.get("rejections") or client.get("rejections"):
        failures.append(f"rejections: {server.get('rejections')} {client.get('rejections')}")
    if cc.get("long_lived_open", 0) != args.long_lived:
        failures.append(f"long-lived connections open at the end: {cc.get('long_lived_open')}")
    memory: dict[str, Any] = {}
    for role in ("server", "client"):
        rss = [(p["t"], p[role]["rss_mib"]) for p in timeline if role in p]
        fds = [(p["t"], float(p[role]["fds"])) for p in timeline if role in p]
        if not rss:
            failures.append(f"no samples of the {role}")
            continue
        memory[role] = {"rss_mib": _growth(rss, WARMUP), "fds": _growth(fds, WARMUP)}
        trimmed = [
            (p["t"], p[role]["rss_trimmed_mib"])
            for p in timeline
            if "rss_trimmed_mib" in p.get(role, {})
        ]
        if trimmed:
            memory[role]["rss_trimmed_mib"] = _growth(trimmed, WARMUP)
        if memory[role]["rss_mib"]["growth"] > RSS_BOUND_MB:
            failures.append(f"{role} RSS grew {memory[role]['rss_mib']['growth']} MiB")
        if memory[role]["fds"]["max"] - memory[role]["fds"]["first"] > FD_BOUND:
            failures.append(f"{role} fds grew to {memory[role]['fds']['max']}")
    rotations = dict(auth.counts)
    for role, counts in (("server", sc), ("client", cc)):
        # every rewrite of a side's files (leaves, bundles) is one new snapshot there
        if counts.get("reloads", 0) < rotations.get("leaves", 0):
            failures.append(f"the {role} saw {counts.get('reloads', 0)} of the rotations")
    handshakes = {
        "client_raw_ok": cc.get("raw_handshakes_ok", 0),
        "client_http_ok": cc.get("http_handshakes_ok", 0),
        "server_ok": sc.get("handshakes_ok", 0),
        "failed": sum(v for k, v in failed.items() if k.endswith("_failed")),
        "long_lived_lines_ok": cc.get("long_lived_lines_ok", 0),
    }
    return {
        "tls": args.tls,
        "duration_s": args.duration,
        "passed": not failures,
        "failures": failures,
        "handshakes": handshakes,
        "rotations": rotations,
        "reloads": {"server": sc.get("reloads", 0), "client": cc.get("reloads", 0)},
        "memory": memory,
        "server": server,
        "client": client,
        "timeline": timeline,
    }


def summary(report: dict[str, Any]) -> str:
    h, r, m = report["handshakes"], report["rotations"], report["memory"]
    lines = [
        f"{report['tls']} path, {report['duration_s']:.0f} s: "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        f"handshakes: client raw {h['client_raw_ok']}, client aiohttp {h['client_http_ok']}, "
        f"server {h['server_ok']}, failed {h['failed']}; "
        f"long-lived lines {h['long_lived_lines_ok']}",
        f"rotations: {r}; snapshots seen: {report['reloads']}",
    ]
    for role, figures in m.items():
        rss, fds = figures["rss_mib"], figures["fds"]
        lines.append(
            f"{role}: RSS {rss['first']} -> {rss['last']} MiB after warm-up (max {rss['max']}, "
            f"{rss['slope_per_hour']:+} MiB/h); fds {fds['first']:.0f} -> {fds['last']:.0f} "
            f"(max {fds['max']:.0f})"
        )
        if (trim := figures.get("rss_trimmed_mib")) is not None:
            lines.append(
                f"{role}: RSS after malloc_trim {trim['first']} -> {trim['last']} MiB "
                f"({trim['slope_per_hour']:+} MiB/h)"
            )
    lines += [f"failure: {f}" for f in report["failures"]]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak.pyopenssl", description=__doc__)
    p.add_argument("--duration", type=float, default=1500.0)
    p.add_argument("--tls", choices=("pyopenssl", "stdlib"), default="pyopenssl")
    p.add_argument("--svid-ttl", type=float, default=60.0)
    p.add_argument("--svid-every", type=float, default=10.0)
    p.add_argument("--intermediate-every", type=float, default=120.0)
    p.add_argument("--root-every", type=float, default=300.0)
    p.add_argument("--raw-rate", type=float, default=60.0, help="new raw handshakes per second")
    p.add_argument("--raw-workers", type=int, default=4)
    p.add_argument("--http-rate", type=float, default=20.0, help="new aiohttp requests per second")
    p.add_argument("--long-lived", type=int, default=16)
    p.add_argument(
        "--malloc-trim",
        action="store_true",
        help="both processes give freed heap back (malloc_trim) before each report and report "
        "their RSS then: tells memory still held from a heap that only grew",
    )
    p.add_argument("--server-cpu", type=int, default=None, help="pin the server to this CPU")
    p.add_argument("--client-cpu", type=int, default=None, help="pin the client to this CPU")
    p.add_argument("--dir", default=None)
    p.add_argument("--report", default=None, help="write the JSON report here")
    p.add_argument("--role", choices=("server", "client"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--raw-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "server":
        asyncio.run(serve(args))
        return 0
    if args.role == "client":
        asyncio.run(call(args))
        return 0
    if args.duration <= 0 or args.svid_every <= 0 or args.svid_ttl <= args.svid_every:
        print("--duration and --svid-every must be positive, --svid-ttl above --svid-every")
        return 2
    made = args.dir is None
    if made:
        args.dir = tempfile.mkdtemp(prefix="s2s-soak-tls-")
    args.raw_port, args.http_port = free_port(), free_port()
    report = asyncio.run(run(args))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))
    if not report["passed"]:
        print(f"logs: {Path(args.dir) / 'children.log'}")
    elif made:
        shutil.rmtree(args.dir, ignore_errors=True)  # kept when the run failed
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
