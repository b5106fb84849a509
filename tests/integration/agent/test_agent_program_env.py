"""``s2s-agent run`` reads its own ``S2S_AGENT_*`` variables: the old shared names are refused
(exit 2) with the new one, a CA's data directory is refused, and the start-up log names each
setting's source, the join token only as set/unset."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_agent_end_to_end import MY_UID

from s2s.ca.bootstrap import init_data_dir

RUN = [sys.executable, "-m", "s2s.cli.agent", "run"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2S_", "SPIFFE_"))}
    return {**env, **extra}


async def test_run_logs_each_setting_with_its_source(harness: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    await harness.ca.entry(agent_id, "/billing", [MY_UID])
    config = harness.config(token=token)
    toml = harness.tmp_path / "agent.toml"
    toml.write_text(
        f'trust_domain = "example.org"\nca_url = ["{harness.ca.url}"]\n'
        f'trust_bundle = "{config.trust_bundle}"\nlog_level = "debug"\n'
    )
    env = _clean_env(
        S2S_AGENT_JOIN_TOKEN=token,
        S2S_AGENT_DATA_DIR=str(config.data_dir),
        S2S_AGENT_LOG_LEVEL="info",  # beats the file's debug
    )
    proc = await asyncio.create_subprocess_exec(
        *RUN, "--config", str(toml), "--socket", str(config.socket), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await harness.wait_until(config.socket.exists, timeout=20, what="the agent socket")
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    text = stderr.decode()
    assert proc.returncode == 0, text[-2000:]
    settings = {}
    for line in text.splitlines():
        record = json.loads(line)
        if record["event"] == "agent.setting":
            settings[record["setting"]] = (record["value"], record["source"])
    assert settings["trust_domain"] == ("example.org", f"file {toml}")
    assert settings["data_dir"] == (str(config.data_dir), "env S2S_AGENT_DATA_DIR")
    assert settings["socket"] == (str(config.socket), "flag --socket")
    assert settings["log_level"] == ("INFO", "env S2S_AGENT_LOG_LEVEL")
    assert settings["workload_idle_timeout"] == ("300s", "default")
    assert settings["join_token"] == ("set", "env S2S_AGENT_JOIN_TOKEN")
    assert token not in text  # the join token is never logged


@pytest.mark.parametrize("old", ["S2S_DATA_DIR", "S2S_JOIN_TOKEN", "S2S_CA_URL", "S2S_CONFIG"])
def test_an_old_shared_variable_stops_run_with_the_new_name(tmp_path: Path, old: str) -> None:
    new = {"S2S_DATA_DIR": "S2S_AGENT_DATA_DIR", "S2S_JOIN_TOKEN": "S2S_AGENT_JOIN_TOKEN",
           "S2S_CA_URL": "S2S_AGENT_CA_URL", "S2S_CONFIG": "S2S_AGENT_CONFIG"}[old]  # fmt: skip
    done = subprocess.run(
        [*RUN, "--trust-domain", "example.org", "--ca-url", "https://127.0.0.1:1",
         "--data-dir", str(tmp_path / "agent"), "--socket", str(tmp_path / "agent.sock")],
        env=_clean_env(**{old: "/var/lib/s2s-ca"}),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{old} -> {new}" in done.stderr
    assert not (tmp_path / "agent").exists()  # refused before anything was created


def test_the_client_commands_refuse_the_old_socket_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s2s.cli.agent", "healthcheck"],
        env=_clean_env(S2S_SOCKET="/run/s2s/agent.sock"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "S2S_SOCKET -> S2S_AGENT_SOCKET" in done.stderr


def test_a_ca_data_dir_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init_data_dir(ca_dir, "example.org")
    before = sorted(p.name for p in ca_dir.iterdir())
    done = subprocess.run(
        [*RUN, "--trust-domain", "example.org", "--ca-url", "https://127.0.0.1:1",
         "--data-dir", str(ca_dir), "--socket", str(tmp_path / "agent.sock")],
        env=_clean_env(S2S_AGENT_JOIN_TOKEN="x" * 20),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"data dir {ca_dir} is an s2s CA's data directory" in done.stderr
    assert "S2S_AGENT_DATA_DIR" in done.stderr
    assert sorted(p.name for p in ca_dir.iterdir()) == before  # nothing of the agent's written
