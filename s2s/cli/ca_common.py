"""What every ``s2s-ca`` command shares: the context that finds the running CA, the ``--json``
option, error handling (exit codes from :mod:`s2s.cli.exits`), tables and durations."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from s2s import version_info
from s2s.ca.client import ADMIN_SOCKET_NAME, AdminClient
from s2s.cli.exits import fail
from s2s.cli.program_dirs import refuse_other_programs_dir
from s2s.core.errors import S2SError

__all__ = [
    "DURATION",
    "DATA_DIR_ENV",
    "LEGACY_ENV_VARS",
    "SOCKET_ENV",
    "Ctx",
    "call",
    "emit_json",
    "json_option",
    "key_values",
    "pass_ctx",
    "refuse_legacy_variables",
    "source_of",
    "table",
    "version_option",
]


class Ctx:
    """What the group options found: where the running CA is."""

    def __init__(
        self,
        data_dir: Path | None,
        socket_path: Path | None,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path
        # "data_dir"/"socket" -> "flag --data-dir", "env S2S_CA_DATA_DIR" (absent: not given)
        self.sources = dict(sources or {})

    def client(self) -> AdminClient:
        if self.socket_path is not None:
            return AdminClient(self.socket_path)
        data_dir = self.data_dir
        if data_dir is None:
            raise click.UsageError(
                f"say where the CA is: --data-dir DIR (or {DATA_DIR_ENV}) or --socket "
                f"(or {SOCKET_ENV})"
            )
        call(lambda: refuse_other_programs_dir(data_dir, program="ca"))
        return AdminClient(data_dir / ADMIN_SOCKET_NAME)

    def require_data_dir(self) -> Path:
        data_dir = self.data_dir
        if data_dir is None:
            raise click.UsageError(f"--data-dir DIR (or {DATA_DIR_ENV}) is required")
        call(lambda: refuse_other_programs_dir(data_dir, program="ca"))
        return data_dir


ENV_PREFIX = "S2S_CA_"
DATA_DIR_ENV = ENV_PREFIX + "DATA_DIR"
SOCKET_ENV = ENV_PREFIX + "SOCKET"
# What s2s-ca read before it had its own prefix (shared with s2s-agent): refused, not ignored.
LEGACY_ENV_VARS = {"S2S_DATA_DIR": DATA_DIR_ENV}


def refuse_legacy_variables(environ: Mapping[str, str]) -> None:
    """Exit 2 (a usage error) when an old shared variable is set, naming the new one."""
    found = [old for old in LEGACY_ENV_VARS if environ.get(old, "") != ""]
    if found:
        renames = ", ".join(f"{old} -> {LEGACY_ENV_VARS[old]}" for old in found)
        raise click.UsageError(
            f"{', '.join(found)} is set, but s2s-ca reads only its own {ENV_PREFIX}* variables "
            f"(the old name was shared with s2s-agent, which could pick up the CA's data "
            f"directory): rename {renames} (the agent's is S2S_AGENT_DATA_DIR) and unset the "
            "old name"
        )


def source_of(ctx: click.Context, name: str) -> str | None:
    """Where a click parameter's value came from: ``flag --x``, ``env VAR`` or None (default
    or not given)."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    source = ctx.get_parameter_source(name)
    if param is None or source is None:
        return None
    if source is click.core.ParameterSource.COMMANDLINE:
        return f"flag {param.opts[0]}"
    if source is click.core.ParameterSource.ENVIRONMENT:
        return f"env {param.envvar}"
    return None


pass_ctx = click.make_pass_decorator(Ctx)


def version_line(prog: str) -> str:
    """``s2s-ca 0.1.0 (Python 3.11.2, OpenSSL 3.0.11 ..., cryptography 41.0.7)``."""
    info = version_info()
    return (
        f"{prog} {info['s2s']} (Python {info['python']}, {info['openssl']}, "
        f"cryptography {info['cryptography']})"
    )


def version_option(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--version``: print :func:`version_line` and exit 0 before anything else is parsed."""

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(prog))
            ctx.exit(0)

    return click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Print the s2s version (with Python's and OpenSSL's) and exit.",
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def call(fn: Callable[[], Any]) -> Any:
    """Run one admin call; an ``S2SError`` becomes a message and an exit code."""
    try:
        return fn()
    except S2SError as exc:
        fail(exc)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """A plain aligned table for people."""
    cells = [[str(h).upper() for h in headers]] + [
        ["" if v is None else str(v) for v in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def key_values(record: dict[str, Any]) -> None:
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        click.echo(f"{key.ljust(width)}  {'' if shown is None else shown}")


def parse_duration(text: str) -> int:
    """``300``, ``300s``, ``5m``, ``1h`` -> seconds (positive)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 300, 90s, 5m or 1h")
    return int(number) * units[unit]


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        return value if isinstance(value, int) else parse_duration(str(value))


DURATION = Duration()
