"""CA issuance over the network beside cfssl: the s2s CA's HTTPS batch API and ``cfssl serve``
signing the same CSRs, each server alone on one core.

Both servers are pinned to CPU 0 (cfssl also with ``GOMAXPROCS=1``), the load generator to CPU 1;
they run in alternating rounds (the medians are reported) so a noisy stretch of the shared machine
hits both alike. Figures:

* X509-SVIDs/s through ``POST /v1/agent/x509`` of a real ``s2s-ca serve`` (mTLS keep-alive, 100
  CSRs per request, 2 requests in flight, audit log on), beside ``cfssl serve``'s
  ``/api/v1/cfssl/sign`` (plain HTTP keep-alive, one CSR per request as its API takes them,
  8 in flight) with the same 100 P-256 CSRs;
* the same per server CPU-second (utime + stime of the server process from /proc), which stays
  right when the Python load generator, not the server, limits the wall-clock rate.

cfssl comes from Debian (``apt-get install golang-cfssl``); without it this module prints one line
saying so and reports nothing. Nothing else (tests included) needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench._harness import Figure
from bench.ca_http import BATCH, _Agent, _csr, _post, _start_ca

SERVER_CPU, CLIENT_CPU = 0, 1
CFSSL_IN_FLIGHT = 8
_TICK = os.sysconf("SC_CLK_TCK")
_CFSSL_CONFIG = (
    '{"signing": {"default": {"expiry": "5m",'
    ' "usages": ["digital signature", "server auth", "client auth"]}}}'
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_cfssl_ca(directory: Path) -> None:
    """A P-256 CA certificate and key for cfssl (PEM files, as ``cfssl serve -ca`` takes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl bench CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (directory / "config.json").write_text(_CFSSL_CONFIG)


def _start_cfssl(cfssl: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    _write_cfssl_ca(directory)
    port = _free_port()
    log = (directory / "cfssl.log").open("wb")
    process = subprocess.Popen(
        [cfssl, "serve", "-address", "127.0.0.1", "-port", str(port), "-ca", "ca.pem",
         "-ca-key", "ca-key.pem", "-config", "config.json"],
        cwd=directory, stdout=log, stderr=log, env={**os.environ, "GOMAXPROCS": "1"},
        preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}),  # noqa: PLW1509
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(
        f"cfssl serve did not start: {(directory / 'cfssl.log').read_text()[-2000:]}"
    )


async def _rate(
    sessions: list[aiohttp.ClientSession], calls: int, one: Any, pid: int
) -> tuple[float, float]:
    """(items per wall-clock second, items per server CPU-second) of ``calls`` calls of ``one``."""
    per_worker = max(1, calls // len(sessions))

    async def worker(session: aiohttp.ClientSession) -> int:
        return sum([await one(session) for _ in range(per_worker)])

    cpu, start = _cpu_seconds(pid), time.perf_counter()
    done = sum(await asyncio.gather(*(worker(s) for s in sessions)))
    wall, used = time.perf_counter() - start, _cpu_seconds(pid) - cpu
    return done / wall, done / max(used, 1 / _TICK)


async def _measure(
    agent: _Agent,
    servers: tuple[int, int, int],
    sizes: tuple[int, ...],
    quick: bool,
) -> dict[str, list[tuple[float, float]]]:
    """Rates of the s2s batch API for each batch size in ``sizes`` and of cfssl, by round."""
    ca_pid, cfssl_port, cfssl_pid = servers
    ctx, entry_id = await agent.attest()
    csrs = [_csr(ec.generate_private_key(ec.SECP256R1())) for _ in range(max(sizes))]
    x509_url = agent.url + "/v1/agent/x509"
    sign_url = f"http://127.0.0.1:{cfssl_port}/api/v1/cfssl/sign"
    next_csr = iter(range(1 << 62))

    def one_batch(size: int) -> Any:
        body = {"requests": [{"entry_id": entry_id, "csr": c} for c in csrs[:size]]}

        async def one(session: aiohttp.ClientSession) -> int:
            results = (await _post(session, x509_url, body))["results"]
            if not all("svid_chain" in r for r in results):
                raise RuntimeError(f"batch item refused: {results[0]}")
            return len(results)

        return one

    async def one_cfssl(session: aiohttp.ClientSession) -> int:
        body = {"certificate_request": csrs[next(next_csr) % len(csrs)]}
        reply = await _post(session, sign_url, body)
        if not reply.get("success") or "BEGIN CERTIFICATE" not in reply["result"]["certificate"]:
            raise RuntimeError(f"cfssl refused a CSR: {reply}")
        return 1

    ours = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) for _ in range(2)]
    theirs = [aiohttp.ClientSession() for _ in range(CFSSL_IN_FLIGHT)]
    out: dict[str, list[tuple[float, float]]] = {"cfssl": []}
    try:
        for session in ours:
            await one_batch(max(sizes))(session)  # warm up: handshakes, caches, leaf layouts
        for session in theirs:
            await one_cfssl(session)
        rounds, items = (2, 400) if quick else (5, 1600)
        for _ in range(rounds):
            for size in sizes:
                calls = max(len(ours), items // size)
                rate = await _rate(ours, calls, one_batch(size), ca_pid)
                out.setdefault(f"s2s/{size}", []).append(rate)
            out["cfssl"].append(await _rate(theirs, items, one_cfssl, cfssl_pid))
    finally:
        for session in (*ours, *theirs):
            await session.close()
    return out


def sweep(sizes: tuple[int, ...], quick: bool) -> dict[str, tuple[float, float]] | None:
    """Median (wall-clock, per server CPU-second) rates: ``s2s/<size>`` for each batch size and
    ``cfssl``; None without cfssl."""
    cfssl = shutil.which("cfssl")
    if cfssl is None:
        return None
    before = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfssl_process, cfssl_port = _start_cfssl(cfssl, Path(tmp))
        try:
            ca_process, ca_port = _start_ca(Path(tmp), cpu=SERVER_CPU)
            try:
                if CLIENT_CPU in before:
                    os.sched_setaffinity(0, {CLIENT_CPU})
                agent = _Agent(Path(tmp) / "ca", ca_port)
                servers = (ca_process.pid, cfssl_port, cfssl_process.pid)
                measured = asyncio.run(_measure(agent, servers, sizes, quick))
            finally:
                os.sched_setaffinity(0, before)
                ca_process.send_signal(signal.SIGTERM)
                ca_process.wait(timeout=30)
        finally:
            cfssl_process.send_signal(signal.SIGTERM)
            cfssl_process.wait(timeout=30)
    return {
        name: (statistics.median(w for w, _ in rates), statistics.median(c for _, c in rates))
        for name, rates in measured.items()
    }


def run(quick: bool) -> list[Figure]:
    rates = sweep((BATCH,), quick)
    if rates is None:
        print(
            "  (skipped: cfssl is not installed; apt-get install golang-cfssl adds this baseline)"
        )
        return []
    (s2s_wall, s2s_cpu), (cf_wall, cf_cpu) = rates[f"s2s/{BATCH}"], rates["cfssl"]
    cf_name = "cfssl serve sign, 1 core (HTTP, 1 CSR/req)"
    note = "both servers on CPU 0, load on CPU 1; s2s: mTLS, 100 CSRs/req, audit log on"
    return [
        Figure("X509-SVIDs/s via HTTPS batch API, CA on 1 core", s2s_wall, "SVIDs/s", cf_name,
               cf_wall, note=note),
        Figure("X509-SVIDs per server CPU-second, HTTPS batch API", s2s_cpu, "SVIDs/cpu-s",
               cf_name + " per CPU-s", cf_cpu, note=note),
    ]  # fmt: skip
