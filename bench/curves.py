"""Curves for bench/RESULTS.md: JWT-SVID validation beside raw ES256 verifies, and X.509 issuance
across batch sizes beside its crypto floor (in-process) and beside cfssl (over the network).

``python -m bench.curves [--quick] [--runs 3] [--save FILE.json] [--plot PNG [--before FILE.json]]``

Each run measures, in one process and one sitting (figures and baselines in alternating rounds):

* JWT: ``JwtValidator`` uncached (256 distinct tokens cycled), raw ``cryptography`` ES256
  verifies of the same signatures, PyJWT ``decode``, and a cached hit (``bench.verifier_jwt``);
* issuance in-process: ``Issuer.sign_x509_svids`` per CSR for batches of 1, 10, 100 and 500 (entry
  lookup, sign, serial index, revocation re-read; audit lines off), ``Issuer.sign_csr`` (CSR to
  checked SVID) and the crypto floor (one CSR verify + one P-256 signature), per process
  CPU-second on one core (the store's worker thread counts);
* issuance over the network (``bench.ca_cfssl``, when cfssl is installed): the CA's HTTPS batch
  API per CA CPU-second for the same batch sizes, beside ``cfssl serve`` on the same core.

The medians of the runs are printed as Markdown; ``--save`` keeps them as JSON, and ``--plot``
draws them (matplotlib, the ``bench`` extra: ``pip install -e .[bench]``), with the figures of an
earlier ``--save`` (``--before``, e.g. the code before a change) drawn dashed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bench import ca_cfssl
from bench.ca import _csr, _setup
from bench.verifier_jwt import _pinned, _rates
from s2s.ca.audit import AUDIT_LOGGER
from s2s.ca.issuance import CsrRequest
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority

SIZES = (1, 10, 100, 500)
Results = dict[str, float]


def _cpu_per_op(fn: Callable[[], object], n: int) -> float:
    """Process CPU seconds per call (the store's worker thread included; pinned to one core)."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def _jwt(quick: bool) -> Results:
    with _pinned(1):
        figures, _ = _rates(TestAuthority("example.org"), quick)
    uncached, pyjwt, cached = figures
    return {
        "jwt/raw verify": uncached.baseline_value,
        "jwt/validate uncached": uncached.value,
        "jwt/PyJWT decode": pyjwt.value,
        "jwt/validate cached": cached.value,
    }


def _issuance(quick: bool) -> Results:
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, _pinned(1):
        loop = asyncio.new_event_loop()
        try:
            store, issuer, agent, entry_id = loop.run_until_complete(_setup(Path(tmp)))
            raw_key = ec.generate_private_key(ec.SECP256R1())
            tbs, ecdsa = b"\x30" * 400, ec.ECDSA(hashes.SHA256())
            csr_obj = x509.load_der_x509_csr(_csr())
            spiffe_id = SpiffeId.parse("spiffe://example.org/ns/x/sa/y")
            csr, ttl = _csr(), dt.timedelta(minutes=5)
            requests = [CsrRequest(entry_id, _csr()) for _ in range(max(SIZES))]

            def floor() -> object:
                assert csr_obj.is_signature_valid
                return raw_key.sign(tbs, ecdsa)

            def batch(size: int) -> Callable[[], object]:
                return lambda: loop.run_until_complete(
                    issuer.sign_x509_svids(agent, requests[:size])
                )

            cases: dict[str, tuple[Callable[[], object], int]] = {
                "issue/floor": (floor, 1),
                "issue/sign_csr": (lambda: issuer.sign_csr(csr, spiffe_id=spiffe_id, ttl=ttl), 1),
                **{f"issue/batch {size}": (batch(size), size) for size in SIZES},
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            items = 300 if quick else 1500
            for _ in range(3 if quick else 7):
                for name, (fn, size) in cases.items():
                    samples[name].append(size / _cpu_per_op(fn, max(1, items // size)))
            loop.run_until_complete(store.close())
        finally:
            loop.close()
    return {name: statistics.median(rates) for name, rates in samples.items()}


def _network(quick: bool) -> Results:
    rates = ca_cfssl.sweep(SIZES, quick)
    if rates is None:
        print("(cfssl is not installed: the network curve is left out)")
        return {}
    return {f"https/{name}": cpu for name, (_, cpu) in rates.items()}


def measure(runs: int, quick: bool) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for i in range(runs):
        for part in (_jwt, _issuance, _network):
            for name, value in part(quick).items():
                out.setdefault(name, []).append(value)
        print(f"run {i + 1}/{runs} done", flush=True)
    return out


def table(results: dict[str, list[float]]) -> str:
    lines = ["| figure | median | range | runs |", "|---|---|---|---|"]
    for name, values in results.items():
        lines.append(
            f"| {name} | {statistics.median(values):,.0f}/s "
            f"| {min(values):,.0f}-{max(values):,.0f} | {len(values)} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[float]], before: dict[str, list[float]] | None, png: Path) -> None:
    import matplotlib  # noqa: PLC0415 (the bench extra; nothing else needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    def med(data: dict[str, list[float]], name: str) -> float:
        return statistics.median(data[name]) / 1000 if name in data else float("nan")

    fig, (jwt_ax, issue_ax, net_ax) = plt.subplots(1, 3, figsize=(16, 5))
    names = ["jwt/raw verify", "jwt/validate uncached", "jwt/PyJWT decode"]
    labels = ["raw ES256 verify", "JwtValidator, uncached", "PyJWT decode"]
    xs = list(range(len(names)))
    width = 0.38 if before else 0.6
    if before:
        jwt_ax.bar([x - width / 2 for x in xs], [med(before, n) for n in names], width,
                   label="before", color="#bbbbbb")  # fmt: skip
    jwt_ax.bar([x + (width / 2 if before else 0) for x in xs], [med(results, n) for n in names],
               width, label="after" if before else None, color="#3366aa")  # fmt: skip
    jwt_ax.set_xticks(xs, labels, fontsize=8)
    jwt_ax.set_ylabel("thousand per CPU-second (one core)")
    jwt_ax.set_title("JWT-SVID validation vs raw ES256 verify")
    if before:
        jwt_ax.legend()

    for data, style, tag in ((before, "--", "before"), (results, "-", "after")):
        if not data:
            continue
        suffix = f" ({tag})" if before else ""
        issue_ax.plot(SIZES, [med(data, f"issue/batch {s}") for s in SIZES], style, marker="o",
                      color="#3366aa", label=f"sign_x509_svids per CSR{suffix}")  # fmt: skip
        issue_ax.plot(SIZES, [med(data, "issue/sign_csr")] * len(SIZES), style, color="#33aa66",
                      label=f"sign_csr (CSR -> checked SVID){suffix}")  # fmt: skip
        https = [med(data, f"https/s2s/{s}") for s in SIZES]
        net_ax.plot(SIZES, https, style, marker="o", color="#3366aa",
                    label=f"s2s HTTPS batch API{suffix}")  # fmt: skip
    issue_ax.plot(SIZES, [med(results, "issue/floor")] * len(SIZES), ":", color="black",
                  label="floor: CSR verify + 1 signature")  # fmt: skip
    net_ax.plot(SIZES, [med(results, "https/cfssl")] * len(SIZES), ":", color="#aa3333",
                label="cfssl serve sign (1 CSR/request)")  # fmt: skip
    titles = {issue_ax: "X509-SVIDs in-process, one core",
              net_ax: "X509-SVIDs per server CPU-second, server on one core"}  # fmt: skip
    for ax, title in titles.items():
        ax.set_xscale("log")
        ax.set_xlabel("CSRs per batch")
        ax.set_ylabel("thousand SVIDs per second")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--load", type=Path, help="plot saved results instead of measuring")
    parser.add_argument("--before", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = (
        json.loads(args.load.read_text()) if args.load else measure(args.runs, args.quick)
    )
    print(table(results))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    if args.plot:
        before = json.loads(args.before.read_text()) if args.before else None
        plot(results, before, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
