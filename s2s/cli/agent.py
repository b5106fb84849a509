"""``s2s-agent``: run the node agent, and talk to a running one through the Workload API.

``run`` takes every setting as a flag, an ``S2S_AGENT_*`` variable or a TOML key (``--config``); the
``api`` commands and ``healthcheck`` find the agent through ``--socket``,
``SPIFFE_ENDPOINT_SOCKET`` or the socket ``run`` serves by default, and use the asyncio Workload
API client. Exit codes: ``s2s.cli.exits`` (shown by ``s2s-agent --help``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from s2s.cli.ca_common import version_option
from s2s.cli.exits import AGENT_EXIT_CODES_HELP, fail, run_cli
from s2s.cli.output_dir import OutputDir, OutputFile
from s2s.core.errors import S2SError, Unavailable
from s2s.core.x509svid import X509Svid

__all__ = ["cli", "main"]

_T = TypeVar("_T")


def call(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except S2SError as exc:
        fail(exc)


def run_async(factory: Callable[[], Awaitable[_T]]) -> _T:
    async def body() -> _T:
        return await factory()

    return call(lambda: asyncio.run(body()))


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=AGENT_EXIT_CODES_HELP)
@version_option("s2s-agent")
def cli() -> None:
    """s2s node agent."""


# ---- run ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (env S2S_AGENT_CONFIG).",
)
@click.option("--trust-domain", help="Trust domain (env S2S_AGENT_TRUST_DOMAIN).")
@click.option(
    "--ca-url",
    "ca_urls",
    multiple=True,
    help="CA base URL, repeat for fail-over (env S2S_AGENT_CA_URL, comma-separated).",
)
@click.option("--trust-bundle", help="Bootstrap bundle PEM file (env S2S_AGENT_TRUST_BUNDLE).")
@click.option(
    "--join-token", help="One-time join token (env S2S_AGENT_JOIN_TOKEN; prefer the env)."
)
@click.option("--data-dir", help="Where the agent keeps its key and SVID (env S2S_AGENT_DATA_DIR).")
@click.option(
    "--socket", help="Workload API socket (default /run/s2s/agent.sock; env S2S_AGENT_SOCKET)."
)
@click.option(
    "--attestor",
    "attestors",
    multiple=True,
    help="Workload attestor, repeat for several (default unix; env S2S_AGENT_ATTESTORS).",
)
@click.option(
    "--sha256-max-bytes",
    help="Largest binary hashed for unix:sha256, e.g. 128MiB (env S2S_AGENT_SHA256_MAX_BYTES).",
)
@click.option(
    "--metrics-listen",
    help="HOST:PORT for /metrics, /healthz, /readyz (env S2S_AGENT_METRICS_LISTEN).",
)
@click.option("--log-level", help="debug, info, warning, error (env S2S_AGENT_LOG_LEVEL).")
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    help="Log line format (env S2S_AGENT_LOG_FORMAT).",
)
@click.option(
    "--revocations-etcd",
    help="Follow revocations in etcd at HOST:PORT[,...] instead of long-polling the CA "
    "(env S2S_AGENT_REVOCATIONS_ETCD).",
)
@click.option(
    "--revocations-etcd-ca",
    help="CA PEM of that etcd's TLS certificate (env S2S_AGENT_REVOCATIONS_ETCD_CA).",
)
@click.option(
    "--revocations-etcd-cert",
    help="Client certificate PEM for that etcd (env S2S_AGENT_REVOCATIONS_ETCD_CERT).",
)
@click.option(
    "--revocations-etcd-key",
    help="Client key PEM for that etcd (env S2S_AGENT_REVOCATIONS_ETCD_KEY).",
)
@click.option(
    "--workload-max-connections",
    help="Workload API connections open at once (default 1024; "
    "env S2S_AGENT_WORKLOAD_MAX_CONNECTIONS).",
)
@click.option(
    "--workload-max-connections-per-uid",
    help="Workload API connections open at once for one caller uid (default 64; "
    "env S2S_AGENT_WORKLOAD_MAX_CONNECTIONS_PER_UID).",
)
@click.option(
    "--workload-idle-timeout",
    help="Close a connection without a call after (default 5m; "
    "env S2S_AGENT_WORKLOAD_IDLE_TIMEOUT).",
)
@click.option(
    "--workload-attest-workers",
    help="Threads that attest Workload API callers (default 4; "
    "env S2S_AGENT_WORKLOAD_ATTEST_WORKERS).",
)
def run(config_file: Path | None, **flags: Any) -> None:
    """Run the agent until SIGTERM or SIGINT.

    Every setting is a flag, an S2S_AGENT_* variable or a key of the --config TOML file (flags
    win over the environment, the environment over the file); the start-up log names each
    setting's source. The old shared names (S2S_DATA_DIR, S2S_JOIN_TOKEN, ...) are refused.
    """
    from s2s.agent.app import serve_forever  # noqa: PLC0415  (keeps api commands light)
    from s2s.agent.config import legacy_variables_message, load_config  # noqa: PLC0415
    from s2s.cli.program_dirs import refuse_other_programs_dir  # noqa: PLC0415

    refused = legacy_variables_message(os.environ)
    if refused is not None:
        raise click.UsageError(refused)
    config = call(lambda: load_config(flags=flags, environ=os.environ, config_file=config_file))
    call(lambda: refuse_other_programs_dir(config.data_dir, program="agent"))
    call(lambda: serve_forever(config))


# ---- api ----------------------------------------------------------------------------------


socket_option = click.option(
    "--socket",
    "socket",
    help="Workload API socket: a path or unix:///path (default: $SPIFFE_ENDPOINT_SOCKET, "
    "else the socket 's2s-agent run' serves: $S2S_AGENT_SOCKET, the socket of "
    "$S2S_AGENT_CONFIG, or /run/s2s/agent.sock).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def agent_endpoint(
    socket: str | None, environ: Mapping[str, str], config_file: Path | None = None
) -> str:
    """The socket the client commands call: ``--socket``, else ``SPIFFE_ENDPOINT_SOCKET``, else
    the one ``run`` serves by its own rules (``S2S_AGENT_SOCKET``, the config file's ``socket``,
    the default), so that a command typed on the agent's host needs no flag."""
    from s2s.agent.config import legacy_variables_message, served_socket  # noqa: PLC0415
    from s2s.verifier.workload_client import ENDPOINT_ENV, resolve_endpoint  # noqa: PLC0415

    refused = legacy_variables_message(environ, ["S2S_SOCKET", "S2S_CONFIG"])  # read here
    if refused is not None:
        raise click.UsageError(refused)
    if socket or environ.get(ENDPOINT_ENV):
        return resolve_endpoint(socket, environ=environ)
    return str(served_socket(environ, config_file))


def _client(socket: str | None, config_file: Path | None = None) -> Any:
    from s2s.verifier.workload_client import WorkloadApiClient  # noqa: PLC0415

    return WorkloadApiClient(call(lambda: agent_endpoint(socket, os.environ, config_file)))


@cli.group()
def api() -> None:
    """Call a running agent's Workload API as this process."""


@api.group()
def fetch() -> None:
    """Fetch SVIDs."""


@api.group()
def validate() -> None:
    """Validate credentials."""


def _svid_json(svid: X509Svid) -> dict[str, Any]:
    return {
        "spiffe_id": str(svid.spiffe_id),
        "serial": format(svid.serial, "x"),
        "not_after": svid.not_after.isoformat(),
        "hint": svid.hint,
    }


@fetch.command("x509")
@socket_option
@click.option(
    "--write",
    "write_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write svid.N.pem, svid.N.key (0600), bundle.pem (own trust domain) and "
    "federated.<td>.pem (each federated trust domain, never merged in) into this directory.",
)
@json_option
def fetch_x509(socket: str | None, write_dir: Path | None, as_json: bool) -> None:
    """Print (and optionally write) this process's X509-SVIDs."""

    async def body() -> Any:
        async with _client(socket) as client:
            return await client.fetch_x509_context()

    # Checked before fetching: a refused directory costs no SVID and says why at once.
    out = None if write_dir is None else call(lambda: OutputDir.open(write_dir))
    try:
        context = run_async(body)
        if out is not None:
            call(lambda: out.write(_x509_files(context)))
    finally:
        if out is not None:
            out.close()
    rows = [_svid_json(svid) for svid in context.svids]
    if as_json:
        click.echo(
            json.dumps(
                {"svids": rows, "trust_domains": [str(b.trust_domain) for b in context.bundles]},
                indent=2,
            )
        )
        return
    for row in rows:
        click.echo(f"{row['spiffe_id']}  serial {row['serial']}  expires {row['not_after']}")
    if write_dir is not None:
        federated = len(context.bundles) - len({s.spiffe_id.trust_domain for s in context.svids})
        extra = f" and {federated} federated.<td>.pem" if federated > 0 else ""
        click.echo(f"wrote {len(rows)} SVID(s), bundle.pem{extra} to {write_dir}")


def _x509_files(context: Any) -> list[OutputFile]:
    files = []
    for index, svid in enumerate(context.svids):
        files.append(OutputFile(f"svid.{index}.pem", svid.chain_pem(), 0o644))
        files.append(OutputFile(f"svid.{index}.key", svid.key_pem(), 0o600))
    # A PEM file is one trust pool for whatever reads it: the SVIDs' own trust domains only, and
    # each federated trust domain in a file of its own, never merged in.
    own = {svid.spiffe_id.trust_domain for svid in context.svids}
    bundles = b"".join(b.x509_pem() for b in context.bundles if b.trust_domain in own)
    files.append(OutputFile("bundle.pem", bundles, 0o644))
    for b in context.bundles:
        if b.trust_domain not in own and b.x509_authorities:
            files.append(OutputFile(f"federated.{b.trust_domain}.pem", b.x509_pem(), 0o644))
    return files


@fetch.command("jwt")
@socket_option
@click.option("--audience", "audience", multiple=True, required=True, help="Audience (repeat).")
@click.option("--spiffe-id", help="Which identity (default: every identity of this process).")
@json_option
def fetch_jwt(
    socket: str | None, audience: Sequence[str], spiffe_id: str | None, as_json: bool
) -> None:
    """Print JWT-SVIDs for the audience (the token is a secret: handle the output with care)."""

    async def body() -> Any:
        async with _client(socket) as client:
            return await client.fetch_jwt_svids(list(audience), spiffe_id)

    svids = run_async(body)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "spiffe_id": str(s.spiffe_id),
                        "token": s.token,
                        "expiry": s.expiry.isoformat(),
                    }
                    for s in svids
                ],
                indent=2,
            )
        )
        return
    for svid in svids:
        click.echo(f"{svid.spiffe_id}  expires {svid.expiry.isoformat()}")
        click.echo(svid.token)


@validate.command("jwt")
@socket_option
@click.option("--audience", required=True, help="The audience the token must name.")
@click.option("--token", required=True, help="The JWT-SVID.")
@json_option
def validate_jwt(socket: str | None, audience: str, token: str, as_json: bool) -> None:
    """Have the agent validate a JWT-SVID; exit 6 if it is rejected."""

    async def body() -> Any:
        async with _client(socket) as client:
            return await client.validate_jwt_svid(token, audience)

    spiffe_id, claims = run_async(body)
    if as_json:
        click.echo(json.dumps({"spiffe_id": str(spiffe_id), "claims": dict(claims)}, indent=2))
        return
    click.echo(f"valid: {spiffe_id}")
    for name in sorted(claims):
        click.echo(f"  {name}: {claims[name]}")


@api.command("watch")
@socket_option
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many updates.")
def watch(socket: str | None, count: int | None) -> None:
    """Print every X.509 update (rotation, bundle change) until interrupted."""

    async def body() -> None:
        seen = 0
        async with _client(socket) as client:
            async for context in client.watch_x509_context():
                for svid in context.svids:
                    row = _svid_json(svid)
                    click.echo(
                        f"{row['spiffe_id']}  serial {row['serial']}  expires {row['not_after']}"
                    )
                click.echo(f"-- update {seen + 1}: {len(context.svids)} SVID(s)", err=False)
                seen += 1
                if count is not None and seen >= count:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        run_async(body)


# ---- healthcheck --------------------------------------------------------------------------


@cli.command()
@socket_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The agent's TOML file: call the socket it names (env S2S_AGENT_CONFIG).",
)
def healthcheck(socket: str | None, config_file: Path | None) -> None:
    """Exit 0 if the agent answers on its Workload API socket, 3 if it does not. With no
    --socket: $SPIFFE_ENDPOINT_SOCKET, else the socket 's2s-agent run' serves
    ($S2S_AGENT_SOCKET, the config file's socket, /run/s2s/agent.sock)."""

    async def body() -> str:
        async with _client(socket, config_file) as client:  # gRPC health: not a workload call
            status = await client.check_health()
            if status != "SERVING":
                raise Unavailable(f"the agent answers health checks with {status}")
            return "the agent is serving"

    message = run_async(body)
    click.echo(message)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point (``s2s.cli.agent:main``); exits with the command's code."""
    sys.exit(run_cli(cli, "s2s-agent", argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
