"""The agent's /metrics: process and build metrics, the renamed expiry gauges, the workload SVID
that expires first, the revocation feed's age; the agent's own healthcheck (gRPC health on the
Workload API socket) is never counted as a Workload API call, while a real workload without an
identity still is (PERMISSION_DENIED)."""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import version
from typing import Any

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from s2s.cli.agent import cli
from s2s.core.errors import NotAuthorized
from s2s.verifier.workload_client import WorkloadApiClient
from s2s.workload_proto import health_pb2 as hpb

MY_UID = f"unix:uid:{os.getuid()}"
OTHER_UID = f"unix:uid:{os.getuid() + 4242}"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def start(harness: Any, uid: str) -> Any:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [uid])
    config = harness.config(token=token, metrics_listen=("127.0.0.1", 0))
    return await harness.start_agent(config)


async def scrape(agent: Any) -> Samples:
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP text"
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: Samples, name: str, **labels: str) -> float | None:
    return m.get(name, {}).get(tuple(sorted(labels.items())))


async def healthcheck(socket: str) -> Any:
    return await asyncio.to_thread(CliRunner().invoke, cli, ["healthcheck", "--socket", socket])


async def test_process_build_expiry_and_feed_metrics(harness: Any) -> None:
    running = await start(harness, MY_UID)
    agent = running.agent
    await harness.wait_until(lambda: agent.cache.health()[0], what="the workload SVID")
    m = await scrape(agent)
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"):
        assert value(m, name) is not None, name
    assert m["python_info"]
    assert value(m, "s2s_agent_build_info", version=version("s2s")) == 1
    svid = agent.node.identity.svid
    assert value(m, "s2s_agent_svid_not_after_timestamp_seconds") == svid.not_after.timestamp()
    assert "s2s_agent_svid_not_after_seconds" not in m
    held = [i.svid.not_after.timestamp() for i in agent.cache.state.items if i.svid is not None]
    earliest = value(m, "s2s_agent_workload_svid_earliest_not_after_timestamp_seconds")
    assert held
    assert earliest == min(held)
    age = value(m, "s2s_verifier_revocations_age_seconds", feed="agent")
    assert age is not None
    assert 0 <= age < 60


async def test_healthcheck_is_not_a_permission_denied_workload_call(harness: Any) -> None:
    running = await start(harness, OTHER_UID)  # this process has no identity here
    socket = str(running.agent.config.socket)
    result = await healthcheck(socket)
    assert result.exit_code == 0, result.output
    assert "the agent is serving" in result.output
    m = await scrape(running.agent)
    calls = m.get("s2s_agent_workload_api_calls_total", {})
    assert not [k for k in calls if ("code", "PERMISSION_DENIED") in k], calls
    assert value(m, "s2s_agent_health_checks_total", status="SERVING") == 1


async def test_a_workload_without_identity_is_still_counted_permission_denied(harness: Any) -> None:
    running = await start(harness, OTHER_UID)
    async with WorkloadApiClient(str(running.agent.config.socket)) as client:
        with pytest.raises(NotAuthorized):
            await client.fetch_x509_bundles()
    m = await scrape(running.agent)
    key = (("code", "PERMISSION_DENIED"), ("method", "FetchX509Bundles"))
    assert m["s2s_agent_workload_api_calls_total"][key] == 1
    assert value(m, "s2s_agent_health_checks_total", status="SERVING") is None


async def test_health_protocol_without_header_and_unknown_service(harness: Any) -> None:
    running = await start(harness, OTHER_UID)
    target = f"unix:{running.agent.config.socket}"
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=hpb.HealthCheckRequest.SerializeToString,
            response_deserializer=hpb.HealthCheckResponse.FromString,
        )
        answer = await check(hpb.HealthCheckRequest(service=""), timeout=5)  # no security header
        assert answer.status == hpb.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(hpb.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    m = await scrape(running.agent)
    assert value(m, "s2s_agent_health_checks_total", status="NOT_FOUND") == 1
    assert "s2s_agent_workload_api_calls_total" not in m


async def test_healthcheck_fails_when_the_agent_is_gone(harness: Any) -> None:
    running = await start(harness, OTHER_UID)
    socket = str(running.agent.config.socket)
    await running.shutdown()
    result = await healthcheck(socket)
    assert result.exit_code == 3
    assert "error:" in result.output
