"""A real CA and a real agent on real sockets, driven by the official ``spiffe`` client (blocking,
called through ``asyncio.to_thread``), our asyncio client, raw gRPC and the ``s2s-agent`` CLI.

Rotation is seen within the test by registering entries with short X509-SVID TTLs (6 s): the
agent renews at half of the lifetime it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import spiffe
from click.testing import CliRunner

from s2s.agent.app import Agent, AgentTuning, run_agent
from s2s.cli.agent import cli
from s2s.core.errors import InvalidConfig, NotAuthorized, Unavailable
from s2s.verifier.workload_client import WorkloadApiClient

MY_UID = f"unix:uid:{os.getuid()}"
SHORT = timedelta(seconds=6)
PRODUCTION_WAIT = AgentTuning(  # the harness's tuning with the default entries long-poll (30 s)
    entries_wait=30.0,
    bundle_interval=5.0,
    backoff_initial=0.05,
    backoff_cap=0.5,
    health_interval=0.1,
    first_sync_timeout=5.0,
)


def spiffe_socket(config: Any) -> str:
    return f"unix://{config.socket}"


@pytest.fixture
def quiet_grpc() -> Iterator[None]:
    logger = logging.getLogger("spiffe")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def tampered(token: str) -> str:
    """The token with one character in the middle of its signature changed. Every such character
    carries six bits of the signature, so the decoded signature differs for certain; the last
    four characters, set to 'AAAA', left it as it was once in 2**20 (they carry 20 bits)."""
    head, body, sig = token.split(".")
    i = len(sig) // 2
    return f"{head}.{body}.{sig[:i]}{'B' if sig[i] == 'A' else 'A'}{sig[i + 1 :]}"


async def attested(harness: Any, *, ttl: timedelta | None = None, **kw: Any) -> tuple[Any, Any]:
    """An agent with one entry for this process's uid, ready and serving."""
    token, agent_id = await harness.ca.join_token()
    entry = await harness.ca.entry(agent_id, "/billing", [MY_UID], ttl=ttl)
    config = harness.config(token=token, **kw)
    running = await harness.start_agent(config)
    return running, entry


# ---- the official client ------------------------------------------------------------------


async def test_spiffe_client_fetches_svids_bundles_and_jwts(harness: Any) -> None:
    running, _ = await attested(harness)
    socket = spiffe_socket(running.agent.config)

    def use_official_client() -> dict[str, Any]:
        client = spiffe.WorkloadApiClient(socket_path=socket, default_timeout=10)
        try:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
            jwt_svid = client.fetch_jwt_svid(audience={"payments"})
            validated = client.validate_jwt_svid(jwt_svid.token, "payments")
            jwt_bundles = client.fetch_jwt_bundles()
            rejected = []
            for token, audience in (
                (jwt_svid.token, "someone-else"),
                (tampered(jwt_svid.token), "payments"),
            ):
                try:
                    client.validate_jwt_svid(token, audience)
                except Exception as exc:  # the spiffe client raises its own error types
                    rejected.append(type(exc).__name__)
            return {
                "id": str(svid.spiffe_id),
                "chain": len(svid.cert_chain),
                "bundle_tds": sorted(str(b.trust_domain) for b in bundles.bundles),
                "jwt_id": str(jwt_svid.spiffe_id),
                "validated": str(validated.spiffe_id),
                "jwt_kids": len(jwt_bundles.bundles),
                "rejected": rejected,
            }
        finally:
            client.close()

    result = await asyncio.to_thread(use_official_client)
    assert result["id"] == "spiffe://example.org/billing"
    assert result["chain"] == 2  # leaf + intermediate
    assert result["bundle_tds"] == ["example.org"]
    assert result["jwt_id"] == result["validated"] == "spiffe://example.org/billing"
    assert result["jwt_kids"] == 1
    assert len(result["rejected"]) == 2  # wrong audience, tampered signature


async def test_jwt_svids_are_cached_per_id_and_audience_set(harness: Any) -> None:
    running, _ = await attested(harness)
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        first = await client.fetch_jwt_svid(["a", "b"])
        again = await client.fetch_jwt_svid(["b", "a"])
        other = await client.fetch_jwt_svid(["a"])
    assert first.token == again.token
    assert other.token != first.token
    assert other.audience == ("a",)


async def test_x509_source_sees_a_rotation(harness: Any, quiet_grpc: None) -> None:
    running, _ = await attested(harness, ttl=SHORT)
    socket = spiffe_socket(running.agent.config)

    def watch_rotation() -> tuple[int, int, float]:
        source = spiffe.X509Source(socket_path=socket, timeout_in_seconds=10)
        try:
            first = source.get_x509_context().default_svid.leaf.serial_number
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                current = source.get_x509_context().default_svid.leaf.serial_number
                if current != first:
                    return first, current, time.monotonic()
                time.sleep(0.05)
            raise AssertionError("X509Source saw no rotation within 15 s")
        finally:
            source.close()

    first, second, _ = await asyncio.to_thread(watch_rotation)
    assert first != second
    assert running.agent.metrics.rotations.labels(kind="x509")._value.get() >= 2


async def test_rotation_latency_to_a_connected_stream(harness: Any) -> None:
    running, _ = await attested(harness, ttl=SHORT)
    cache = running.agent.cache
    stored: dict[int, float] = {}

    async def record_cache_changes() -> None:
        version = cache.version
        while True:
            version = await cache.wait_for_update(version)
            svid = cache.state.items[0].svid
            if svid is not None:
                stored.setdefault(svid.serial, time.monotonic())

    recorder = asyncio.create_task(record_cache_changes())
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        stream = client.watch_x509_context()
        first = await anext(stream)
        update = await asyncio.wait_for(anext(stream), 10)
        arrived = time.monotonic()
        await stream.aclose()
    recorder.cancel()
    assert update.default_svid.serial != first.default_svid.serial
    # The stream got the new SVID well within a second of the cache storing it.
    assert arrived - stored[update.default_svid.serial] < 1.0


# ---- faults: CA down, restart, deleted entries ---------------------------------------------


async def test_ca_down_svids_served_until_expiry_then_unhealthy(harness: Any) -> None:
    running, _ = await attested(harness, ttl=SHORT)
    agent: Agent = running.agent
    socket = str(agent.config.socket)
    await harness.ca.stop()
    async with WorkloadApiClient(socket) as client:
        held = (await client.fetch_x509_context()).default_svid  # still served
    assert held.not_after > agent.clock.now()
    assert agent.cache.health()[0]
    # Once it expires it is withdrawn (never served expired) and the agent reports unhealthy.
    await harness.wait_until(
        lambda: not agent.cache.svids_for(frozenset()) and not agent.cache.health()[0],
        timeout=15,
        what="the SVID to expire and the cache to report it",
    )
    assert agent.clock.now() >= held.not_after
    async with WorkloadApiClient(socket) as client:
        with pytest.raises(NotAuthorized):
            await client.fetch_x509_context()
    await harness.wait_until(lambda: agent.metrics.healthy._value.get() == 0, what="gauge")
    assert not running.task.done()  # still running, still retrying the CA
    errors = agent.metrics.ca_errors.labels(op="x509", code="unavailable")._value.get()
    assert errors >= 1


async def test_restarted_agent_keeps_its_identity_without_a_token(harness: Any) -> None:
    running, _ = await attested(harness)
    agent_id = running.agent.node.identity.svid.spiffe_id
    await running.shutdown()
    again = await harness.start_agent(harness.config(token=None))
    assert again.agent.node.identity.svid.spiffe_id == agent_id
    assert again.agent.node.attestations == 0
    async with WorkloadApiClient(str(again.agent.config.socket)) as client:
        context = await client.fetch_x509_context()
    assert str(context.default_svid.spiffe_id) == "spiffe://example.org/billing"


async def test_entry_changes_wake_the_held_poll_and_reach_the_stream(harness: Any) -> None:
    # The production long-poll length (the harness's is 2 s): a change that failed to wake the
    # held poll would come only when the poll ends, up to 30 s later (2 s: half the time within
    # a 1 s bound), so the bound can leave a loaded machine room (0.02-0.4 s seen here).
    token, agent_id = await harness.ca.join_token()
    billing = await harness.ca.entry(agent_id, "/billing", [MY_UID])
    running = await harness.start_agent(harness.config(token=token), tuning=PRODUCTION_WAIT)
    agent_id = running.agent.node.identity.svid.spiffe_id
    registry = harness.ca.server.registry
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        stream = client.watch_x509_context()
        first = await anext(stream)
        assert [str(s.spiffe_id) for s in first.svids] == ["spiffe://example.org/billing"]
        start = time.monotonic()
        await harness.ca.entry(agent_id, "/audit", [MY_UID])
        added = await asyncio.wait_for(anext(stream), 5)
        added_after = time.monotonic() - start
        start = time.monotonic()
        await registry.delete_entry(billing.id)
        removed = await asyncio.wait_for(anext(stream), 5)
        removed_after = time.monotonic() - start
        await stream.aclose()
    assert sorted(str(s.spiffe_id) for s in added.svids) == [
        "spiffe://example.org/audit",
        "spiffe://example.org/billing",
    ]
    assert [str(s.spiffe_id) for s in removed.svids] == ["spiffe://example.org/audit"]
    assert added_after < 2.0, added_after
    assert removed_after < 2.0, removed_after


async def test_ca_down_at_start_is_retried_with_backoff(
    harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID])
    config = harness.config(token=token)  # writes the bootstrap bundle while the CA is up
    await harness.ca.stop()
    caplog.set_level(logging.WARNING, logger="s2s.agent.node")
    running = await harness.start_agent(config, wait_ready=False)

    def retries() -> int:
        return sum(1 for r in caplog.records if r.getMessage() == "agent.ca_unavailable")

    await harness.wait_until(lambda: retries() >= 3, what="three failed attestation attempts")
    assert not running.task.done()
    await harness.ca.start()
    await asyncio.wait_for(running.agent.ready.wait(), 15)
    assert running.agent.node.identity.svid.spiffe_id == agent_id


async def test_reused_join_token_exits_with_a_clear_error(harness: Any) -> None:
    running, _ = await attested(harness)
    used = running.agent.config.join_token
    config = harness.config(token=None, data_dir=harness.tmp_path / "second")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from s2s.cli.agent import main; main()", "run",
        "--trust-domain", "example.org", "--ca-url", harness.ca.url,
        "--trust-bundle", str(config.trust_bundle), "--data-dir", str(config.data_dir),
        "--socket", str(harness.socket_dir / "second.sock"), "--log-format", "text",
        env={**os.environ, "S2S_AGENT_JOIN_TOKEN": used or ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 6, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: the CA refused the join token")
    assert "Traceback" not in stderr.decode()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["run", "--trust-domain", "example.org", "--ca-url", "http://ca:1", "--data-dir", "d"],
        env={"S2S_AGENT_CONFIG": ""},
    )
    assert result.exit_code == 1
    error = "error: ca_urls (from flag --ca-url): 'http://ca:1' must be an https:// URL"
    assert error in result.output
    toml = tmp_path / "agent.toml"
    toml.write_text('trust_domain = "example.org"\ncolour = "blue"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(toml)])
    assert result.exit_code == 1
    assert "unknown setting 'colour'" in result.output


async def test_socket_path_that_is_a_regular_file_is_refused(harness: Any) -> None:
    token, _ = await harness.ca.join_token()
    path = harness.socket_dir / "not-a-socket"
    path.write_text("keep me")
    agent = Agent(harness.config(token=token, socket=path))
    with pytest.raises(InvalidConfig, match="not a socket"):
        await run_agent(agent, asyncio.Event())
    assert path.read_text() == "keep me"
    # Twin: a socket in a directory that does not exist.
    missing = harness.socket_dir / "no-such-dir" / "agent.sock"
    agent = Agent(harness.config(token=None, socket=missing))
    with pytest.raises(InvalidConfig, match="director"):
        await run_agent(agent, asyncio.Event())


# ---- callers: other uids, raw gRPC, CLI, metrics -------------------------------------------

WORKLOAD = """
import os, sys, spiffe
uid = int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
client = spiffe.WorkloadApiClient(socket_path=sys.argv[1], default_timeout=10)
try:
    print(client.fetch_x509_svid().spiffe_id)
except Exception as exc:
    print("error", type(exc).__name__, exc)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run workloads under other uids")
async def test_each_uid_gets_its_own_identity_and_none_without_entry(harness: Any) -> None:
    running, _ = await attested(harness)
    agent_id = running.agent.node.identity.svid.spiffe_id
    await harness.ca.entry(agent_id, "/nobody", ["unix:uid:65534"])
    cache = running.agent.cache
    await harness.wait_until(
        lambda: len(cache.state.items) == 2 and cache.health()[0], what="second SVID"
    )

    async def as_uid(uid: int) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKLOAD, spiffe_socket(running.agent.config), str(uid),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode().strip() or err.decode()

    assert await as_uid(65534) == "spiffe://example.org/nobody"
    assert await as_uid(0) == "spiffe://example.org/billing"
    denied = await as_uid(65533)
    assert denied.startswith("error"), denied
    assert "PERMISSION_DENIED" in denied or "no identity" in denied


async def test_raw_grpc_without_the_security_header_is_invalid_argument(harness: Any) -> None:
    running, _ = await attested(harness)
    from s2s.workload_proto import workload_pb2 as pb  # noqa: PLC0415

    async with grpc.aio.insecure_channel(f"unix:{running.agent.config.socket}") as channel:
        call = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.X509SVIDResponse.FromString,
        )(pb.X509SVIDRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cli_api_commands(harness: Any, tmp_path: Path) -> None:
    running, _ = await attested(harness)
    socket = str(running.agent.config.socket)
    runner = CliRunner()

    async def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        return await asyncio.to_thread(runner.invoke, cli, list(args), env=env)

    out = tmp_path / "out"
    fetched = await invoke("api", "fetch", "x509", "--socket", socket, "--write", str(out))
    assert fetched.exit_code == 0, fetched.output
    assert "spiffe://example.org/billing" in fetched.output
    assert (out / "svid.0.key").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN CERTIFICATE" in (out / "bundle.pem").read_bytes()
    env = {"SPIFFE_ENDPOINT_SOCKET": f"unix://{socket}"}
    jwt_out = await invoke("api", "fetch", "jwt", "--audience", "x", "--json", env=env)
    assert jwt_out.exit_code == 0, jwt_out.output
    token = json.loads(jwt_out.output)[0]["token"]
    ok = await invoke("api", "validate", "jwt", "--audience", "x", "--token", token, env=env)
    assert ok.exit_code == 0
    assert "valid: spiffe://example.org/billing" in ok.output
    bad = await invoke("api", "validate", "jwt", "--audience", "y", "--token", token, env=env)
    assert bad.exit_code == 6
    assert "error:" in bad.output
    watched = await invoke("api", "watch", "--count", "1", "--socket", socket)
    assert watched.exit_code == 0
    assert "update 1: 1 SVID(s)" in watched.output
    health = await invoke("healthcheck", "--socket", socket)
    assert health.exit_code == 0
    assert "serving" in health.output
    await running.shutdown()
    down = await invoke("healthcheck", "--socket", socket)
    assert down.exit_code == 3
    assert "error:" in down.output


async def test_metrics_endpoint(harness: Any) -> None:
    running, _ = await attested(harness, metrics_listen=("127.0.0.1", 0))
    agent: Agent = running.agent
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        await client.fetch_jwt_svid("metrics")
    base = f"http://127.0.0.1:{agent.metrics_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/metrics") as response:
            text = await response.text()
        async with session.get(base + "/readyz") as response:
            ready = response.status
    assert "s2s_agent_svids_held 1.0" in text
    assert 's2s_agent_workload_api_calls_total{code="OK",method="FetchJWTSVID"} 1.0' in text
    assert 's2s_agent_rotations_total{kind="jwt"} 1.0' in text
    assert ready == 200


async def test_entry_updates_relabel_or_reissue(harness: Any) -> None:
    running, billing = await attested(harness)
    cache = running.agent.cache
    registry = harness.ca.server.registry
    held = cache.state.items[0].svid
    assert held is not None
    # Only the hint changes: same SVID (same serial), new hint.
    await registry.update_entry(billing.id, hint="primary")
    await harness.wait_until(
        lambda: (
            cache.state.items[0].svid is not None and cache.state.items[0].svid.hint == "primary"
        ),
        what="the hint to reach the cache",
    )
    assert cache.state.items[0].svid.serial == held.serial
    # The SPIFFE ID changes: the old SVID is withdrawn and a new one issued.
    await registry.update_entry(billing.id, spiffe_id=harness.ca.td.id("/billing-v2"))
    await harness.wait_until(
        lambda: (
            cache.state.items[0].svid is not None
            and str(cache.state.items[0].svid.spiffe_id) == "spiffe://example.org/billing-v2"
        ),
        what="the re-issued SVID",
    )
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        context = await client.fetch_x509_context()
    assert [str(s.spiffe_id) for s in context.svids] == ["spiffe://example.org/billing-v2"]
    assert context.default_svid.hint == "primary"


async def test_s2s_agent_run_serves_and_stops_cleanly_on_sigterm(harness: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID])
    config = harness.config(token=token)
    toml = harness.tmp_path / "agent.toml"
    toml.write_text(
        f'trust_domain = "example.org"\nca_url = ["{harness.ca.url}"]\n'
        f'trust_bundle = "{config.trust_bundle}"\ndata_dir = "{config.data_dir}"\n'
        f'socket = "{config.socket}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "s2s.cli.agent", "run", "--config", str(toml),
        env={**os.environ, "S2S_AGENT_JOIN_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await harness.wait_until(config.socket.exists, timeout=20, what="the agent socket")
        async with WorkloadApiClient(str(config.socket)) as client:
            context = await client.fetch_x509_context()
        assert str(context.default_svid.spiffe_id) == "spiffe://example.org/billing"
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    events = [json.loads(line)["event"] for line in stderr.decode().splitlines()]
    assert events[-1] == "agent.stopped"
    assert "agent.attested" in events
    assert not config.socket.exists()
    assert token not in stderr.decode()  # the join token is never logged


async def test_jwt_svids_outlive_a_ca_outage_until_they_expire(harness: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID], jwt_svid_ttl=timedelta(seconds=3))
    running = await harness.start_agent(harness.config(token=token))
    socket = str(running.agent.config.socket)
    async with WorkloadApiClient(socket) as client:
        first = await client.fetch_jwt_svid("api")
        assert (await client.fetch_jwt_svid("api")).token == first.token  # cached
        await harness.ca.stop()
        # Past half-life the agent would renew, but the CA is down: the token it holds is
        # still valid, so it is served rather than an error.
        half = first.expiry - timedelta(seconds=1.5)
        await harness.wait_until(lambda: running.agent.clock.now() > half, what="half-life")
        assert (await client.fetch_jwt_svid("api")).token == first.token
        await harness.wait_until(
            lambda: running.agent.clock.now() > first.expiry, what="the token to expire"
        )
        with pytest.raises(Unavailable):
            await client.fetch_jwt_svid("api")


async def test_bundle_changes_reach_streams_and_the_data_dir(harness: Any) -> None:
    running, _ = await attested(harness)
    agent: Agent = running.agent
    authority = harness.ca.server.authority
    before = authority.bundle
    td = harness.ca.td
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        stream = client.watch_jwt_bundles()
        first = await anext(stream)
        keys = len(first.get(td).jwt_authorities)
        # Half a JWT key lifetime later the CA prepares the next key: it joins the bundle.
        assert await authority.rotate_if_due(agent.clock.now() + timedelta(hours=13))
        assert authority.bundle.sequence > before.sequence
        # The next issuance answer carries the new sequence; the agent fetches the bundle.
        await harness.ca.entry(agent.node.identity.svid.spiffe_id, "/trigger", [MY_UID])
        update = await asyncio.wait_for(anext(stream), 5)
        await stream.aclose()
    assert len(update.get(td).jwt_authorities) == keys + 1
    assert agent.node.identity.bundle.encode() == authority.bundle.encode()
    stored = (agent.config.data_dir / "bundle.json").read_bytes()
    assert stored == authority.bundle.encode()  # a restart verifies the CA with this one


async def test_agent_fails_over_to_another_ca_replica(harness: Any) -> None:
    second = await harness.replica("ca-1")  # same store, its own intermediate
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID], ttl=SHORT)
    config = harness.config(token=token, ca_urls=(harness.ca.url, second.url))
    running = await harness.start_agent(config)
    agent: Agent = running.agent
    await harness.ca.stop()
    # Rotation goes on through the second replica (its own intermediate signs the SVID).
    first = agent.cache.state.items[0].svid
    await harness.wait_until(
        lambda: (
            (svid := agent.cache.state.items[0].svid) is not None and svid.serial != first.serial
        ),
        what="a renewal through the second replica",
    )
    renewed = agent.cache.state.items[0].svid
    assert renewed.cert_chain[1] != first.cert_chain[1]
    assert (await agent.node.renew()).svid.spiffe_id == agent_id
