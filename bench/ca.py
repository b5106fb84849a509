"""CA issuance in-process: X509-SVIDs from CSRs and JWT-SVIDs, beside raw ECDSA P-256 signatures.

Everything runs against a real CA (SQLite store and KEK in a temp dir). The rates are per CPU-second
of one core (pinned to CPU 1 when it exists, this thread's CPU clock), in alternating rounds with
their baselines, so other work on a shared machine does not count. Figures:

* X509-SVIDs/s: ``Issuer.sign_csr`` (parse CSR, verify its signature, check the key, build the leaf,
  sign, run ``check_x509_svid``) beside raw ``cryptography`` ECDSA P-256 signatures/s;
* JWT-SVIDs/s: ``Issuer.sign_jwt`` (claims, ES256 via PyJWT, kid, typ) beside the same raw rate;
* p50/p99 of one batch of 100 CSRs through ``Issuer.sign_x509_svids`` (entry lookup, signing,
  serial index write, audit), beside 100 raw signatures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench._harness import Figure, percentiles, time_per_op
from bench.verifier_jwt import _pinned
from s2s.ca.attestation import AgentAttestor
from s2s.ca.audit import AUDIT_LOGGER
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import CsrRequest, Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.registry import Registry
from s2s.core.clock import SystemClock
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.records import AgentRecord
from s2s.store.sqlite import SqliteStore

BATCH = 100


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def _setup(data_dir: Path) -> tuple[SqliteStore, Issuer, AgentRecord, str]:
    config = CaConfig(trust_domain=TrustDomain.parse("example.org"), data_dir=data_dir)
    clock = SystemClock()
    kek = KeyEncryptionKey.create(config.kek_path)
    store = await SqliteStore.open(config.store_path)
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    registry = Registry(config=config, store=store, clock=clock)
    issuer = Issuer(config=config, authority=authority, registry=registry, store=store, clock=clock)
    attestor = AgentAttestor(authority=authority, registry=registry, issuer=issuer)
    token = await registry.generate_join_token()
    agent = (await attestor.attest_join_token(token.token, _csr())).agent
    entry = await registry.create_entry(
        spiffe_id=SpiffeId.parse("spiffe://example.org/ns/x/sa/y"),
        parent_id=agent.spiffe_id,
        selectors=parse_selectors(["unix:uid:1000"]),
    )
    return store, issuer, agent, entry.id


def run(quick: bool) -> list[Figure]:
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)  # measure issuance, not logging
    min_time, repeats = (0.05, 3) if quick else (0.4, 5)
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        try:
            store, issuer, agent, entry_id = loop.run_until_complete(_setup(Path(tmp)))
            try:
                return _measure(loop, issuer, agent, entry_id, quick, min_time, repeats)
            finally:
                loop.run_until_complete(store.close())
        finally:
            loop.close()


def _measure(
    loop: asyncio.AbstractEventLoop,
    issuer: Issuer,
    agent: AgentRecord,
    entry_id: str,
    quick: bool,
    min_time: float,
    repeats: int,
) -> list[Figure]:
    raw_key = ec.generate_private_key(ec.SECP256R1())
    tbs = b"\x30" * 400  # about a leaf's TBSCertificate

    def raw_sign() -> object:
        return raw_key.sign(tbs, ec.ECDSA(hashes.SHA256()))

    csr_obj = x509.load_der_x509_csr(_csr())

    def crypto_floor() -> object:  # what issuing from a CSR cannot avoid: 1 verify + 1 sign
        assert csr_obj.is_signature_valid
        return raw_key.sign(tbs, ec.ECDSA(hashes.SHA256()))

    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/x/sa/y")
    csr = _csr()
    ttl = dt.timedelta(minutes=5)
    cases: dict[str, Callable[[], object]] = {
        "raw": raw_sign,
        "floor": crypto_floor,
        "x509": lambda: issuer.sign_csr(csr, spiffe_id=spiffe_id, ttl=ttl),
        "jwt": lambda: issuer.sign_jwt(spiffe_id, ["spiffe://example.org/api"], ttl),
    }
    # Interleaved rounds: on a shared machine, a figure and its baseline see the same load.
    rates: dict[str, list[float]] = {name: [] for name in cases}
    with _pinned(1):  # one core, timed by this thread's CPU clock: other load does not count
        for _ in range(1 if quick else 3):
            for name, fn in cases.items():
                per_op = time_per_op(fn, min_time=min_time, repeats=repeats, timer=time.thread_time)
                rates[name].append(1.0 / per_op)
    raw, floor, x509_rate, jwt_rate = (statistics.median(rates[n]) for n in cases)
    requests = [CsrRequest(entry_id, _csr()) for _ in range(BATCH)]
    samples = []
    for _ in range(5 if quick else 30):
        start = time.perf_counter()
        results = loop.run_until_complete(issuer.sign_x509_svids(agent, requests))
        samples.append((time.perf_counter() - start) * 1000)
        assert all(r.svid is not None for r in results)
    p50, p99 = percentiles(samples, 50, 99)
    raw_batch_ms = BATCH * 1000 / raw
    return [
        Figure(
            "X509-SVIDs/s in-process (CSR -> checked SVID)",
            x509_rate,
            "ops/s",
            "raw ECDSA P-256 signatures/s",
            raw,
        ),
        Figure(
            "X509-SVIDs/s in-process (CSR -> checked SVID)",
            x509_rate,
            "ops/s",
            "crypto floor: CSR verify + 1 signature/s",
            floor,
        ),
        Figure(
            "JWT-SVIDs/s in-process (ES256, kid, typ)",
            jwt_rate,
            "ops/s",
            "raw ECDSA P-256 signatures/s",
            raw,
        ),
        Figure(
            f"batch of {BATCH} CSRs p50 (sign_x509_svids)",
            p50,
            "ms",
            f"{BATCH} raw signatures",
            raw_batch_ms,
            higher_is_better=False,
        ),
        Figure(
            f"batch of {BATCH} CSRs p99 (sign_x509_svids)",
            p99,
            "ms",
            f"{BATCH} raw signatures",
            raw_batch_ms,
            higher_is_better=False,
        ),
    ]
