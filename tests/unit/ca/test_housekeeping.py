"""Housekeeping: the jobs run only while the leadership holds (checked before every job), the
gauge and the log follow the holder, the embedded store's sole replica always holds, and the
``[housekeeping]`` table of the config file is parsed with clear errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from s2s.ca.housekeeping import Housekeeping, HousekeepingSettings, SoleReplica
from s2s.cli.ca_process import load_config_file
from s2s.core.errors import InvalidConfig, Unavailable


class Switch:
    """A leadership the test turns on and off."""

    def __init__(self, holds: bool) -> None:
        self.on = holds
        self.resigned = False

    def holds(self) -> bool:
        return self.on

    async def run(self, on_change: Callable[[bool, str | None], None]) -> None:
        on_change(self.on, "ca-x")

    async def resign(self) -> None:
        self.resigned = True


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def _housekeeping(leadership: Switch | SoleReplica, jobs: dict[str, object]) -> tuple[
    Housekeeping, CollectorRegistry
]:  # fmt: skip
    registry = CollectorRegistry()
    hk = Housekeeping(
        leadership=leadership, replica="ca-0", jobs=jobs,  # type: ignore[arg-type]
        interval=60, registry=registry,
    )  # fmt: skip
    return hk, registry


async def test_jobs_run_only_while_the_lease_is_held() -> None:
    ran: list[str] = []
    switch = Switch(holds=True)

    async def prune() -> None:
        ran.append("prune")
        switch.on = False  # lost between two jobs: the next one must not run

    async def other() -> None:
        ran.append("other")

    hk, registry = _housekeeping(switch, {"prune": prune, "other": other})
    await hk.run_once()
    assert ran == ["prune"]
    assert _value(registry, "s2s_ca_housekeeping_runs_total", job="prune") == 1
    assert _value(registry, "s2s_ca_housekeeping_runs_total", job="other") == 0
    await hk.run_once()  # twin: a follower runs nothing
    assert ran == ["prune"]
    switch.on = True
    await hk.run_once()
    assert ran == ["prune", "prune"]


async def test_a_job_meeting_an_unavailable_store_is_retried() -> None:
    calls = 0

    async def prune() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unavailable("etcd busy")

    hk, registry = _housekeeping(Switch(holds=True), {"prune": prune})
    await hk.run_once()
    assert calls == 2
    assert _value(registry, "s2s_ca_housekeeping_runs_total", job="prune") == 1


async def test_gauge_and_log_follow_the_holder(caplog: pytest.LogCaptureFixture) -> None:
    switch = Switch(holds=False)
    hk, registry = _housekeeping(switch, {})
    caplog.set_level(logging.INFO, logger="s2s.ca.housekeeping")
    await hk.follow_lease()
    assert _value(registry, "s2s_ca_housekeeping_leader") == 0
    assert [(r.getMessage(), r.__dict__["leader"]) for r in caplog.records] == [
        ("ca.housekeeping.follower", "ca-x")
    ]
    switch.on = True
    caplog.clear()
    await hk.follow_lease()
    assert _value(registry, "s2s_ca_housekeeping_leader") == 1
    assert caplog.records[0].getMessage() == "ca.housekeeping.elected"
    await hk.resign()
    assert switch.resigned
    assert _value(registry, "s2s_ca_housekeeping_leader") == 0


async def test_the_sole_replica_always_holds() -> None:
    sole = SoleReplica("ca-0")
    hk, registry = _housekeeping(sole, {})
    task = asyncio.create_task(hk.follow_lease())
    try:
        while registry.get_sample_value("s2s_ca_housekeeping_leader") != 1:
            await asyncio.sleep(0.01)
        assert hk.holds()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('lease = "5s"\ninterval = "2m"', HousekeepingSettings(lease_ttl=5, interval=120)),
        ('lease = "30"', HousekeepingSettings(lease_ttl=30)),
        ("", HousekeepingSettings()),
    ],
)
def test_config_table(tmp_path: Path, table: str, expected: HousekeepingSettings) -> None:
    path = tmp_path / "ca.toml"
    path.write_text(f"[housekeeping]\n{table}\n")
    doc, _ = load_config_file(path)
    assert doc["housekeeping"] == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('lease = "1s"', "housekeeping.lease must be from 2 s"),
        ('lease = "2h"', "housekeeping.lease must be from 2 s"),
        ('lease = "soon"', "housekeeping.lease: 'soon' is not a duration"),
        ('interval = "0"', "housekeeping.interval: '0' is not a duration"),
        ('interval = "2d"', "housekeeping.interval must be above 0"),
        ('leader = "ca-0"', "unknown setting(s) housekeeping.leader"),
    ],
)
def test_config_table_refuses_bad_values(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "ca.toml"
    path.write_text(f"[housekeeping]\n{table}\n")
    with pytest.raises(InvalidConfig, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config_file(path)


def test_a_housekeeping_value_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text('housekeeping = "on"\n')
    with pytest.raises(InvalidConfig, match=r"\[housekeeping\] must be a table"):
        load_config_file(path)
