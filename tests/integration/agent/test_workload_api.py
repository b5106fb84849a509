"""The Workload API server against the official ``spiffe`` client and raw gRPC, on a real socket.

The spiffe client is synchronous: it runs in a worker thread (``asyncio.to_thread``) or, for
callers of another uid, in a subprocess that drops to uid 65534 before connecting.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket as socketlib
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtSource, WorkloadApiClient, X509Source
from spiffe import JwtSvid as SpiffeJwtSvid
from spiffe.errors import PySpiffeError

from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.uds_proxy import PeerTaggingProxy
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import AttestationFailed, InvalidConfig
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.testing import TestAuthority
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.jwt import JwtValidator
from s2s.workload_proto import workload_pb2 as pb

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run workloads as 65534")

ME = f"unix:uid:{os.getuid()}"
NOBODY = 65534
HEADER = (("workload.spiffe.io", "true"),)


def uri(server: WorkloadApiServer) -> str:
    return f"unix://{server.socket_path}"


def spiffe_client(server: WorkloadApiServer) -> WorkloadApiClient:
    return WorkloadApiClient(socket_path=uri(server), default_timeout=10)


async def wait_for(event: threading.Event, what: str, timeout: float = 10.0) -> None:
    if not await asyncio.to_thread(event.wait, timeout):
        raise AssertionError(f"timed out waiting for {what}")


# -- the official client ----------------------------------------------------------------------


async def test_spiffe_client_fetches_svids_and_bundles(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    provider.put("db", [ME, "unix:gid:0"], authority.issue_x509_svid("spiffe://example.org/db"))
    provider.put("other", ["unix:uid:4242"], authority.issue_x509_svid("spiffe://example.org/x"))

    def fetch() -> tuple[Any, Any]:
        with spiffe_client(server) as client:
            return client.fetch_x509_context(), client.fetch_x509_bundles()

    context, bundles = await asyncio.to_thread(fetch)
    ids = [str(s.spiffe_id) for s in context.x509_svids]
    assert ids == ["spiffe://example.org/web", "spiffe://example.org/db"]
    assert str(context.default_svid.spiffe_id) == "spiffe://example.org/web"
    root = authority.root.public_bytes(serialization_der())
    for bundle_set in (context.x509_bundle_set, bundles):
        (bundle,) = bundle_set._bundles.values()
        assert [c.public_bytes(serialization_der()) for c in bundle.x509_authorities] == [root]


def serialization_der() -> Any:
    return Encoding.DER


async def test_spiffe_client_jwt_fetch_bundles_and_validate(
    server: WorkloadApiServer,
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    fake_clock: FakeClock,
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    foreign = TestAuthority("example.org")  # same trust domain name, other keys

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with spiffe_client(server) as client:
            svid = client.fetch_jwt_svid({"billing"})
            out["sub"], out["aud"] = str(svid.spiffe_id), svid.audience
            jwt_bundles = client.fetch_jwt_bundles()
            bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            out["kids"] = sorted(bundle.jwt_authorities)
            local = SpiffeJwtSvid.parse_and_validate(svid.token, bundle, {"billing"})
            out["local"] = str(local.spiffe_id)
            out["valid"] = str(client.validate_jwt_svid(svid.token, "billing").spiffe_id)
            out["again"] = client.fetch_jwt_svid({"billing"}).token == svid.token  # cached
            for name, token, aud in (
                ("wrong_aud", svid.token, "payments"),
                (
                    "foreign",
                    foreign.issue_jwt_svid("spiffe://example.org/web", "billing"),
                    "billing",
                ),
                (
                    "tampered",
                    svid.token[:-4] + ("AAAA" if not svid.token.endswith("AAAA") else "BBBB"),
                    "billing",
                ),
            ):
                try:
                    client.validate_jwt_svid(token, aud)
                    out[name] = "accepted"
                except PySpiffeError as exc:
                    out[name] = exc.__cause__.code().name  # type: ignore[union-attr]
        return out

    out = await asyncio.to_thread(run)
    assert out["sub"] == "spiffe://example.org/web"
    assert out["aud"] == {"billing"}
    assert out["kids"] == [authority.jwt_kid]
    assert out["local"] == "spiffe://example.org/web"  # the spiffe library's own validator
    assert out["valid"] == "spiffe://example.org/web"
    assert out["again"] is True
    assert out["wrong_aud"] == out["foreign"] == out["tampered"] == "INVALID_ARGUMENT"


async def test_validate_rejects_expired_token(
    server: WorkloadApiServer,
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    fake_clock: FakeClock,
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    token = authority.issue_jwt_svid("spiffe://example.org/web", "billing")
    request = pb.ValidateJWTSVIDRequest(audience="billing", svid=token)
    ok = await raw_call(server, "ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
    assert ok.spiffe_id == "spiffe://example.org/web"
    assert ok.claims["aud"] == "billing"
    fake_clock.advance(seconds=3600)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_call(server, "ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("s2s-reason", "exp") in tuple(err.value.trailing_metadata() or ())


async def test_x509_source_sees_rotation(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    first = authority.issue_x509_svid("spiffe://example.org/web")
    provider.put("web", [ME], first)
    source = await asyncio.to_thread(X509Source, socket_path=uri(server), timeout_in_seconds=10)
    try:
        assert source.get_x509_context().default_svid.leaf.serial_number == first.serial
        rotated = threading.Event()
        source.subscribe_for_updates(rotated.set)
        second = authority.issue_x509_svid("spiffe://example.org/web")
        provider.put("web", [ME], second)
        await wait_for(rotated, "the X509Source to see the rotation")
        assert source.get_x509_context().default_svid.leaf.serial_number == second.serial
    finally:
        await asyncio.to_thread(source.close)


async def test_jwt_source_fetches_svid(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))

    def run() -> str:
        source = JwtSource(socket_path=uri(server), timeout_in_seconds=10)
        try:
            return str(source.fetch_svid({"orders"}).spiffe_id)
        finally:
            source.close()

    assert await asyncio.to_thread(run) == "spiffe://example.org/web"


# -- callers of another uid (subprocesses) ------------------------------------------------------

WORKLOAD = r"""
import json, os, sys, grpc
from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError
path, mode = sys.argv[1], sys.argv[2]
client = WorkloadApiClient(socket_path="unix://" + path, default_timeout=10)
def fetch():
    try:
        return {"ids": [str(s.spiffe_id) for s in client.fetch_x509_svids()]}
    except PySpiffeError as exc:
        return {"code": exc.__cause__.code().name, "details": exc.__cause__.details()}
out = {}
if mode == "late-setuid":
    out["before"] = fetch()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
out["after"] = fetch()
print(json.dumps(out))
"""


async def run_workload(server: WorkloadApiServer, mode: str = "setuid") -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKLOAD,
        server.socket_path,
        mode,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_other_uid_gets_its_own_identity(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("root", [ME], authority.issue_x509_svid("spiffe://example.org/root"))
    provider.put(
        "nobody", [f"unix:uid:{NOBODY}"], authority.issue_x509_svid("spiffe://example.org/nobody")
    )
    result = await run_workload(server)
    assert result["after"] == {"ids": ["spiffe://example.org/nobody"]}


async def test_other_uid_without_entry_is_denied(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("root", [ME], authority.issue_x509_svid("spiffe://example.org/root"))
    result = await run_workload(server)
    assert result["after"]["code"] == "PERMISSION_DENIED"


async def test_caller_that_changes_uid_after_connecting_fails_attestation(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("root", [ME], authority.issue_x509_svid("spiffe://example.org/root"))
    provider.put(
        "nobody", [f"unix:uid:{NOBODY}"], authority.issue_x509_svid("spiffe://example.org/nobody")
    )
    result = await run_workload(server, "late-setuid")
    assert result["before"] == {"ids": ["spiffe://example.org/root"]}
    # Same connection, now uid 65534: neither root's identity nor nobody's.
    assert result["after"]["code"] == "UNAVAILABLE"
    assert "changed its uid or gid after connecting" in result["after"]["details"]


# -- protocol rules (raw gRPC) ----------------------------------------------------------------


async def raw_call(
    server: WorkloadApiServer,
    method: str,
    request: Any,
    response_type: Any,
    metadata: tuple[tuple[str, str], ...] = HEADER,
    *,
    stream: bool = False,
) -> Any:
    """One raw Workload API call: the answer, or with ``stream`` the stream's first message."""
    async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as channel:
        path = f"/SpiffeWorkloadAPI/{method}"
        codec: dict[str, Any] = {
            "request_serializer": lambda m: m.SerializeToString(),
            "response_deserializer": response_type.FromString,
        }
        if not stream:
            call = channel.unary_unary(path, **codec)
            return await call(request, metadata=metadata, timeout=10)
        first = channel.unary_stream(path, **codec)(request, metadata=metadata, timeout=10)
        try:
            return await first.read()
        finally:
            first.cancel()


async def raw_first(*args: Any, **kwargs: Any) -> Any:
    """The first message of a stream (arguments as :func:`raw_call`)."""
    return await raw_call(*args, stream=True, **kwargs)


@pytest.mark.parametrize(
    "metadata",
    [(), (("workload.spiffe.io", "false"),), (("workload.spiffe.io", "True"),)],
    ids=["missing", "false", "wrong-case"],
)
async def test_security_header_required(
    server: WorkloadApiServer,
    provider: StaticIdentityProvider,
    authority: TestAuthority,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    ok = await raw_first(server, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
    assert [s.spiffe_id for s in ok.svids] == ["spiffe://example.org/web"]
    for method, req, resp in (
        ("FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse),
        ("FetchJWTBundles", pb.JWTBundlesRequest(), pb.JWTBundlesResponse),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_first(server, method, req, resp, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = pb.JWTSVIDRequest(audience=["a"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_call(server, "FetchJWTSVID", request, pb.JWTSVIDResponse, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_fetch_jwt_svid_arguments(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    provider.put("api", [ME], authority.issue_x509_svid("spiffe://example.org/api"))
    both = await raw_call(
        server, "FetchJWTSVID", pb.JWTSVIDRequest(audience=["a"]), pb.JWTSVIDResponse
    )
    assert [s.spiffe_id for s in both.svids] == [
        "spiffe://example.org/web",
        "spiffe://example.org/api",
    ]
    named = pb.JWTSVIDRequest(audience=["a", "b"], spiffe_id="spiffe://example.org/api")
    one = await raw_call(server, "FetchJWTSVID", named, pb.JWTSVIDResponse)
    assert [s.spiffe_id for s in one.svids] == ["spiffe://example.org/api"]
    for request, code in (
        (pb.JWTSVIDRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.JWTSVIDRequest(audience=[""]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.JWTSVIDRequest(audience=["a"], spiffe_id="not-an-id"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.JWTSVIDRequest(audience=["a"], spiffe_id="spiffe://example.org/db"),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_call(server, "FetchJWTSVID", request, pb.JWTSVIDResponse)
        assert err.value.code() == code, request


async def test_validate_requires_arguments(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    for request in (pb.ValidateJWTSVIDRequest(svid="x"), pb.ValidateJWTSVIDRequest(audience="a")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_call(server, "ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["FetchWITSVID", "FetchWITBundles"])
async def test_wit_calls_unimplemented(server: WorkloadApiServer, method: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_first(server, method, pb.WITSVIDRequest(), pb.WITSVIDResponse)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_no_identity_is_permission_denied_everywhere(server: WorkloadApiServer) -> None:
    for method, req, resp in (
        ("FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse),
        ("FetchX509Bundles", pb.X509BundlesRequest(), pb.X509BundlesResponse),
        ("FetchJWTBundles", pb.JWTBundlesRequest(), pb.JWTBundlesResponse),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_first(server, method, req, resp)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method


async def test_attestation_failure_is_unavailable(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path, tmp_path: Path
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    # A /proc without our process: the peer cannot be attested.
    async with WorkloadApiServer(
        provider=provider,
        attestor=UnixAttestor(proc_root=str(tmp_path)),
        socket_path=str(socket_dir / "agent.sock"),
        proc_root=str(tmp_path),
    ) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_first(srv, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "workload attestation failed" in (err.value.details() or "")


# -- streams ----------------------------------------------------------------------------------


async def open_stream(channel: grpc.aio.Channel, method: str, response_type: Any) -> Any:
    return channel.unary_stream(
        f"/SpiffeWorkloadAPI/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_type.FromString,
    )(pb.X509SVIDRequest(), metadata=HEADER, timeout=30)


async def test_deleting_identity_updates_open_stream(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    provider.put("api", [ME], authority.issue_x509_svid("spiffe://example.org/api"))
    async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as channel:
        call = await open_stream(channel, "FetchX509SVID", pb.X509SVIDResponse)
        first = await call.read()
        assert len(first.svids) == 2
        provider.remove("web")
        second = await call.read()
        assert [s.spiffe_id for s in second.svids] == ["spiffe://example.org/api"]
        provider.remove("api")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bundle_stream_skips_identical_messages(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    other = TestAuthority("other.org")
    async with grpc.aio.insecure_channel(f"unix:{server.socket_path}") as channel:
        call = await open_stream(channel, "FetchJWTBundles", pb.JWTBundlesResponse)
        first = await call.read()
        assert list(first.bundles) == ["spiffe://example.org"]
        # A change that leaves the bundles alone, then one that adds a trust domain: the next
        # message must be the second (the first would have repeated the bundles unchanged).
        provider.put("x", ["unix:uid:4242"], authority.issue_x509_svid("spiffe://example.org/x"))
        provider.set_bundles(provider.bundles().with_bundle(other.bundle()))
        second = await call.read()
        assert sorted(second.bundles) == ["spiffe://example.org", "spiffe://other.org"]


async def test_x509_stream_carries_federated_bundles_and_crls(
    server: WorkloadApiServer, provider: StaticIdentityProvider, authority: TestAuthority
) -> None:
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    other = TestAuthority("other.org")
    provider.set_bundles(BundleSet.of(authority.bundle(), other.bundle()))
    provider.set_crls([b"crl-1"])
    got = await raw_first(server, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
    assert list(got.crl) == [b"crl-1"]
    assert list(got.federated_bundles) == ["spiffe://other.org"]
    assert got.svids[0].bundle == authority.bundle().x509_der()


# -- the socket -------------------------------------------------------------------------------


async def test_socket_mode_and_cleanup(server: WorkloadApiServer) -> None:
    mode = os.stat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o777
    await server.stop()
    assert not os.path.exists(server.socket_path)


async def test_bad_socket_paths(provider: StaticIdentityProvider, socket_dir: Path) -> None:
    regular = socket_dir / "file.sock"
    regular.write_text("not a socket")
    for path, message in (
        (regular, "not a socket"),
        (socket_dir / "missing" / "agent.sock", "does not exist"),
        (Path("relative.sock"), "absolute"),
    ):
        srv = WorkloadApiServer(provider=provider, attestor=UnixAttestor(), socket_path=str(path))
        with pytest.raises(InvalidConfig, match=message):
            await srv.start()
    assert regular.read_text() == "not a socket"
    shared = socket_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    srv = WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(shared / "agent.sock")
    )
    with pytest.raises(InvalidConfig, match="writable by others"):
        await srv.start()


async def test_second_server_on_same_socket_is_refused(
    server: WorkloadApiServer, provider: StaticIdentityProvider
) -> None:
    twin = WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=server.socket_path
    )
    with pytest.raises(InvalidConfig, match="already serving"):
        await twin.start()


async def test_stale_socket_is_replaced(
    provider: StaticIdentityProvider, authority: TestAuthority, socket_dir: Path
) -> None:
    path = socket_dir / "agent.sock"
    stale = socketlib.socket(socketlib.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # leaves the file with nobody listening
    provider.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    async with WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(path)
    ) as srv:
        got = await raw_first(srv, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
    assert len(got.svids) == 1


class BrokenProvider(StaticIdentityProvider):
    """A provider with a bug: its error text must not reach the workload."""

    def bundles(self) -> BundleSet:
        raise RuntimeError("secret internal detail")


async def test_provider_bug_is_internal_without_details(
    authority: TestAuthority, fake_clock: FakeClock, socket_dir: Path
) -> None:
    seen: list[tuple[str, str]] = []
    broken = BrokenProvider(clock=fake_clock)
    broken.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    async with WorkloadApiServer(
        provider=broken,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        observe=lambda method, code: seen.append((method, code)),
    ) as srv:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_first(srv, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
        request = pb.JWTSVIDRequest(audience=["a"])
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await raw_call(srv, "FetchJWTSVID", request, pb.JWTSVIDResponse)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")
    assert denied.value.code() == grpc.StatusCode.UNAVAILABLE  # no JWT signer configured
    assert seen == [("FetchX509SVID", "INTERNAL"), ("FetchJWTSVID", "UNAVAILABLE")]


async def _never_admit(pid: int, uid: int, gid: int) -> Any:
    raise AssertionError("no connection was accepted")


def test_proxy_fails_closed_for_unknown_peers(socket_dir: Path) -> None:
    proxy = PeerTaggingProxy(
        str(socket_dir / "agent.sock"), str(socket_dir / "inner.sock"), admit=_never_admit
    )
    for peer in ("unix:", "unix-abstract:s2s-wl-unknown", "ipv4:127.0.0.1:5", ""):
        with pytest.raises(AttestationFailed):
            proxy.credentials(peer)


class StalledJwtProvider(StaticIdentityProvider):
    """A provider whose JWT minting never finishes (a CA that does not answer)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.minting = asyncio.Event()

    async def fetch_jwt_svid(self, spiffe_id: Any, audience: tuple[str, ...]) -> str:
        self.minting.set()
        await asyncio.Event().wait()  # until the call is cancelled
        raise AssertionError("unreachable")


async def test_cancelled_calls_are_observed_as_cancelled(
    authority: TestAuthority, fake_clock: FakeClock, socket_dir: Path
) -> None:
    seen: list[tuple[str, str]] = []
    stalled = StalledJwtProvider(bundles=BundleSet.of(authority.bundle()), clock=fake_clock)
    stalled.put("web", [ME], authority.issue_x509_svid("spiffe://example.org/web"))
    async with WorkloadApiServer(
        provider=stalled,
        attestor=UnixAttestor(),
        socket_path=str(socket_dir / "agent.sock"),
        observe=lambda method, code: seen.append((method, code)),
    ) as srv:
        # Twin: a unary call that completes is OK.
        token = authority.issue_jwt_svid("spiffe://example.org/web", "a")
        request = pb.ValidateJWTSVIDRequest(audience="a", svid=token)
        await raw_call(srv, "ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
        # A stream the client cancels after its first message.
        await raw_first(srv, "FetchX509SVID", pb.X509SVIDRequest(), pb.X509SVIDResponse)
        async with grpc.aio.insecure_channel(f"unix:{srv.socket_path}") as channel:
            fetch = channel.unary_unary(
                "/SpiffeWorkloadAPI/FetchJWTSVID",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.JWTSVIDResponse.FromString,
            )
            call = fetch(pb.JWTSVIDRequest(audience=["a"]), metadata=HEADER, timeout=10)
            await asyncio.wait_for(stalled.minting.wait(), 10)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(seen) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.02)
    assert sorted(seen) == [
        ("FetchJWTSVID", "CANCELLED"),
        ("FetchX509SVID", "CANCELLED"),
        ("ValidateJWTSVID", "OK"),
    ]


class SilentCa:
    """A CA never asked for revocations: a feed over it never syncs (it cannot say what is
    revoked), as a feed whose CA has been unreachable past the staleness limit."""

    async def fetch_revocations(self, *, since: int, wait: float) -> Any:
        raise AssertionError("not called")


def validating_with(revocations: Any, clock: FakeClock) -> Any:
    """A provider validator that consults ``revocations``, as the agent's cache does."""

    def validate(token: str, audience: str, bundles: BundleSet) -> Any:
        checked = JwtValidator(bundles, audience, revocations=revocations, clock=clock)
        result = checked.validate(token)
        return result.spiffe_id, result.claims.claims

    return validate


async def test_revoked_token_is_invalid_argument_and_stale_revocations_unavailable(
    authority: TestAuthority, fake_clock: FakeClock, socket_dir: Path
) -> None:
    now = fake_clock.now()
    record = RevocationRecord.for_jti("gone", revoked_at=now, expires_at=now + timedelta(hours=1))
    revoked = StaticRevocations(RevocationSet.of([record]))
    stale = CaRevocationFeed(SilentCa(), clock=fake_clock)
    svid = authority.issue_x509_svid("spiffe://example.org/web")
    codes: dict[str, tuple[Any, tuple[Any, ...]]] = {}
    for name, lookup, jti in [("ok", revoked, "kept"), ("revoked", revoked, "gone"),
                              ("stale", stale, "kept")]:  # fmt: skip
        provider = StaticIdentityProvider(
            bundles=BundleSet.of(authority.bundle()),
            validator=validating_with(lookup, fake_clock),
            clock=fake_clock,
        )
        provider.put("web", [ME], svid)
        token = authority.issue_jwt_svid("spiffe://example.org/web", "a", jti=jti)
        request = pb.ValidateJWTSVIDRequest(audience="a", svid=token)
        async with WorkloadApiServer(
            provider=provider, attestor=UnixAttestor(), socket_path=str(socket_dir / "a.sock")
        ) as srv:
            try:
                answer = await raw_call(srv, "ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
                codes[name] = (grpc.StatusCode.OK, (answer.spiffe_id,))
            except grpc.aio.AioRpcError as exc:
                codes[name] = (exc.code(), tuple(exc.trailing_metadata() or ()))
    assert codes["ok"] == (grpc.StatusCode.OK, ("spiffe://example.org/web",))
    assert codes["revoked"][0] == grpc.StatusCode.INVALID_ARGUMENT  # as SPIRE: do not retry
    assert ("s2s-reason", "revoked") in codes["revoked"][1]
    assert codes["stale"][0] == grpc.StatusCode.UNAVAILABLE  # the agent's fault: retry
    assert ("s2s-reason", "revocations-stale") in codes["stale"][1]
