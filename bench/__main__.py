"""Run every benchmark: ``make bench`` (or ``python -m bench [--quick] [name ...]``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from bench._harness import Figure

# One module per figure group; each defines run(quick: bool) -> list[Figure].
MODULES: list[str] = [
    "ca",
    "ca_http",
    "ca_cfssl",
    "workload_api",
    "agent",
    "verifier_tls",
    "verifier_jwt",
    "oauth_validation",
    "oauth_http",
    "revocation",
    "issued_index",
    "prune",
    "crl",
    "federation",
    "federation_refresh",
    "entries",
]


def _print(figures: list[Figure]) -> None:
    for f in figures:
        better = "higher is better" if f.higher_is_better else "lower is better"
        print(
            f"  {f.name:<52} {f.value:>12,.2f} {f.unit:<10}"
            f" | {f.baseline_name:<40} {f.baseline_value:>12,.2f}"
            f" | ratio {f.ratio:6.2f} ({better}){'  ' + f.note if f.note else ''}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("names", nargs="*", help="run only these modules")
    args = parser.parse_args(argv)
    for name in MODULES:
        if args.names and name not in args.names:
            continue
        print(f"== {name}")
        module = importlib.import_module(f"bench.{name}")
        _print(module.run(args.quick))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
