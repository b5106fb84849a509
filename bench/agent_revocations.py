"""The agent's WatchRevocations stream: bytes and CPU per change per workload stream, whole sets
(an old client, and every client before deltas) against deltas, at 1k/10k/100k records.

``python -m bench.agent_revocations [--quick] [--runs 3] [--cpu N]``

A real Workload API server on a Unix socket in a temp dir serves ``RevocationsService`` from a
feed holding N records; two raw gRPC streams read it, one with an empty request (an old client:
whole sets) and one asking for deltas. One revocation is derived into the feed's set (as the
agent's CA feed derives it from the CA's delta), and each stream's next message is measured:
its size on the wire (the serialized message), the agent's CPU to turn the new set into that
message, and the client's CPU to parse it and build its new set (``RevocationSet.of`` of a whole
set against ``with_changes`` of a delta). Times are medians of ``--runs`` runs (CPU time of this
process; ``--cpu`` pins it to one core); within a run, a delta's times are the median of 51 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench._harness import Figure
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.revocations_api import _WHOLE, RevocationsService
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.workload_client import _revocations_update
from s2s.workload_proto import s2s_revocations_pb2 as pb

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SIZES = (1_000, 10_000, 100_000)
_METHOD = "/s2s.agent.v1.Revocations/WatchRevocations"
_HEADER = (("workload.spiffe.io", "true"),)


class _Feed(RevocationFeed):
    name = "bench feed"
    epoch = "0123456789abcdef"

    def load(self, records: list[RevocationRecord]) -> None:
        self._publish(RevocationSet.of(records, version=1))
        self._confirm(self._now())

    def revoke(self, record: RevocationRecord) -> None:
        self._publish(self.snapshot().with_records([record], version=self.snapshot().version + 1))
        self._confirm(self._now())

    async def _run(self) -> None:
        await asyncio.Event().wait()


def _record(i: int) -> RevocationRecord:
    return RevocationRecord.for_serial(
        i + 1, revoked_at=T0, expires_at=T0 + dt.timedelta(hours=1), issuer="a" * 64
    )


async def _next_change(call: Any) -> bytes:
    while True:
        data: bytes = await asyncio.wait_for(call.read(), 120)
        message = pb.RevocationsUpdate.FromString(data)
        if message.full or message.delta:
            return data


def _cpu(fn: Callable[[], object], repeats: int = 1) -> float:
    """CPU seconds of one call of ``fn``: the median of ``repeats`` calls (a delta's ~0.1 ms is
    below the noise of a single call on a loaded machine)."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return statistics.median(samples)


_SMALL_REPEATS = 51  # calls per run for the O(change) paths


def _apply(held: RevocationSet, message: pb.RevocationsUpdate) -> RevocationSet:
    """What the verifier's feed does with a message: parse it, then build or derive its set."""
    update = _revocations_update(message)
    if update.base is None:
        return RevocationSet.of(update.records or ())
    return held.with_changes(update.records or (), update.removed)


async def measure(size: int, socket_dir: Path) -> dict[str, float]:
    """One run at ``size`` records: bytes, agent CPU and client CPU of one change, per stream."""
    clock = FakeClock(T0)
    authority = TestAuthority(clock=clock)
    provider = StaticIdentityProvider(
        bundles=BundleSet.of(authority.bundle()), jwt_signer=authority.issue_jwt_svid, clock=clock
    )
    provider.put(
        "me", [f"unix:uid:{os.getuid()}"], authority.issue_x509_svid("spiffe://example.org/me")
    )
    feed = _Feed(clock=clock)
    feed.load([_record(i) for i in range(size)])
    service = RevocationsService(feed, heartbeat=60.0)
    socket = str(socket_dir / f"agent-{size}.sock")
    out: dict[str, float] = {}
    async with (
        WorkloadApiServer(
            provider=provider, attestor=UnixAttestor(), socket_path=socket, extensions=(service,)
        ),
        grpc.aio.insecure_channel(
            f"unix:{socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel,
    ):
        calls = {}
        for name, request in (("whole", b""), ("delta", pb.WatchRevocationsRequest(deltas=True))):
            body = request if isinstance(request, bytes) else request.SerializeToString()
            calls[name] = channel.unary_stream(
                _METHOD, request_serializer=lambda _m, b=body: b, response_deserializer=bytes
            )(None, metadata=_HEADER)
            first = await _next_change(calls[name])
            assert pb.RevocationsUpdate.FromString(first).full
        held = RevocationSet.of(
            _revocations_update(pb.RevocationsUpdate.FromString(first)).records or ()
        )
        feed.revoke(_record(size))
        got = {name: await _next_change(call) for name, call in calls.items()}
        for call in calls.values():
            call.cancel()
    service.close()
    old_set = RevocationSet.of([_record(i) for i in range(size)], version=1)
    for name, data in got.items():
        message = pb.RevocationsUpdate.FromString(data)
        assert message.delta == (name == "delta"), name
        out[f"{name}_bytes"] = len(data)
        if name == "whole":
            out["whole_client_ms"] = 1e3 * _cpu(lambda m=message: _apply(held, m))
        else:
            chain = [held]  # each delta applied to the newest set, as the feed does

            def apply_delta(
                m: pb.RevocationsUpdate = message, chain: list[RevocationSet] = chain
            ) -> None:
                chain[0] = _apply(chain[0], m)

            out["delta_client_ms"] = 1e3 * _cpu(apply_delta, _SMALL_REPEATS)
    # The agent's CPU to turn one change into each kind of message (encoding included), on a
    # fresh service so that no cached encoding is reused.
    feed2 = _Feed(clock=clock)
    feed2._publish(old_set)
    feed2._confirm(clock.now())
    svc = RevocationsService(feed2, heartbeat=60.0)
    base_revision, base = svc.revision, feed2.snapshot()
    derived = base.with_records([_record(size)], version=2)
    feed2._publish(derived)
    out["whole_agent_ms"] = 1e3 * _cpu(lambda: svc._message(svc.revision, kind=_WHOLE))

    def delta_message() -> None:
        svc._deltas.clear()  # encoded afresh each time (a real change is encoded once)
        svc._delta_message(svc.revision, derived, base_revision, base)

    out["delta_agent_ms"] = 1e3 * _cpu(delta_message, _SMALL_REPEATS)
    svc.close()
    return out


async def _runs(sizes: tuple[int, ...], runs: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="s2s-bench-", dir="/tmp") as tmp:
        for size in sizes:
            samples = [await measure(size, Path(tmp)) for _ in range(runs)]
            results[size] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return results


def _table(results: dict[int, dict[str, float]], runs: int) -> str:
    lines = [
        f"| one revocation, per stream (medians of {runs}) | "
        + " | ".join(f"{n:,} records" for n in results)
        + " |",
        "|---|" + "---|" * len(results),
    ]
    rows = (
        ("bytes on the wire, whole set -> delta", "whole_bytes", "delta_bytes", ",.0f"),
        ("agent CPU per message, whole -> delta (ms)", "whole_agent_ms", "delta_agent_ms", ".3f"),
        ("client parse + apply, whole -> delta (ms)", "whole_client_ms", "delta_client_ms", ".3f"),
    )  # fmt: skip
    for title, before, after, fmt in rows:
        cells = [f"{r[before]:{fmt}} -> {r[after]:{fmt}}" for r in results.values()]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(quick: bool) -> list[Figure]:
    sizes = (1_000,) if quick else SIZES
    results = asyncio.run(_runs(sizes, 1 if quick else 3))
    return [
        Figure(
            f"agent revocations stream, {n:,} records: bytes per change",
            r["delta_bytes"],
            "bytes",
            "whole set per change",
            r["whole_bytes"],
            higher_is_better=False,
        )
        for n, r in results.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k records, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    sizes = (1_000,) if args.quick else SIZES
    runs = 1 if args.quick else args.runs
    print(_table(asyncio.run(_runs(sizes, runs)), runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
