"""The CA's /metrics: process and build metrics, admin calls apart from HTTPS API calls, join-token
attestations, CRL age per issuer, the root rotation phase, store latency; every family has HELP."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from pathlib import Path

import pytest
from ca_harness import RunningCa, csr_pem, new_key, start_ca, stop_ca
from prometheus_client.parser import text_string_to_metric_families

from s2s.ca.store_config import StoreSettings
from s2s.cli.ca import main
from s2s.core.errors import NotFound, Unavailable
from s2s.testing_etcd import EtcdServer


async def scrape(ca: RunningCa) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from the CA's /metrics."""
    status, text = await ca.public("GET", "/metrics")
    assert status == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP text"
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float | None:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())))


async def test_process_platform_and_build_info(ca: RunningCa) -> None:
    m = await scrape(ca)
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total",
                 "process_start_time_seconds"):  # fmt: skip
        assert value(m, name) is not None, name
    assert m["python_info"]
    assert value(m, "s2s_ca_build_info", version=version("s2s")) == 1
    assert "s2s_agent_build_info" not in m


async def test_admin_calls_are_counted_apart_from_api_calls(ca: RunningCa) -> None:
    admin_bundle = (("error", ""), ("route", "/v1/bundle"), ("status", "200"))
    before = (await scrape(ca)).get("s2s_ca_admin_requests_total", {}).get(admin_bundle, 0)
    await ca.admin_call("GET", "/v1/entries")
    await ca.public("GET", "/v1/bundle")
    m = await scrape(ca)
    admin = m["s2s_ca_admin_requests_total"]
    assert admin[(("error", ""), ("route", "/v1/entries"), ("status", "200"))] == 1
    assert admin.get(admin_bundle, 0) == before  # the HTTPS call is not an admin call
    api = m["s2s_ca_http_requests_total"]
    assert all(dict(k)["route"] != "/v1/entries" for k in api), api
    assert api[(("route", "/v1/bundle"), ("status", "200"))] == 1


async def test_refused_admin_calls_are_counted_with_their_error(ca: RunningCa) -> None:
    with pytest.raises(NotFound):
        await ca.admin_call("GET", "/v1/entries/no-such-entry")
    m = await scrape(ca)
    key = (("error", "not_found"), ("route", "/v1/entries/{id}"), ("status", "404"))
    assert m["s2s_ca_admin_requests_total"][key] == 1
    assert value(m, "s2s_ca_request_errors_total", reason="not_found") is None


async def test_join_token_attestations_by_result(ca: RunningCa) -> None:
    await ca.attest()
    bad = {"join_token": "not-a-token", "csr": csr_pem(new_key())}
    status, _ = await ca.public("POST", "/v1/agent/attest", json=bad)
    assert status in (401, 403)
    m = await scrape(ca)
    assert value(m, "s2s_ca_agent_attestations_total", result="ok") == 1
    assert value(m, "s2s_ca_agent_attestations_total", result="attestation_failed") == 1


async def test_crl_age_and_next_update_per_issuer(ca: RunningCa) -> None:
    m = await scrape(ca)
    ages = m["s2s_ca_crl_age_seconds"]
    issuers = {dict(k)["issuer"] for k in ages}
    assert issuers == {c.authority_id for c in ca.server.crls.current.crls}
    assert issuers
    now = ca.server.clock.now().timestamp()
    for key, age in ages.items():
        assert 0 <= age < 3600, age
        assert m["s2s_ca_crl_next_update_timestamp_seconds"][key] > now


async def test_root_rotation_phase(ca: RunningCa) -> None:
    await ca.server.refresh_gauges()
    m = await scrape(ca)
    assert value(m, "s2s_ca_root_rotation_phase", phase="idle") == 1
    assert value(m, "s2s_ca_root_rotation_phase", phase="prepared") == 0
    assert value(m, "s2s_ca_root_rotation_phase_start_timestamp_seconds") == 0
    assert (value(m, "s2s_ca_root_rotation_hold_seconds") or 0) > 0
    await ca.admin_call("POST", "/v1/root-rotation/step", {"new": True})
    await ca.server.refresh_gauges()
    m = await scrape(ca)
    assert value(m, "s2s_ca_root_rotation_phase", phase="idle") == 0
    assert value(m, "s2s_ca_root_rotation_phase", phase="prepared") == 1
    started = value(m, "s2s_ca_root_rotation_phase_start_timestamp_seconds") or 0
    assert abs(started - ca.server.clock.now().timestamp()) < 60


async def test_store_latency_per_operation_and_renamed_expiry_gauge(ca: RunningCa) -> None:
    await ca.server.refresh_gauges()
    m = await scrape(ca)
    counts = m["s2s_ca_store_operation_seconds_count"]
    operations = {dict(k)["operation"] for k in counts}
    assert {"list_authorities", "get_state"} <= operations, operations
    assert {dict(k)["backend"] for k in counts} == {"sqlite"}
    assert "s2s_ca_store_errors_total" not in m  # nothing failed
    assert m["s2s_ca_authority_not_after_timestamp_seconds"]
    assert "s2s_ca_authority_not_after_seconds" not in m


async def test_etcd_store_latency_and_errors_are_counted(tmp_path: Path) -> None:
    """On etcd: calls are timed under backend="etcd"; with etcd stopped, failures are counted
    (what the S2sStoreErrors alert watches); after a restart the CA's calls succeed again."""
    with EtcdServer(tmp_path / "etcd") as etcd:
        td = "metrics.example.org"
        argv = ["--data-dir", str(tmp_path / "ca"), "init", "--trust-domain", td,
                "--store", f"{etcd.url}/{td}"]  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
        settings = StoreSettings(url=etcd.url, trust_domain=td)
        server, task, stop = await start_ca(tmp_path / "ca", store=settings)
        try:
            await server.refresh_gauges()
            registry = server.metrics.registry
            timed = {"backend": "etcd", "operation": "list_authorities"}
            assert (
                registry.get_sample_value("s2s_ca_store_operation_seconds_count", timed) or 0
            ) > 0
            failed = {**timed, "code": "store_error"}
            assert registry.get_sample_value("s2s_ca_store_errors_total", failed) is None
            etcd.stop()
            with pytest.raises(Unavailable):
                await server.refresh_gauges()
            errors = [
                s for f in registry.collect() for s in f.samples
                if s.name == "s2s_ca_store_errors_total" and s.labels["backend"] == "etcd"
            ]  # fmt: skip
            assert "list_authorities" in {s.labels["operation"] for s in errors}, errors
            assert {s.labels["code"] for s in errors} <= {"store_error", "unavailable"}
            etcd.start()
            await server.refresh_gauges()
        finally:
            await stop_ca(server, task, stop)
