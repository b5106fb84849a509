"""``s2s-agent healthcheck`` and the ``api`` commands find the agent with no flag, as the README
writes them: ``--socket``, else ``SPIFFE_ENDPOINT_SOCKET``, else the socket ``run`` serves (its
socket variable, then its default ``/run/s2s/agent.sock``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from test_agent_end_to_end import attested

from s2s.agent.config import DEFAULT_SOCKET, ENV_VARS
from s2s.cli.agent import agent_endpoint, cli
from s2s.core.errors import InvalidConfig

SOCKET_ENV = ENV_VARS["socket"]


def test_the_default_is_the_socket_run_serves() -> None:
    assert agent_endpoint(None, {}) == str(DEFAULT_SOCKET) == "/run/s2s/agent.sock"
    assert agent_endpoint(None, {SOCKET_ENV: "/srv/a.sock"}) == "/srv/a.sock"


def test_spiffe_endpoint_socket_and_the_flag_come_first() -> None:
    env = {SOCKET_ENV: "/srv/a.sock", "SPIFFE_ENDPOINT_SOCKET": "unix:///srv/b.sock"}
    assert agent_endpoint(None, env) == "/srv/b.sock"
    assert agent_endpoint("/srv/c.sock", env) == "/srv/c.sock"
    assert agent_endpoint("unix:///srv/d.sock", {}) == "/srv/d.sock"


def test_the_socket_of_the_agents_config_file_comes_after_its_variable(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('trust_domain = "example.org"\nsocket = "/srv/file/agent.sock"\n')
    assert agent_endpoint(None, {}, toml) == "/srv/file/agent.sock"
    assert agent_endpoint(None, {"S2S_AGENT_CONFIG": str(toml)}) == "/srv/file/agent.sock"
    assert agent_endpoint(None, {SOCKET_ENV: "/srv/a.sock"}, toml) == "/srv/a.sock"
    # twin: a file without socket is the default; a broken file is an error, not the default
    toml.write_text('trust_domain = "example.org"\n')
    assert agent_endpoint(None, {}, toml) == str(DEFAULT_SOCKET)
    toml.write_text("socket = \n")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        agent_endpoint(None, {}, toml)


def test_the_old_socket_variables_are_refused() -> None:
    for old in ("S2S_SOCKET", "S2S_CONFIG"):
        with pytest.raises(click.UsageError, match=f"{old} -> S2S_AGENT_"):
            agent_endpoint(None, {old: "/srv/x"})


def test_a_bad_spiffe_endpoint_socket_is_refused_not_skipped() -> None:
    with pytest.raises(InvalidConfig, match="must be a URI"):
        agent_endpoint(None, {"SPIFFE_ENDPOINT_SOCKET": "/srv/b.sock"})


async def test_healthcheck_with_no_flag_finds_the_agent_run_serves(harness: Any) -> None:
    running, _ = await attested(harness)
    socket = str(running.agent.config.socket)
    runner = CliRunner()

    async def invoke(*args: str, env: dict[str, str | None]) -> Any:
        return await asyncio.to_thread(runner.invoke, cli, list(args), env=env)

    # the agent was run with its socket setting from the environment: the client reads it too
    env: dict[str, str | None] = {"SPIFFE_ENDPOINT_SOCKET": None, SOCKET_ENV: socket}
    health = await invoke("healthcheck", env=env)
    assert health.exit_code == 0, health.output
    assert "serving" in health.output
    fetched = await invoke("api", "fetch", "x509", env=env)
    assert fetched.exit_code == 0, fetched.output
    assert "spiffe://example.org/billing" in fetched.output

    unset: dict[str, str | None] = {"SPIFFE_ENDPOINT_SOCKET": None, SOCKET_ENV: None}
    # nothing set: the default socket, named in the error when no agent is there
    if not DEFAULT_SOCKET.exists():
        missing = await invoke("healthcheck", env=unset)
        assert missing.exit_code == 3, missing.output
        assert str(DEFAULT_SOCKET) in missing.output

    # the socket named by the agent's config file (healthcheck --config)
    toml = harness.tmp_path / "hc.toml"
    toml.write_text(f'socket = "{socket}"\n')
    by_file = await invoke("healthcheck", "--config", str(toml), env=unset)
    assert by_file.exit_code == 0, by_file.output

    # a wrong SPIFFE_ENDPOINT_SOCKET wins over the agent's variable: exit 3, not a silent fallback
    wrong = {"SPIFFE_ENDPOINT_SOCKET": f"unix://{socket}.nope", SOCKET_ENV: socket}
    elsewhere = await invoke("healthcheck", env=wrong)
    assert elsewhere.exit_code == 3, elsewhere.output
