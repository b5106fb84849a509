"""The agent's own variables (``S2S_AGENT_*``): the old names it shared with the CA CLI are
refused with the new name, and every setting remembers where it came from (for the start-up
log), the join token only as set/unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.agent.config import (
    CONFIG_ENV,
    ENV_VARS,
    LEGACY_ENV_VARS,
    legacy_variables_message,
    load_config,
)
from s2s.core.errors import InvalidConfig

REQUIRED = {
    "S2S_AGENT_TRUST_DOMAIN": "example.org",
    "S2S_AGENT_CA_URL": "https://ca:8443",
    "S2S_AGENT_DATA_DIR": "/var/lib/s2s-agent",
}


def test_every_variable_is_the_agents_own() -> None:
    assert all(var.startswith("S2S_AGENT_") for var in ENV_VARS.values())
    assert CONFIG_ENV == "S2S_AGENT_CONFIG"
    assert ENV_VARS["data_dir"] == "S2S_AGENT_DATA_DIR"
    assert ENV_VARS["join_token"] == "S2S_AGENT_JOIN_TOKEN"
    assert ENV_VARS["workload_idle_timeout"] == "S2S_AGENT_WORKLOAD_IDLE_TIMEOUT"
    assert ENV_VARS["attestors"] == "S2S_AGENT_ATTESTORS"
    assert ENV_VARS["ca_urls"] == "S2S_AGENT_CA_URL"
    # no variable is one the CA CLI reads
    assert not any(var.startswith("S2S_CA_") for var in ENV_VARS.values())


def test_the_new_variables_are_read() -> None:
    config = load_config(environ=REQUIRED)
    assert config.data_dir == Path("/var/lib/s2s-agent")


@pytest.mark.parametrize("old", sorted(LEGACY_ENV_VARS))
def test_each_old_shared_variable_is_refused_with_its_new_name(old: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        load_config(environ={**REQUIRED, old: "/var/lib/s2s-ca"})
    assert old in str(info.value)
    assert f"{old} -> {LEGACY_ENV_VARS[old]}" in str(info.value)


def test_the_old_data_dir_is_refused_even_beside_the_new_one() -> None:
    message = legacy_variables_message({**REQUIRED, "S2S_DATA_DIR": "/var/lib/s2s-ca"})
    assert message is not None
    assert "S2S_DATA_DIR -> S2S_AGENT_DATA_DIR" in message


def test_an_empty_old_variable_is_unset() -> None:
    assert legacy_variables_message({"S2S_DATA_DIR": ""}) is None
    assert load_config(environ={**REQUIRED, "S2S_DATA_DIR": ""}).data_dir.name == "s2s-agent"


def test_only_the_names_asked_for_are_checked() -> None:
    env = {"S2S_DATA_DIR": "/x"}
    assert legacy_variables_message(env, ["S2S_SOCKET"]) is None
    assert legacy_variables_message({"S2S_SOCKET": "/s"}, ["S2S_SOCKET"]) is not None


def test_each_setting_names_its_source(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('log_level = "debug"\nsocket = "/run/file/agent.sock"\n')
    config = load_config(
        flags={"trust_domain": "example.org", "log_level": "warning"},
        environ={**REQUIRED, "S2S_AGENT_TRUST_DOMAIN": "env.org", "S2S_AGENT_JOIN_TOKEN": "tok3n"},
        config_file=toml,
    )
    rows = {name: (value, source) for name, value, source in config.settings()}
    assert set(rows) == set(ENV_VARS)
    assert rows["trust_domain"] == ("example.org", "flag --trust-domain")
    assert rows["log_level"] == ("WARNING", "flag --log-level")  # flag beats the file
    assert rows["data_dir"] == ("/var/lib/s2s-agent", "env S2S_AGENT_DATA_DIR")
    assert rows["socket"] == ("/run/file/agent.sock", f"file {toml}")
    assert rows["workload_idle_timeout"] == ("300s", "default")
    assert rows["join_token"] == ("set", "env S2S_AGENT_JOIN_TOKEN")
    assert "tok3n" not in repr(config.settings())


def test_an_absent_join_token_is_unset() -> None:
    rows = {name: value for name, value, _ in load_config(environ=REQUIRED).settings()}
    assert rows["join_token"] == "unset"
