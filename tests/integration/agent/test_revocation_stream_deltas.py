"""WatchRevocations sends deltas to the clients that ask for them, whole sets to the others.

A real Workload API server on a real Unix socket serves ``s2s.agent.v1.Revocations`` from a
hand-driven feed that derives its sets as the agent's CA feed does (revoke, prune: derived; a
reload or another store epoch: replaced). The verifier's ``AgentRevocationFeed`` follows it over a
real ``WorkloadApiClient``. Twins: an old-style client (an empty request) still gets whole sets; a
scripted agent's deltas from the wrong base, of another epoch, or malformed are refused, the last
good set kept and the stream reopened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import polling
import pytest

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.revocations_api import RevocationsService
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.agent.workload_calls import Ctx
from s2s.agent.workload_extensions import CallerCheck, StreamGuard
from s2s.core.clock import FakeClock
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.feeds_agent import AgentRevocationFeed
from s2s.verifier.workload_client import RevocationsUpdate, WorkloadApiClient
from s2s.workload_proto import s2s_revocations_pb2 as pb

ME = "spiffe://example.org/me"
HEARTBEAT = 0.05
DEADLINE = 5.0
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class DerivingFeed(RevocationFeed):
    """The agent's feed, driven by hand; sets are derived from the last one, as the CA feed's
    deltas are, unless replaced (``reload``) or from another store (``epoch``)."""

    name = "deriving feed"
    epoch = "e1"

    def revoke(self, *records: RevocationRecord) -> None:
        self._publish(self.snapshot().with_records(records))
        self._confirm(self._now())

    def remove(self, *keys: tuple[RevocationKind, str, str]) -> None:
        self._publish(self.snapshot().without(keys))
        self._confirm(self._now())

    def prune(self, now: dt.datetime) -> None:
        self._publish(self.snapshot().pruned(now))
        self._confirm(self._now())

    def reload(self, *records: RevocationRecord, epoch: str | None = None) -> None:
        if epoch is not None:
            self.epoch = epoch
        self._publish(RevocationSet.of(records))
        self._confirm(self._now())

    def move_store(self, epoch: str, *records: RevocationRecord) -> None:
        """A set from another store (default: the same records), its epoch named after
        publishing, as the CA feed does."""
        self._publish(RevocationSet.of(records or self.snapshot().records()))
        self.epoch = epoch
        self._confirm(self._now())

    async def _run(self) -> None:
        await asyncio.Event().wait()


def jti(value: str, expires_in: int = 3600) -> RevocationRecord:
    return RevocationRecord.for_jti(
        value, revoked_at=T0, expires_at=T0 + dt.timedelta(seconds=expires_in)
    )


def serial(value: int, issuer: str = "a" * 64) -> RevocationRecord:
    return RevocationRecord.for_serial(
        value, revoked_at=T0, expires_at=T0 + dt.timedelta(hours=1), issuer=issuer
    )


until = functools.partial(polling.until, timeout=DEADLINE)  # this module's deadline


async def next_change(stream: AsyncIterator[RevocationsUpdate]) -> RevocationsUpdate:
    """The next message that is not a heartbeat."""
    while True:
        update = await asyncio.wait_for(anext(stream), DEADLINE)
        if update.records is not None:
            return update


@pytest.fixture
def feed(fake_clock: FakeClock) -> DerivingFeed:
    out = DerivingFeed(clock=fake_clock)
    out.reload()
    return out


@pytest.fixture
def service(feed: DerivingFeed) -> RevocationsService:
    return RevocationsService(feed, heartbeat=HEARTBEAT)


async def serve(
    provider: StaticIdentityProvider, socket_dir: Path, authority: TestAuthority, extension: Any
) -> WorkloadApiServer:
    provider.put("me", [f"unix:uid:{os.getuid()}"], authority.issue_x509_svid(ME))
    return WorkloadApiServer(
        provider=provider,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        extensions=(extension,),
    )


@pytest.fixture
async def agent(
    provider: StaticIdentityProvider,
    socket_dir: Path,
    authority: TestAuthority,
    service: RevocationsService,
) -> AsyncIterator[WorkloadApiServer]:
    async with await serve(provider, socket_dir, authority, service) as server:
        yield server
    service.close()


def follower(server: WorkloadApiServer, clock: FakeClock) -> tuple[AgentRevocationFeed, Any]:
    client = WorkloadApiClient(server.socket_path)
    feed = AgentRevocationFeed(lambda: client, delay=lambda _n: 0.01, clock=clock)
    return feed, client


def values(records: Any) -> list[str]:
    return sorted(r.value for r in records)


# --- what the stream sends -----------------------------------------------------------------------


async def test_revoke_and_prune_come_as_deltas_and_a_reload_as_a_whole_set(
    agent: WorkloadApiServer, feed: DerivingFeed, service: RevocationsService
) -> None:
    feed.revoke(jti("a", expires_in=10), jti("b"))
    async with WorkloadApiClient(agent.socket_path) as client:
        stream = client.watch_revocations(deltas=True)
        first = await next_change(stream)
        assert first.base is None
        assert values(first.records) == ["a", "b"]
        assert first.epoch == "e1"

        feed.revoke(jti("c"))  # revoke: only the new record
        revoke = await next_change(stream)
        assert (revoke.base, values(revoke.records), revoke.removed) == (
            first.revision,
            ["c"],
            (),
        )
        assert revoke.revision > first.revision
        assert revoke.epoch == "e1"

        feed.prune(T0 + dt.timedelta(seconds=10))  # prune: only the key of "a"
        prune = await next_change(stream)
        assert prune.base == revoke.revision
        assert prune.records == ()
        assert prune.removed == ((RevocationKind.JTI, "a", ""),)

        feed.reload(jti("b"), jti("c"), jti("d"))  # replaced, not derived: the whole set
        reload = await next_change(stream)
        assert reload.base is None
        assert values(reload.records) == ["b", "c", "d"]

        feed.revoke(jti("e"))  # and deltas again from the reloaded set
        after = await next_change(stream)
        assert (after.base, values(after.records)) == (reload.revision, ["e"])

        feed.reload(jti("e"), epoch="e2")  # another store: the whole set, with its epoch
        other = await next_change(stream)
        assert other.base is None
        assert values(other.records) == ["e"]
        assert other.epoch == "e2"
        await stream.aclose()
    assert service.deltas_sent == 3


async def test_a_delta_larger_than_the_set_comes_whole(
    agent: WorkloadApiServer, feed: DerivingFeed
) -> None:
    feed.revoke(*(jti(f"j{i}") for i in range(40)))
    async with WorkloadApiClient(agent.socket_path) as client:
        stream = client.watch_revocations(deltas=True)
        await next_change(stream)
        feed.remove(*((RevocationKind.JTI, f"j{i}", "") for i in range(39)))
        feed.revoke(*(jti(f"k{i}") for i in range(2)))
        big = await next_change(stream)  # 41 changes to a set of 3
        assert big.base is None
        assert values(big.records) == ["j39", "k0", "k1"]
        feed.revoke(jti("k2"))  # twin: a small change is a delta
        small = await next_change(stream)
        assert small.base == big.revision
        assert values(small.records) == ["k2"]
        await stream.aclose()


async def test_an_old_client_gets_whole_sets(
    agent: WorkloadApiServer, feed: DerivingFeed, service: RevocationsService
) -> None:
    """An old client sends an empty request (it knows no ``deltas`` field) and understands only
    ``full``: every change still carries the whole set, never a delta."""
    feed.revoke(jti("a"))
    async with grpc.aio.insecure_channel(f"unix:{agent.socket_path}") as channel:
        call = channel.unary_stream(
            "/s2s.agent.v1.Revocations/WatchRevocations",
            request_serializer=lambda _m: b"",
            response_deserializer=pb.RevocationsUpdate.FromString,
        )(None, metadata=(("workload.spiffe.io", "true"),))
        first = await asyncio.wait_for(call.read(), DEADLINE)
        assert first.full
        assert _records(first) == ["a"]
        feed.revoke(jti("b"))
        revoked = await next_raw_change(call)
        feed.prune(T0 + dt.timedelta(hours=2))
        pruned = await next_raw_change(call)
        call.cancel()
    assert _records(revoked) == ["a", "b"]
    assert _records(pruned) == []
    assert service.deltas_sent == 0
    # Twin: the same agent sends a client that asks a delta.
    async with WorkloadApiClient(agent.socket_path) as client:
        stream = client.watch_revocations(deltas=True)
        await next_change(stream)
        feed.revoke(jti("c"))
        assert (await next_change(stream)).base is not None
        await stream.aclose()


async def next_raw_change(call: Any) -> pb.RevocationsUpdate:
    while True:
        message = await asyncio.wait_for(call.read(), DEADLINE)
        assert not message.delta  # never to a client that did not ask
        if message.full:
            return message


def _records(message: pb.RevocationsUpdate) -> list[str]:
    return sorted(r["value"] for r in json.loads(message.records_json))


# --- the verifier follows by deltas ---------------------------------------------------------------


async def test_the_verifier_follows_by_deltas_and_takes_a_reload_whole(
    agent: WorkloadApiServer, feed: DerivingFeed, fake_clock: FakeClock
) -> None:
    feed.revoke(jti("a"))
    verifier, client = follower(agent, fake_clock)
    async with client:
        await verifier.start()
        try:
            feed.revoke(jti("b"), serial(10))
            await until(lambda: verifier.snapshot().get(serial(10).key) is not None, "revoke")
            feed.remove(jti("a").key)
            await until(lambda: verifier.snapshot().get(jti("a").key) is None, "removal")
            assert (verifier.wholes, verifier.deltas) == (1, 2)
            feed.reload(jti("z"))
            await until(lambda: values(verifier.snapshot().records()) == ["z"], "reload")
            assert verifier.wholes == 2
            assert verifier.reconnects == 0
            assert verifier.current().is_jti_revoked("z")
        finally:
            await verifier.stop()


async def test_a_store_named_after_its_set_is_published_comes_whole_at_the_next_change(
    agent: WorkloadApiServer, feed: DerivingFeed, fake_clock: FakeClock
) -> None:
    """The CA feed names a new store epoch just after it publishes the set (same records): the
    next change must come as a whole set of the new epoch, not as a delta the client refuses."""
    feed.revoke(jti("a"))
    verifier, client = follower(agent, fake_clock)
    async with client:
        await verifier.start()
        try:
            stream = client.watch_revocations(deltas=True)
            await next_change(stream)
            feed.move_store("e2")
            feed.revoke(jti("b"))
            change = await next_change(stream)
            assert change.base is None
            assert change.epoch == "e2"
            assert values(change.records) == ["a", "b"]
            feed.revoke(jti("c"))  # twin: within the new epoch, deltas again
            again = await next_change(stream)
            assert again.base == change.revision
            assert again.epoch == "e2"
            feed.move_store("e3", jti("d"))  # other records: the whole set names its epoch
            moved = await next_change(stream)
            assert moved.base is None
            assert (moved.epoch, values(moved.records)) == ("e3", ["d"])
            feed.revoke(jti("e"))
            last = await next_change(stream)
            assert (last.base, last.epoch) == (moved.revision, "e3")
            await stream.aclose()
            await until(lambda: values(verifier.snapshot().records()) == ["d", "e"], "e")
            assert verifier.reconnects == 0  # nothing refused on the way
        finally:
            await verifier.stop()


@pytest.mark.parametrize("seed", range(6))
async def test_the_verifier_set_equals_the_agent_set_after_random_changes(
    agent: WorkloadApiServer, feed: DerivingFeed, fake_clock: FakeClock, seed: int
) -> None:
    """Property: after any sequence of revokes, replacements, removals, prunes, reloads and
    epoch changes, some of them in bursts the stream coalesces, the verifier's set equals the
    agent's."""
    rng = random.Random(seed)
    verifier, client = follower(agent, fake_clock)
    async with client:
        await verifier.start()
        try:
            for _ in range(30):
                for _ in range(rng.choice((1, 1, 2, 5))):  # a burst: one delta over several
                    step(feed, rng)
                want = feed.snapshot()
                await until(
                    lambda: verifier.snapshot().records() == want.records(),  # noqa: B023
                    f"the verifier's set equals the agent's (seed {seed})",
                )
            assert verifier.deltas > 0
            assert verifier.reconnects == 0
        finally:
            await verifier.stop()


def step(feed: DerivingFeed, rng: random.Random) -> None:
    pick = rng.random()
    held = feed.snapshot().record_keys()
    if pick < 0.5 or not held:
        records = [
            jti(f"j{rng.randrange(30)}", expires_in=rng.randrange(1, 100))
            if rng.random() < 0.5
            else serial(rng.randrange(1, 30), rng.choice("ab") * 64)
            for _ in range(rng.randrange(1, 4))
        ]
        feed.revoke(*records)
    elif pick < 0.7:
        feed.remove(*rng.sample(held, min(len(held), rng.randrange(1, 4))))
    elif pick < 0.85:
        feed.prune(T0 + dt.timedelta(seconds=rng.randrange(100)))
    elif pick < 0.95:
        feed.reload(*(jti(f"r{rng.randrange(30)}") for _ in range(rng.randrange(4))))
    elif pick < 0.97:
        feed.reload(*(jti(f"x{i}") for i in range(3)), epoch=rng.choice(("e1", "e2", "")))
    else:
        feed.move_store(rng.choice(("e1", "e2", "")))


# --- a scripted agent: deltas refused -------------------------------------------------------------


class ScriptedRevocations:
    """A WatchRevocations service that plays one script per stream (the last one stays open)."""

    def __init__(self, scripts: list[list[pb.RevocationsUpdate]]) -> None:
        self.scripts = scripts
        self.gate = asyncio.Event()  # streams after the first wait for it
        self.streams = 0
        self.requests: list[bool] = []

    def rpc_handler(
        self, guard: StreamGuard, check_caller: CallerCheck
    ) -> grpc.GenericRpcHandler[Any, Any]:
        def watch(req: Any, ctx: Ctx) -> AsyncIterator[bytes]:
            return self._play(req, ctx, check_caller)

        method = grpc.unary_stream_rpc_method_handler(
            guard("WatchRevocations", watch),
            pb.WatchRevocationsRequest.FromString,
            lambda data: data,
        )
        return grpc.method_handlers_generic_handler(
            "s2s.agent.v1.Revocations", {"WatchRevocations": method}
        )

    async def _play(self, req: Any, ctx: Ctx, check_caller: CallerCheck) -> AsyncIterator[bytes]:
        await check_caller(ctx)
        self.requests.append(bool(req.deltas))
        script = self.scripts[min(self.streams, len(self.scripts) - 1)]
        last = self.streams >= len(self.scripts) - 1
        if self.streams:
            await self.gate.wait()
        self.streams += 1
        for message in script:
            yield message.SerializeToString()
        if last:
            await asyncio.Event().wait()


def whole(revision: int, *records: RevocationRecord, epoch: str = "e1") -> pb.RevocationsUpdate:
    return message(
        revision, full=True, records_json=_json([r.to_json() for r in records]), epoch=epoch
    )


def delta(
    base: int,
    revision: int,
    *records: RevocationRecord,
    removed: bytes = b"[]",
    epoch: str = "e1",
    **kw: Any,
) -> pb.RevocationsUpdate:
    fields: dict[str, Any] = {
        "delta": True,
        "base_revision": base,
        "records_json": _json([r.to_json() for r in records]),
        "removed_json": removed,
        "epoch": epoch,
    }
    fields.update(kw)
    return message(revision, **fields)


def message(revision: int, **kw: Any) -> pb.RevocationsUpdate:
    return pb.RevocationsUpdate(
        revision=revision,
        synced=True,
        age_seconds=0.0,
        lag_after_seconds=10.0,
        heartbeat_seconds=HEARTBEAT,
        **kw,
    )


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


GOOD = delta(1, 2, jti("b"), removed=b'[{"kind":"jti","value":"a"}]')
REFUSED = {
    "wrong base": delta(7, 8, jti("bad")),
    "another epoch": delta(1, 2, jti("bad"), epoch="e2"),
    "removed not JSON": delta(1, 2, jti("bad"), removed=b"[{"),
    "removed not keys": delta(1, 2, jti("bad"), removed=b'[{"kind":"jti"}]'),
    "unknown kind": delta(1, 2, jti("bad"), removed=b'[{"kind":"nope","value":"x"}]'),
    "records not JSON": delta(1, 2, records_json=b"{"),
    "bad record": delta(1, 2, records_json=b'[{"kind":"jti","value":""}]'),
    "whole and delta": delta(1, 2, jti("bad"), full=True),
}


@pytest.mark.parametrize("case", ["good", *REFUSED])
async def test_a_bad_delta_is_refused_the_set_kept_and_the_whole_set_taken_again(
    provider: StaticIdentityProvider,
    socket_dir: Path,
    authority: TestAuthority,
    fake_clock: FakeClock,
    case: str,
) -> None:
    sent = GOOD if case == "good" else REFUSED[case]
    scripted = ScriptedRevocations([[whole(1, jti("a")), sent], [whole(1, jti("a"), jti("c"))]])
    async with await serve(provider, socket_dir, authority, scripted) as server:
        verifier, client = follower(server, fake_clock)
        async with client:
            await verifier.start()
            try:
                await until(lambda: verifier.reconnects >= 1, "the stream ended or refused")
                if case == "good":  # accepted, then the stream ended
                    assert verifier.deltas == 1
                    assert values(verifier.snapshot().records()) == ["b"]
                else:
                    assert verifier.deltas == 0
                    assert values(verifier.current().records()) == ["a"]  # the last good set
                    assert verifier.last_error is not None
                    assert "closed the revocations stream" not in verifier.last_error  # refused
                scripted.gate.set()
                await until(lambda: verifier.wholes == 2, "the whole set taken again")
                assert values(verifier.snapshot().records()) == ["a", "c"]
                assert values(verifier.current().records()) == ["a", "c"]
                assert "bad" not in values(verifier.snapshot().records())
            finally:
                await verifier.stop()
    assert scripted.requests[:2] == [True, True]  # the feed asks for deltas on every stream


# --- a real CA and agent --------------------------------------------------------------------------


async def test_a_real_agent_sends_a_ca_revocation_as_a_delta(harness: Any) -> None:
    """The agent's CA feed derives its sets from the CA's delta answers, so a revocation made at
    the CA reaches a workload's stream as a delta; the verifier's set equals the agent's."""
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [f"unix:uid:{os.getuid()}"])
    running = await harness.start_agent(harness.config(token=token))
    agent = running.agent
    revocations = harness.ca.server.revocations
    await revocations.revoke_jti("before")
    agent_feed = agent.revocations.feed
    await harness.wait_until(lambda: agent_feed.snapshot().is_jti_revoked("before"), what="sync")
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        verifier = AgentRevocationFeed(lambda: client, delay=lambda _n: 0.01)
        await verifier.start()
        try:
            stream = client.watch_revocations(deltas=True)
            first = await next_change(stream)
            assert "before" in values(first.records)
            assert first.epoch == agent_feed.epoch
            assert first.epoch  # a CA on SQLite names its store
            await revocations.revoke_jti("after")
            change = await next_change(stream)
            assert change.base == first.revision
            assert values(change.records) == ["after"]
            assert change.removed == ()
            await stream.aclose()
            await harness.wait_until(
                lambda: verifier.snapshot().records() == agent_feed.snapshot().records(),
                what="the verifier's set equals the agent's",
            )
            assert verifier.deltas >= 1
            assert verifier.wholes == 1
        finally:
            await verifier.stop()


async def test_an_agent_that_predates_deltas_is_followed_by_whole_sets(
    provider: StaticIdentityProvider,
    socket_dir: Path,
    authority: TestAuthority,
    fake_clock: FakeClock,
) -> None:
    """An older agent ignores the request's ``deltas`` and sends the whole set on every change:
    the feed takes each as it comes, without reopening the stream."""
    older = ScriptedRevocations(
        [[whole(1, jti("a"), epoch=""), whole(2, jti("a"), jti("b"), epoch="")]]
    )
    async with await serve(provider, socket_dir, authority, older) as server:
        verifier, client = follower(server, fake_clock)
        async with client:
            await verifier.start()
            try:
                await until(lambda: verifier.wholes == 2, "both whole sets taken")
                assert values(verifier.current().records()) == ["a", "b"]
                assert (verifier.deltas, verifier.reconnects) == (0, 0)
            finally:
                await verifier.stop()
