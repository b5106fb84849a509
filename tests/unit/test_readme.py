"""The README's command lines name commands and flags that exist (a typo there is a bug)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from s2s.cli.agent import cli as agent_cli
from s2s.cli.ca import cli as ca_cli

README = Path(__file__).resolve().parents[2] / "README.md"
CLIS = {"s2s-ca": ca_cli, "s2s-agent": agent_cli}


def _command_lines() -> list[list[str]]:
    text = README.read_text()
    lines: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("#", 1)[0].strip()
            words = shlex.split(line.replace("<", "").replace(">", "")) if line else []
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words and words[0] in CLIS:
                lines.append(words)
    return lines


LINES = _command_lines()


def test_the_readme_has_command_lines() -> None:
    assert len(LINES) >= 15


@pytest.mark.parametrize("words", LINES, ids=[" ".join(w[:4]) for w in LINES])
def test_readme_commands_and_flags_exist(words: list[str]) -> None:
    group: click.Command = CLIS[words[0]]
    ctx_words: list[str] = []
    args = words[1:]
    # walk the sub-commands; the group's own options (e.g. --data-dir DIR) may come first
    while isinstance(group, click.Group):
        while args and args[0].startswith("-"):
            flag = args.pop(0)
            opt = _option(group, flag)
            if not opt.is_flag and "=" not in flag:
                args.pop(0)
        if not args:
            break
        name = args.pop(0)
        sub = group.get_command(click.Context(group), name)
        assert sub is not None, f"{' '.join(words)}: no command {name!r}"
        ctx_words.append(name)
        group = sub
    for word in args:
        if word.startswith("-"):
            _option(group, word)
    result = CliRunner().invoke(CLIS[words[0]], [*ctx_words, "--help"])
    assert result.exit_code == 0, result.output


def _option(command: click.Command, flag: str) -> click.Option:
    name = flag.split("=", 1)[0]
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    if name in ("-h", "--help"):
        return click.Option(["--help"], is_flag=True)
    raise AssertionError(f"{command.name}: no option {name!r}")


def test_data_dir_works_before_or_after_the_command(tmp_path: Path) -> None:
    runner = CliRunner(env={"S2S_CA_DATA_DIR": None})
    after = runner.invoke(
        ca_cli, ["init", "--trust-domain", "example.org", "--data-dir", str(tmp_path / "a")]
    )
    assert after.exit_code == 0, after.output
    before = runner.invoke(
        ca_cli, ["--data-dir", str(tmp_path / "b"), "init", "--trust-domain", "example.org"]
    )
    assert before.exit_code == 0, before.output
    assert (tmp_path / "a" / "kek.bin").exists()
    assert (tmp_path / "b" / "kek.bin").exists()
    # twin: nowhere to put it
    missing = runner.invoke(ca_cli, ["init", "--trust-domain", "example.org"])
    assert missing.exit_code != 0
    assert "--data-dir" in missing.output
