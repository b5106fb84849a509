"""``s2s-ca`` reads its own ``S2S_CA_*`` variables: the old ``S2S_DATA_DIR`` it shared with the
agent is refused (exit 2) with the new name, a data directory of an agent is refused, and
``serve`` logs each setting with its source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_admin_cli import TD, Served, s2s_ca, serve

CLI = [sys.executable, "-m", "s2s.cli.ca"]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("S2S_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, check=False,
        env={**clean, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("env") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    toml = data_dir.parent / "ca.toml"
    toml.write_text('log_level = "debug"\nname = "from-file"\n')
    os.environ["S2S_CA_NAME"] = "from-env"  # the env beats the file
    try:
        running = serve(data_dir, "--config", str(toml))
    finally:
        del os.environ["S2S_CA_NAME"]
    yield running
    assert running.stop() == 0


def test_s2s_ca_data_dir_and_s2s_ca_socket_are_read(served: Served) -> None:
    by_dir = run("entry", "list", "--json", env={"S2S_CA_DATA_DIR": str(served.data_dir)})
    assert by_dir.returncode == 0, by_dir.stderr
    assert json.loads(by_dir.stdout) == []
    socket = str(served.data_dir / "admin.sock")
    by_socket = run("entry", "list", "--json", env={"S2S_CA_SOCKET": socket})
    assert by_socket.returncode == 0, by_socket.stderr


def test_the_old_shared_data_dir_variable_is_refused_with_the_new_name(served: Served) -> None:
    done = run("entry", "list", env={"S2S_DATA_DIR": str(served.data_dir)})
    assert done.returncode == 2, done.stderr
    assert "S2S_DATA_DIR -> S2S_CA_DATA_DIR" in done.stderr
    assert done.stdout == ""
    # even beside the new one, and as JSON with --json
    both = {"S2S_DATA_DIR": "/var/lib/s2s-agent", "S2S_CA_DATA_DIR": str(served.data_dir)}
    as_json = run("entry", "list", "--json", env=both)
    assert as_json.returncode == 2
    error = json.loads(as_json.stderr)
    assert error["error"] == "usage_error"
    assert "S2S_CA_DATA_DIR" in error["message"]
    # an empty old variable is unset, as for every variable
    empty = run("entry", "list", env={"S2S_DATA_DIR": "", "S2S_CA_DATA_DIR": str(served.data_dir)})
    assert empty.returncode == 0, empty.stderr


def test_serve_logs_each_setting_and_its_source(served: Served) -> None:
    settings = {}
    for line in served.log.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "ca.setting":
            settings[record["setting"]] = (record["value"], record["source"])
    assert settings["data_dir"] == (str(served.data_dir), "flag --data-dir")
    assert settings["listen"] == ("127.0.0.1:0", "flag --listen")
    assert settings["name"] == ("from-env", "env S2S_CA_NAME")
    assert settings["log_level"] == ("DEBUG", f"file {served.data_dir.parent / 'ca.toml'}")
    assert settings["config"][1] == "flag --config"
    assert settings["log_format"] == ("json", "default")
    assert settings["store"][1] == "default"
    assert settings["etcd_lease_grace"] == ("", "default")  # SQLite: no lease grace


def _agent_data_dir(tmp_path: Path) -> Path:
    """A directory with an agent's files (as ``s2s-agent run`` leaves them)."""
    from s2s.agent.node import BUNDLE_FILE, IDENTITY_FILE  # noqa: PLC0415

    agent_dir = tmp_path / "agent"
    agent_dir.mkdir(mode=0o700)
    for name in (IDENTITY_FILE, BUNDLE_FILE):
        (agent_dir / name).write_text("")
    return agent_dir


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--trust-domain", TD],
        ["serve", "--listen", "127.0.0.1:0"],
        ["entry", "list"],
    ],
)
def test_an_agents_data_dir_is_refused(tmp_path: Path, args: list[str]) -> None:
    agent_dir = _agent_data_dir(tmp_path)
    done = run("--data-dir", str(agent_dir), *args, env={})
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"data dir {agent_dir} is an s2s agent's data directory" in done.stderr
    assert "S2S_CA_DATA_DIR" in done.stderr
    assert sorted(p.name for p in agent_dir.iterdir()) == ["agent_identity.pem", "bundle.json"]


def test_an_empty_directory_is_not_an_agents(tmp_path: Path) -> None:
    fresh = tmp_path / "ca"
    done = run("--data-dir", str(fresh), "init", "--trust-domain", TD, env={})
    assert done.returncode == 0, done.stderr
