"""Every metric the alert rules and the dashboard in deploy/monitoring use is really exported: by a
running CA (scraped over HTTPS) and agent (scraped on its metrics listener), exercised first, and
by the verifier library's metric classes; label names the rules and dashboard select on exist on
the series. The monitoring README describes every s2s metric they export."""

from __future__ import annotations

import json
import os
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from s2s.verifier.feeds import FeedMetrics
from s2s.verifier.jwt import JwtMetrics
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.workload_client import WorkloadApiClient

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
NAME = re.compile(r"\b((?:s2s|process|python)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b((?:s2s|process|python)_[a-z0-9_]+)\{([^}]*)\}")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
SCRAPE_LABELS = {"job", "instance", "le"}  # added by Prometheus, or the histogram's own


class Exported:
    """Sample names and, per sample name, the label names seen, from exposition texts."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.labels: dict[str, set[str]] = {}

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for suffix in SUFFIXES.get(family.type, ("",)):
                self.names.add(family.name + suffix)
            for sample in family.samples:
                self.names.add(sample.name)
                self.labels.setdefault(sample.name, set()).update(sample.labels)


def used_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "s2s-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "s2s-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    return exprs


async def fetch(url: str, ssl_context: ssl.SSLContext | bool = False) -> str:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ssl_context) as response:
        assert response.status == 200
        return await response.text()


async def exported_by_running_processes(harness: Any) -> Exported:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [f"unix:uid:{os.getuid()}"])
    await harness.ca.entry(agent_id, "/other", [f"unix:uid:{os.getuid() + 4242}"])
    running = await harness.start_agent(
        harness.config(token=token, metrics_listen=("127.0.0.1", 0))
    )
    agent = running.agent
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        await client.fetch_x509_context()
        await client.fetch_jwt_svid("monitoring")
        await client.check_health()
    await harness.wait_until(lambda: agent.cache.health()[0], what="the workload SVIDs")
    server = harness.ca.server
    await server.refresh_gauges()
    ctx = ssl.create_default_context(cadata=harness.ca.bundle_pem().decode())
    ctx.check_hostname = False
    out = Exported()
    out.add(await fetch(f"https://127.0.0.1:{server.port}/metrics", ctx))
    out.add(await fetch(f"http://127.0.0.1:{agent.metrics_port}/metrics"))
    registry = CollectorRegistry()
    PeerMetrics(registry).rejected("untrusted-root")
    JwtMetrics(registry).rejected("expired")
    FeedMetrics(registry)
    out.add(generate_latest(registry).decode())
    return out


async def test_every_metric_the_rules_and_dashboard_use_is_exported(harness: Any) -> None:
    exported = await exported_by_running_processes(harness)
    used = {m for e in used_expressions() for m in NAME.findall(e)}
    assert used, "no metric names found in deploy/monitoring"
    assert used - exported.names == set(), "used in deploy/monitoring but exported by nothing"
    for expr in used_expressions():
        for name, matchers in SELECTOR.findall(expr):
            wanted = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)) - SCRAPE_LABELS
            seen = exported.labels.get(name)
            if seen is not None:  # a family without samples yet has no labels to compare
                assert wanted <= seen, f"{name}{{{matchers}}}: labels {wanted - seen} do not exist"


async def test_the_readme_describes_every_exported_s2s_metric(harness: Any) -> None:
    exported = await exported_by_running_processes(harness)
    text = (MONITORING / "README.md").read_text()
    families = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in exported.names}
    missing = sorted(f for f in families if f.startswith("s2s_") and f"`{f}" not in text)
    assert missing == [], "not described in deploy/monitoring/README.md"


def test_a_name_nothing_exports_is_caught() -> None:
    """The twin: the check above would fail on a misspelt or renamed metric."""
    exported = Exported()
    exported.add(
        "# HELP s2s_agent_healthy h\n# TYPE s2s_agent_healthy gauge\ns2s_agent_healthy 1\n"
    )
    used = set(
        NAME.findall("s2s_agent_svid_not_after_seconds - time() < 600 and s2s_agent_healthy")
    )
    assert used - exported.names == {"s2s_agent_svid_not_after_seconds"}
