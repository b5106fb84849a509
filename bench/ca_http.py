"""CA issuance over HTTPS: a real ``s2s-ca serve`` process, an agent client with mTLS.

The CA runs as its own process (as deployed: SQLite store, audit log lines on), so the client does
not share its interpreter. Figures, each beside a baseline measured in this run:

* X509-SVIDs/s through ``POST /v1/agent/x509`` (batches of 100 CSRs, 2 requests in flight, one
  keep-alive mTLS connection each), beside raw ``cryptography`` ECDSA P-256 signatures/s;
* JWT-SVIDs/s through ``POST /v1/agent/jwt`` (8 in flight), beside the same raw rate;
* p50/p99 latency of one batch of 100 CSRs over HTTPS, beside 100 raw signatures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench._harness import Figure, median_rate, percentiles, time_per_op
from s2s.ca.client import AdminClient
from s2s.verifier.memcert import load_cert_chain_from_memory

BATCH = 100
CLI = [sys.executable, "-m", "s2s.cli.ca"]
PEM = serialization.Encoding.PEM


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(PEM).decode()


def _start_ca(
    tmp: Path, *, extra: Sequence[str] = (), cpu: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``s2s-ca serve`` on a fresh trust domain (with ``extra`` serve flags), pinned to ``cpu``."""
    data_dir = tmp / "ca"
    subprocess.run([*CLI, "--data-dir", str(data_dir), "init", "--trust-domain", "example.org"],
                   check=True, capture_output=True)  # fmt: skip
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", *extra],
            stdout=out, stderr=out,
            # set before exec, so every thread the CA starts inherits the pin; the benchmark
            # has started no thread of its own yet, and sched_setaffinity takes no lock
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),  # noqa: PLW1509
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"ca.started"' in line:
                return process, int(json.loads(line)["address"].rsplit(":", 1)[1])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"s2s-ca serve did not start: {log.read_text()[-2000:]}")


class _Agent:
    """Attests with a join token, registers one entry, then talks mTLS to the CA."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.admin = AdminClient(data_dir / "admin.sock")
        self.url = f"https://127.0.0.1:{port}"
        self.bundle = self.admin.get("/v1/bundle", format="pem")

    def context(self, chain: str | None = None, key: bytes | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.bundle)
        ctx.check_hostname = False
        if chain is not None and key is not None:
            load_cert_chain_from_memory(ctx, chain.encode(), key)
        return ctx

    async def attest(self) -> tuple[ssl.SSLContext, str]:
        token = await asyncio.to_thread(self.admin.post, "/v1/tokens", {})
        key = ec.generate_private_key(ec.SECP256R1())
        body = {"join_token": token["token"], "csr": _csr(key)}
        connector = aiohttp.TCPConnector(ssl=self.context())
        async with (
            aiohttp.ClientSession(connector=connector) as plain,
            plain.post(self.url + "/v1/agent/attest", json=body) as resp,
        ):
            attested = await resp.json()
        key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        ctx = self.context(attested["svid_chain"], key_pem)
        entry = await asyncio.to_thread(
            self.admin.post,
            "/v1/entries",
            {"spiffe_id": "spiffe://example.org/ns/x/sa/y", "parent_id": attested["spiffe_id"],
             "selectors": ["unix:uid:1000"]},
        )  # fmt: skip
        return ctx, entry["id"]


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status} {await resp.text()}")
        return await resp.json()


async def _rate(sessions: list[aiohttp.ClientSession], count: int, one: Any) -> float:
    """Items per second of ``count`` calls of ``one(session)`` spread over ``sessions``.

    One session (one connection) per worker: aiohttp 3.14 clients that share one connector
    between concurrent requests slow down sharply (measured: 8 in flight on a shared session
    gives ~10% of the rate of 8 sessions), which would measure the client, not the CA.
    """
    per_worker = max(1, count // len(sessions))

    async def worker(session: aiohttp.ClientSession) -> int:
        return sum([await one(session) for _ in range(per_worker)])

    start = time.perf_counter()
    done = sum(await asyncio.gather(*(worker(s) for s in sessions)))
    return done / (time.perf_counter() - start)


async def _measure(agent: _Agent, quick: bool) -> dict[str, Any]:
    ctx, entry_id = await agent.attest()
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) for _ in range(8)]
    try:
        csrs = [_csr(ec.generate_private_key(ec.SECP256R1())) for _ in range(BATCH)]
        batch = {"requests": [{"entry_id": entry_id, "csr": c} for c in csrs]}
        x509_url, jwt_url = agent.url + "/v1/agent/x509", agent.url + "/v1/agent/jwt"

        async def one_batch(session: aiohttp.ClientSession) -> int:
            results = (await _post(session, x509_url, batch))["results"]
            if not all("svid_chain" in r for r in results):
                raise RuntimeError(f"batch item refused: {results[0]}")
            return len(results)

        async def one_jwt(session: aiohttp.ClientSession) -> int:
            await _post(session, jwt_url, {"entry_id": entry_id, "audience": ["bench"]})
            return 1

        for session in sessions:  # warm up: handshakes, caches
            await one_jwt(session)
        await one_batch(sessions[0])
        rounds, batches, tokens, lat_n = (2, 4, 400, 10) if quick else (5, 20, 4000, 60)
        x509_rates = [await _rate(sessions[:2], batches, one_batch) for _ in range(rounds)]
        jwt_rates = [await _rate(sessions, tokens, one_jwt) for _ in range(rounds)]
        latencies = []
        for _ in range(lat_n):
            start = time.perf_counter()
            await one_batch(sessions[0])
            latencies.append(time.perf_counter() - start)
        return {
            "x509": statistics.median(x509_rates),
            "jwt": statistics.median(jwt_rates),
            "latency": latencies,
        }
    finally:
        for session in sessions:
            await session.close()


def run(quick: bool) -> list[Figure]:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = b"x" * 200
    min_time, repeats = (0.05, 3) if quick else (0.4, 5)
    raw_rate = median_rate(lambda: key.sign(digest, ec.ECDSA(hashes.SHA256())),
                           min_time=min_time, repeats=repeats)  # fmt: skip
    raw_100_ms = 100 * time_per_op(lambda: key.sign(digest, ec.ECDSA(hashes.SHA256())),
                                   min_time=min_time, repeats=repeats) * 1000  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        process, port = _start_ca(Path(tmp))
        try:
            measured = asyncio.run(_measure(_Agent(Path(tmp) / "ca", port), quick))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    p50, p99 = (v * 1000 for v in percentiles(measured["latency"], 50, 99))
    raw = "raw ECDSA P-256 signatures/s"
    note = "separate CA process, mTLS keep-alive, audit log on"
    return [
        Figure("X509-SVIDs/s via HTTPS batch API (100/req)", measured["x509"], "SVIDs/s", raw,
               raw_rate, note=note),
        Figure("JWT-SVIDs/s via HTTPS API (8 in flight)", measured["jwt"], "tokens/s", raw,
               raw_rate, note=note),
        Figure("batch of 100 CSRs over HTTPS, p50", p50, "ms", "100 raw signatures", raw_100_ms,
               higher_is_better=False),
        Figure("batch of 100 CSRs over HTTPS, p99", p99, "ms", "100 raw signatures", raw_100_ms,
               higher_is_better=False),
    ]  # fmt: skip
