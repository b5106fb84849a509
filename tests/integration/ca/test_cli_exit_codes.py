"""Exit codes in each CLI's ``--help``, and errors as JSON on stderr with ``--json`` (usage
errors included), against a real CA and the real programs (``python -m``, as the console scripts
run them)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_admin_cli import TD, Served, s2s_ca, serve

from s2s.cli.ca_rotation import EXIT_WAITING
from s2s.cli.exits import EXIT_CODES, EXIT_NOT_A_CA, EXIT_TRUST_DOMAIN_MISMATCH

PROGRAMS = {"s2s-ca": "s2s.cli.ca", "s2s-agent": "s2s.cli.agent"}


def run(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", PROGRAMS[prog], *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SPIFFE_ENDPOINT_SOCKET": "unix:///nonexistent/agent.sock"},
    )  # fmt: skip


def error_json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    doc = json.loads(lines[0])
    assert list(doc) == ["error", "message", "code"], doc
    assert doc["code"] == done.returncode
    assert isinstance(doc["message"], str)
    assert doc["message"]
    return doc


def documented_codes(help_text: str) -> set[int]:
    table = help_text[help_text.index("Exit codes:") :]
    return {int(line.split()[0]) for line in table.splitlines() if line.strip()[:1].isdigit()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("exits") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    running = serve(data_dir)
    yield running
    assert running.stop() == 0


# ---- --help ---------------------------------------------------------------------------------


def test_ca_help_lists_every_exit_code_the_ca_cli_uses() -> None:
    done = run("s2s-ca", "--help")
    assert done.returncode == 0
    agent_only = {EXIT_TRUST_DOMAIN_MISMATCH, EXIT_NOT_A_CA}  # from s2s-agent run only
    used = {0, EXIT_WAITING} | (set(EXIT_CODES.values()) - agent_only)
    assert documented_codes(done.stdout) == used
    assert '{"error": <code above>, "message": <text>, "code": <exit code>}' in done.stdout


def test_agent_help_lists_every_exit_code_the_agent_cli_uses() -> None:
    done = run("s2s-agent", "--help")
    assert done.returncode == 0
    assert documented_codes(done.stdout) == {0, 1, 2, 3, 6, 7, 8, 9}
    assert "s2s-ca bundle show" in done.stdout  # the fix for 7


# ---- errors as JSON -------------------------------------------------------------------------


def test_not_found_is_json_on_stderr_with_json(served: Served) -> None:
    done = s2s_ca(served.data_dir, "entry", "show", "nope", "--json", check=4)
    assert done.stdout == ""
    doc = error_json(done)
    assert doc["error"] == "not_found"


def test_not_found_is_text_without_json(served: Served) -> None:
    done = s2s_ca(served.data_dir, "entry", "show", "nope", check=4)
    assert done.stderr.startswith("error: ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.stderr)


def test_invalid_input_from_the_ca_is_json(served: Served) -> None:
    done = s2s_ca(
        served.data_dir, "entry", "create", "--spiffe-id", "spiffe://example.org/x",
        "--parent-id", "spiffe://example.org/p", "--selector", "unix:uid:01", "--json", check=2,
    )  # fmt: skip
    assert error_json(done)["error"] == "invalid_selector"


@pytest.mark.parametrize(
    ("prog", "args"),
    [
        ("s2s-ca", ["--data-dir", "/nonexistent", "entry", "list", "--bogus", "--json"]),
        ("s2s-ca", ["--data-dir", "/nonexistent", "token", "generate", "--ttl", "5x", "--json"]),
        ("s2s-ca", ["entry", "list", "--json"]),  # no --data-dir, no --socket
        ("s2s-agent", ["api", "fetch", "jwt", "--json"]),  # --audience missing
    ],
)
def test_usage_errors_are_json_with_json(prog: str, args: list[str]) -> None:
    done = run(prog, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert error_json(done)["error"] == "usage_error"


@pytest.mark.parametrize(
    ("prog", "args"),
    [
        ("s2s-ca", ["--data-dir", "/nonexistent", "entry", "list", "--bogus"]),
        ("s2s-agent", ["api", "fetch", "jwt"]),
    ],
)
def test_usage_errors_are_text_without_json(prog: str, args: list[str]) -> None:
    done = run(prog, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Usage:" in done.stderr
    assert not done.stderr.lstrip().startswith("{")


def test_json_after_double_dash_is_an_argument_not_the_option() -> None:
    done = run("s2s-ca", "--data-dir", "/nonexistent", "entry", "show", "--", "--json")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ")


def test_an_agent_that_is_not_there_is_json_exit_3(tmp_path: Path) -> None:
    done = run("s2s-agent", "api", "fetch", "jwt", "--audience", "x", "--json")
    assert done.returncode == 3
    doc = error_json(done)
    assert doc["error"] == "unavailable"
    assert "/nonexistent/agent.sock" in str(doc["message"])
    text = run("s2s-agent", "api", "fetch", "jwt", "--audience", "x")
    assert text.returncode == 3
    assert text.stderr.startswith("error: ")


def test_ca_not_running_is_json_exit_3(tmp_path: Path) -> None:
    done = run("s2s-ca", "--data-dir", str(tmp_path), "agent", "list", "--json")
    assert done.returncode == 3
    assert error_json(done)["error"] == "unavailable"
