"""Open streams are rechecked before every push: once per connection and push, not per stream."""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import grpc

from s2s.agent.attestors.peercred import PeerCredentials
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.testing import TestAuthority
from s2s.workload_proto import workload_pb2 as pb

ME = f"unix:uid:{os.getuid()}"
HEADER = (("workload.spiffe.io", "true"),)


class CountingAttestor(UnixAttestor):
    def __init__(self) -> None:
        super().__init__()
        self.rechecks = 0
        self._count_lock = threading.Lock()

    def recheck(self, peer: PeerCredentials) -> Hashable:
        with self._count_lock:
            self.rechecks += 1
        return super().recheck(peer)


def streams(channel: grpc.aio.Channel, n: int) -> list[Any]:
    fetch = channel.unary_stream(
        "/SpiffeWorkloadAPI/FetchX509SVID",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.X509SVIDResponse.FromString,
    )
    return [fetch(pb.X509SVIDRequest(), metadata=HEADER, timeout=30) for _ in range(n)]


async def test_streams_of_one_connection_share_a_recheck_per_push(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    attestor = CountingAttestor()
    async with WorkloadApiServer(
        provider=provider, attestor=attestor, socket_path=str(socket_dir / "agent.sock")
    ) as srv:
        target = f"unix:{srv.socket_path}"
        # Two connections (distinct channel options keep grpc from sharing one), 5 streams each.
        async with (
            grpc.aio.insecure_channel(target, options=[("s2s.test", 1)]) as one,
            grpc.aio.insecure_channel(target, options=[("s2s.test", 2)]) as two,
        ):
            calls = streams(one, 5) + streams(two, 5)
            for call in calls:
                await call.read()
            assert srv.open_connections == 2
            opened = attestor.rechecks  # each call checks its caller once when it starts
            for push in (1, 2):
                provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
                for call in calls:
                    assert len((await call.read()).svids) == 1
                assert attestor.rechecks - opened == 2 * push  # per connection and push
            for call in calls:
                call.cancel()
