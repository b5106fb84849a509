"""CRL building at 10, 1,000 and 100,000 revoked serials, beside the bare ``cryptography`` builder.

Figures (ECDSA P-256 intermediate, medians; lower is better):

* ``crl build`` -- what the CA does for a CRL it has never built: one ``revoked_entry`` per
  record, ``build_crl`` (entries passed whole to the builder's constructor, AKI, cRLNumber), sign,
  DER; beside encode + sign of prebuilt entries by the bare builder (the cost of signing alone);
* ``CrlPublisher.refresh`` after one more revocation -- the steady state in the running CA (entries
  and issuers cached; cRLNumber compare-and-swap and both CRLs signed), on a real SQLite store
  whose issued-serial index holds every revoked serial; same baseline.
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from bench._harness import Figure
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.crl import CrlPublisher
from s2s.ca.crl_values import build_crl, revoked_entry
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import SystemClock
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.records import IssuedKind, IssuedSerial
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority

SIZES = (10, 1_000, 100_000)
QUICK_SIZES = (10, 1_000)
WORKLOAD = SpiffeId.parse("spiffe://example.org/bench")


def _median(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _records(n: int, now: dt.datetime) -> list[RevocationRecord]:
    expires = now + dt.timedelta(minutes=10)
    return [
        RevocationRecord.for_serial(0x10_0000 + i, revoked_at=now, expires_at=expires)
        for i in range(n)
    ]


def _build_figures(n: int, repeats: int) -> tuple[float, float]:
    """(seconds for our cold build, seconds for the bare builder with prebuilt entries)."""
    ca = TestAuthority()
    now = dt.datetime.now(dt.UTC)
    records = _records(n, now)

    def ours() -> bytes:
        entries = [revoked_entry(r) for r in records]
        crl = build_crl(
            issuer=ca.intermediate, issuer_key=ca.intermediate_key, entries=entries, number=1,
            this_update=now, next_update=now + dt.timedelta(hours=1),
        )  # fmt: skip
        return crl.public_bytes(Encoding.DER)

    prebuilt = [revoked_entry(r) for r in records]

    def bare() -> bytes:
        builder = x509.CertificateRevocationListBuilder(
            issuer_name=ca.intermediate.subject, last_update=now,
            next_update=now + dt.timedelta(hours=1), revoked_certificates=prebuilt,
        )  # fmt: skip
        return builder.sign(ca.intermediate_key, hashes.SHA256()).public_bytes(Encoding.DER)

    return _median(ours, repeats), _median(bare, repeats)


async def _refresh_figure(n: int, repeats: int, data_dir: Path) -> float:
    """Median seconds of CrlPublisher.refresh after one more revocation (steady state)."""
    config = CaConfig(trust_domain=TrustDomain.parse("example.org"), data_dir=data_dir)
    clock = SystemClock()
    kek = KeyEncryptionKey.create(config.kek_path)
    async with await SqliteStore.open(config.store_path) as store:
        await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
        authority = Authority(config=config, store=store, kek=kek, clock=clock)
        await authority.start()
        now = clock.now()
        records = _records(n + repeats, now)
        issuer_id = authority.x509_signer.authority_id
        await store.add_issued([
            IssuedSerial(serial=int(r.value, 16), kind=IssuedKind.X509_SVID, spiffe_id=WORKLOAD,
                         issuer_id=issuer_id, issued_at=now, not_after=r.expires_at)
            for r in records
        ])  # fmt: skip
        lookup = StaticRevocations(RevocationSet.of(records[:n], version=1))
        publisher = CrlPublisher(config=config, store=store, kek=kek, clock=clock,
                                 revocations=lookup)  # fmt: skip
        await publisher.refresh()  # cold build: learns issuers, builds entries
        samples = []
        for i in range(repeats):
            lookup.replace(RevocationSet.of(records[: n + i + 1], version=i + 2))
            start = time.perf_counter()
            await publisher.refresh()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)


def run(quick: bool) -> list[Figure]:
    logging.getLogger("s2s").setLevel(logging.WARNING)
    figures = []
    for n in QUICK_SIZES if quick else SIZES:
        repeats = 3 if n >= 100_000 else 7
        ours, bare = _build_figures(n, repeats)
        with tempfile.TemporaryDirectory() as tmp:
            refresh = asyncio.run(_refresh_figure(n, repeats, Path(tmp)))
        baseline = f"cryptography encode+sign, prebuilt, N={n:,}"
        figures += [
            Figure(f"crl build (entries+build+sign), N={n:,}", ours * 1e3, "ms", baseline,
                   bare * 1e3, higher_is_better=False),
            Figure(f"CrlPublisher.refresh +1 revocation, N={n:,}", refresh * 1e3, "ms", baseline,
                   bare * 1e3, higher_is_better=False, note="2 CRLs (intermediate + root)"),
        ]  # fmt: skip
    return figures
