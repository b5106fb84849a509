"""``s2s-ca``: create a trust domain, run the CA, and administer it over its admin socket.

Every command but ``init`` and ``serve`` talks to a running CA through the admin Unix socket found
by ``--socket`` or ``--data-dir`` (env ``S2S_CA_SOCKET``, ``S2S_CA_DATA_DIR``). People get
tables; ``--json`` gives machine-readable output, and errors as JSON on stderr. Exit codes:
``s2s.cli.exits`` (shown by ``s2s-ca --help``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click

from s2s.cli import ca_bundles, ca_rotation
from s2s.cli.ca_agents import agent, token
from s2s.cli.ca_authorities import authority, bundle
from s2s.cli.ca_clients import client
from s2s.cli.ca_common import (
    DATA_DIR_ENV,
    SOCKET_ENV,
    Ctx,
    refuse_legacy_variables,
    source_of,
    version_option,
)
from s2s.cli.ca_entries import entry
from s2s.cli.ca_federation import federation
from s2s.cli.ca_minting import jwt, x509
from s2s.cli.ca_process import healthcheck, init, serve
from s2s.cli.ca_revocation import crl, revocations, revoke
from s2s.cli.exits import CA_EXIT_CODES_HELP, run_cli

__all__ = [
    "cli",
    "main",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=CA_EXIT_CODES_HELP)
@version_option("s2s-ca")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=DATA_DIR_ENV,
    help=f"The CA's data directory (env {DATA_DIR_ENV}).",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SOCKET_ENV,
    help=f"The running CA's admin socket (env {SOCKET_ENV}; default: <data-dir>/admin.sock).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, socket_path: Path | None) -> None:
    """s2s certificate authority.

    Settings come from flags, then S2S_CA_* variables (S2S_CA_DATA_DIR, S2S_CA_SOCKET, and for
    serve S2S_CA_LISTEN, S2S_CA_CONFIG, ...), then serve's --config file. The old shared
    S2S_DATA_DIR is refused.
    """
    refuse_legacy_variables(os.environ)
    sources = {"data_dir": source_of(ctx, "data_dir"), "socket": source_of(ctx, "socket_path")}
    ctx.obj = Ctx(data_dir, socket_path, {k: v for k, v in sources.items() if v is not None})


for _command in (init, serve, healthcheck, entry, token, agent, bundle, authority, x509, jwt,
                 revoke, revocations, crl, client):  # fmt: skip
    cli.add_command(_command)
cli.add_command(federation)  # federation create|list|show|update|delete|refresh
ca_rotation.register(cli, authority)  # authority prepare|activate|taint|revoke, rotate-root
ca_bundles.register(bundle)  # bundle set|list|delete (federated bundles)


def _set_location(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        found = ctx.find_object(Ctx)
        field = "data_dir" if param.name == "data_dir" else "socket_path"
        setattr(found, field, value)
        if found is not None:
            found.sources[field.removesuffix("_path")] = f"flag {param.opts[0]}"


def _accept_location_on_every_command(group: click.Group) -> None:
    """``--data-dir``/``--socket`` work after the command too (``s2s-ca init --data-dir D``), as
    SPIRE's ``-socketPath`` does; the group's options stay (``s2s-ca --data-dir D init``)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_location_on_every_command(command)
            continue
        taken = {opt for p in command.params for opt in p.opts}
        for param in cli.params:
            if param.name in ("data_dir", "socket_path") and not taken & set(param.opts):
                command.params.append(
                    click.Option(
                        [*param.opts, str(param.name)],
                        type=param.type,
                        help=param.help,
                        expose_value=False,
                        callback=_set_location,
                    )
                )


_accept_location_on_every_command(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point (``s2s-ca``)."""
    return run_cli(cli, "s2s-ca", argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
