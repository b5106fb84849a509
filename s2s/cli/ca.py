"""``s2s-ca``: create a trust domain, run the CA, and administer it over its admin socket.

Every command but ``init`` and ``serve`` talks to a running CA through the admin Unix socket found
by ``--socket`` or ``--data-dir`` (env ``S2S_DATA_DIR``). People get tables; ``--json`` gives
machine-readable output. Exit codes:

    0  success                        4  not found
    1  error (CA side or unexpected)  5  conflict (already exists, lost a race)
    2  bad usage or invalid input     6  refused (not authorized, revoked, bad token)
    3  CA not reachable or not ready
"""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
import tomllib
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import click

from s2s.ca.client import ADMIN_SOCKET_NAME, AdminClient
from s2s.core import errors
from s2s.core.errors import S2SError

__all__ = ["EXIT_CODES", "cli", "exit_code_for", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_REFUSED = (
    range(7)
)
EXIT_CODES: dict[type[S2SError], int] = {
    errors.Unavailable: EXIT_UNAVAILABLE,
    errors.NotFound: EXIT_NOT_FOUND,
    errors.Conflict: EXIT_CONFLICT,
    errors.NotAuthorized: EXIT_REFUSED,
    errors.Revoked: EXIT_REFUSED,
    errors.AttestationFailed: EXIT_REFUSED,
    errors.InvalidToken: EXIT_REFUSED,
    errors.InvalidConfig: EXIT_ERROR,
    errors.InvalidRequest: EXIT_USAGE,
    errors.InvalidSpiffeId: EXIT_USAGE,
    errors.InvalidSelector: EXIT_USAGE,
    errors.InvalidSvid: EXIT_USAGE,
    errors.InvalidBundle: EXIT_USAGE,
}


def exit_code_for(exc: S2SError) -> int:
    """The exit code for an error (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_ERROR


def fail(exc: S2SError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exit_code_for(exc))


class Ctx:
    """What the group options found: where the running CA is."""

    def __init__(self, data_dir: Path | None, socket_path: Path | None) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path

    def client(self) -> AdminClient:
        if self.socket_path is not None:
            return AdminClient(self.socket_path)
        if self.data_dir is None:
            raise click.UsageError(
                "say where the CA is: --data-dir DIR (or S2S_DATA_DIR) or --socket"
            )
        return AdminClient(self.data_dir / ADMIN_SOCKET_NAME)

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise click.UsageError("--data-dir DIR (or S2S_DATA_DIR) is required")
        return self.data_dir


pass_ctx = click.make_pass_decorator(Ctx)
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="S2S_DATA_DIR",
    help="The CA's data directory (env S2S_DATA_DIR).",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The running CA's admin socket (default: <data-dir>/admin.sock).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, socket_path: Path | None) -> None:
    """s2s certificate authority."""
    ctx.obj = Ctx(data_dir, socket_path)


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


# ---- process commands -------------------------------------------------------------------------


_store_options = [
    click.option("--store", "store_url", envvar="S2S_CA_STORE",
                 help="etcd://host:port[,host:port][/<td>] (default: SQLite in the data dir)."),
    click.option("--etcd-ca", type=click.Path(dir_okay=False, path_type=Path),
                 help="CA certificate (PEM) that signed etcd's certificate: enables TLS."),
    click.option("--etcd-cert", type=click.Path(dir_okay=False, path_type=Path),
                 help="Client certificate (PEM) for etcd."),
    click.option("--etcd-key", type=click.Path(dir_okay=False, path_type=Path),
                 help="Client key (PEM) for etcd."),
]  # fmt: skip


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_store_options):
        fn = option(fn)
    return fn


def store_settings(values: dict[str, Any], trust_domain: str | None = None) -> Any:
    """``StoreSettings`` from the --store/--etcd-* values (flags or config file)."""
    from s2s.ca.store_config import StoreSettings  # noqa: PLC0415

    paths = {k: Path(values[k]) if values.get(k) else None for k in _ETCD_KEYS}
    return call(
        lambda: StoreSettings(url=values.get("store") or None, trust_domain=trust_domain, **paths)
    )


_ETCD_KEYS = ("etcd_ca", "etcd_cert", "etcd_key")


@cli.command()
@click.option("--trust-domain", required=True, help="The trust domain name, e.g. example.org.")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def init(ctx: Ctx, /, trust_domain: str, as_json: bool, store_url: str | None, **etcd: Any) -> None:
    """Create a trust domain: root CA, key-encryption key (0600) and store in --data-dir
    (with --store etcd://..., the root goes to etcd; the KEK stays in --data-dir)."""
    from s2s.ca.app import init_data_dir  # noqa: PLC0415  (keeps admin commands light)

    settings = store_settings({"store": store_url, **etcd}, trust_domain)
    result = call(
        lambda: init_data_dir(ctx.require_data_dir(), trust_domain, store_settings=settings)
    )
    if as_json:
        emit_json(result)
    else:
        click.echo(f"initialized trust domain {result['trust_domain']} in {result['data_dir']}")
        click.echo(f"root {result['root_id']} valid until {result['not_after']}")


_TTL_KEYS = ("x509_svid", "jwt_svid", "max_svid", "agent_svid", "server_svid", "intermediate",
             "jwt_key", "join_token")  # fmt: skip


_FILE_KEYS = ("data_dir", "socket", "listen", "name", "log_level", "log_format", "store",
              "etcd_ca", "etcd_cert", "etcd_key", "trust_domain")  # fmt: skip


def load_config_file(path: Path | None) -> tuple[dict[str, Any], dict[str, timedelta]]:
    """The TOML file of ``serve --config`` (deploy/ca.toml): keys named like the flags
    (``_FILE_KEYS``, text) and a ``[ttl]`` table of ``_TTL_KEYS`` (seconds or ``5m``/``1h``).

    Returns (flag values, CaConfig TTL overrides).
    """
    if path is None:
        return {}, {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise errors.InvalidConfig(f"cannot read config file {path}: {exc}") from exc
    ttl = doc.pop("ttl", {})
    if not isinstance(ttl, dict):
        raise errors.InvalidConfig(f"{path}: [ttl] must be a table")
    unknown = sorted(set(doc) - set(_FILE_KEYS))
    unknown += sorted(f"ttl.{k}" for k in set(ttl) - set(_TTL_KEYS))
    if unknown:
        raise errors.InvalidConfig(f"{path}: unknown setting(s) {', '.join(unknown)}")
    if not all(isinstance(v, str) and v for v in doc.values()):
        raise errors.InvalidConfig(f"{path}: {', '.join(_FILE_KEYS)} must be non-empty text")
    ttls = {}
    for key, value in ttl.items():
        try:
            ttls[f"{key}_ttl"] = timedelta(seconds=parse_duration(str(value)))
        except click.BadParameter as exc:
            raise errors.InvalidConfig(f"{path}: ttl.{key}: {exc.message}") from exc
    return doc, ttls


@cli.command()
@click.option("--listen", envvar="S2S_CA_LISTEN", help="HOST:PORT for HTTPS [127.0.0.1:8443].")
@click.option("--name", "replica_name", envvar="S2S_CA_NAME", help="Replica name [ca-0].")
@click.option(
    "--config", "config_file", envvar="S2S_CA_CONFIG", help="TOML file (listen, name, [ttl]).",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)  # fmt: skip
@click.option("--max-svid-ttl", type=DURATION, help="Raise the SVID lifetime cap (default 5m).")
@store_options
@click.option("--trust-domain", help="The trust domain of an etcd store (or in its URL path).")
@click.option("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO].")
@click.option("--log-format", type=click.Choice(["json", "text"]), help="Log lines [json].")
@pass_ctx
def serve(ctx: Ctx, /, **opts: Any) -> None:
    """Run the CA until SIGTERM or SIGINT. Flags override the --config file."""
    from s2s.ca.app import ServeOptions, serve_forever  # noqa: PLC0415

    file, ttls = call(lambda: load_config_file(opts["config_file"]))
    if opts["max_svid_ttl"]:
        ttls["max_svid_ttl"] = timedelta(seconds=opts["max_svid_ttl"])
    data_dir = ctx.data_dir or (Path(file["data_dir"]) if "data_dir" in file else None)
    socket_path = ctx.socket_path or (Path(file["socket"]) if "socket" in file else None)
    if data_dir is None:
        raise click.UsageError("--data-dir DIR (or S2S_DATA_DIR, or data_dir in --config)")
    log_format = opts["log_format"] or file.get("log_format", "json")
    if log_format not in ("json", "text"):
        raise click.BadParameter("log_format must be json or text", param_hint="log_format")
    options = ServeOptions(
        data_dir=data_dir,
        listen=opts["listen"] or file.get("listen", "127.0.0.1:8443"),
        replica_name=opts["replica_name"] or file.get("name", "ca-0"),
        log_level=(opts["log_level"] or file.get("log_level", "INFO")).upper(),
        json_logs=log_format == "json",
        socket_path=socket_path,
        config_overrides=ttls,
        store=_serve_store(opts, file),
    )
    call(lambda: serve_forever(options))


def _serve_store(opts: dict[str, Any], file: dict[str, Any]) -> Any:
    """The store settings of ``serve``: flags win over the config file, key by key."""
    values = {k: file.get(k) for k in ("store", *_ETCD_KEYS)}
    values.update({k: opts[k] for k in _ETCD_KEYS if opts[k] is not None})
    if opts["store_url"]:
        values["store"] = opts["store_url"]
    return store_settings(values, opts["trust_domain"] or file.get("trust_domain"))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def healthcheck(ctx: Ctx, as_json: bool) -> None:
    """Exit 0 only when the CA answers and is ready to issue (3 otherwise)."""
    status = call(lambda: ctx.client().get("/readyz"))
    if as_json:
        emit_json(status)
    else:
        click.echo("ready" if status.get("ready") else f"not ready: {status.get('message', '')}")
    if not status.get("ready"):
        sys.exit(EXIT_UNAVAILABLE)


# ---- entries ----------------------------------------------------------------------------------


@cli.group()
def entry() -> None:
    """Registration entries."""


def _entry_rows(entries: list[dict[str, Any]]) -> None:
    rows = [
        (e["id"], e["spiffe_id"], e["parent_id"], ",".join(e["selectors"]), e["x509_svid_ttl"])
        for e in entries
    ]
    table(rows, ["id", "spiffe id", "parent id", "selectors", "x509 ttl"])


_JSON_NAMES = {"x509_ttl": "x509_svid_ttl", "jwt_ttl": "jwt_svid_ttl"}


def _entry_body(opts: dict[str, Any]) -> dict[str, Any]:
    """Entry JSON from the options given (None and empty repeats are left out)."""
    body: dict[str, Any] = {}
    for name, value in opts.items():
        if value is None or value == ():
            continue
        body[_JSON_NAMES.get(name, name)] = list(value) if isinstance(value, tuple) else value
    return body


_entry_options = [
    click.option("--selector", "selectors", multiple=True, help="type:value (repeat)."),
    click.option("--x509-ttl", type=DURATION, help="X509-SVID lifetime (e.g. 5m)."),
    click.option("--jwt-ttl", type=DURATION, help="JWT-SVID lifetime (e.g. 5m)."),
    click.option("--dns-name", "dns_names", multiple=True, help="DNS SAN (repeat)."),
    click.option("--hint", help="Hint for workloads with several SVIDs."),
]


def entry_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_entry_options):
        fn = option(fn)
    return fn


@entry.command("create")
@click.option("--spiffe-id", required=True)
@click.option("--parent-id", required=True, help="The agent that may obtain it.")
@entry_options
@json_option
@pass_ctx
def entry_create(ctx: Ctx, /, as_json: bool, **opts: Any) -> None:
    """Register a workload."""
    if not opts["selectors"]:
        raise click.UsageError("give at least one --selector")
    body = _entry_body(opts)
    created = call(lambda: ctx.client().post("/v1/entries", body))
    emit_json(created) if as_json else click.echo(created["id"])


@entry.command("list")
@click.option("--parent-id", help="Only entries of this agent.")
@click.option("--spiffe-id", help="Only entries for this SPIFFE ID.")
@json_option
@pass_ctx
def entry_list(ctx: Ctx, parent_id: str | None, spiffe_id: str | None, as_json: bool) -> None:
    """List registration entries."""
    query = {k: v for k, v in {"parent_id": parent_id, "spiffe_id": spiffe_id}.items() if v}
    entries = call(lambda: ctx.client().get("/v1/entries", **query))["entries"]
    emit_json(entries) if as_json else _entry_rows(entries)


@entry.command("show")
@click.argument("entry_id")
@json_option
@pass_ctx
def entry_show(ctx: Ctx, entry_id: str, as_json: bool) -> None:
    """Show one entry."""
    found = call(lambda: ctx.client().get(f"/v1/entries/{_segment(entry_id)}"))
    emit_json(found) if as_json else key_values(found)


@entry.command("update")
@click.argument("entry_id")
@click.option("--spiffe-id")
@click.option("--parent-id")
@entry_options
@json_option
@pass_ctx
def entry_update(ctx: Ctx, /, entry_id: str, as_json: bool, **opts: Any) -> None:
    """Change fields of an entry (the ones given)."""
    body = _entry_body(opts)
    if not body:
        raise click.UsageError("nothing to update: give at least one option")
    updated = call(
        lambda: ctx.client().call("PATCH", f"/v1/entries/{_segment(entry_id)}", body=body)
    )
    emit_json(updated) if as_json else key_values(updated)


@entry.command("delete")
@click.argument("entry_id")
@json_option
@pass_ctx
def entry_delete(ctx: Ctx, entry_id: str, as_json: bool) -> None:
    """Delete an entry."""
    deleted = call(lambda: ctx.client().call("DELETE", f"/v1/entries/{_segment(entry_id)}"))
    emit_json(deleted) if as_json else click.echo(f"deleted {deleted['id']}")


def _segment(entry_id: str) -> str:
    return quote(entry_id, safe="")


# ---- tokens, agents, bundle, authorities ------------------------------------------------------


@cli.group()
def token() -> None:
    """Join tokens for agents."""


@token.command("generate")
@click.option("--ttl", type=DURATION, help="How long the token stays usable (default 10m).")
@json_option
@pass_ctx
def token_generate(ctx: Ctx, ttl: int | None, as_json: bool) -> None:
    """Create a single-use join token (printed once; the CA keeps only its hash)."""
    created = call(lambda: ctx.client().post("/v1/tokens", {"ttl": ttl} if ttl else {}))
    emit_json(created) if as_json else click.echo(created["token"])


@cli.group()
def agent() -> None:
    """Attested agents."""


@agent.command("list")
@json_option
@pass_ctx
def agent_list(ctx: Ctx, as_json: bool) -> None:
    """List attested agents."""
    agents = call(lambda: ctx.client().get("/v1/agents"))["agents"]
    if as_json:
        emit_json(agents)
        return
    rows = [
        (a["spiffe_id"], a["serial"], a["not_after"], a.get("bundle_sequence", ""),
         "yes" if a["banned"] else "")
        for a in agents
    ]  # fmt: skip
    table(rows, ["spiffe id", "serial", "expires", "bundle", "banned"])


@agent.command("show")
@click.argument("spiffe_id")
@json_option
@pass_ctx
def agent_show(ctx: Ctx, spiffe_id: str, as_json: bool) -> None:
    """Show one agent."""
    found = call(lambda: ctx.client().get("/v1/agents/show", spiffe_id=spiffe_id))
    emit_json(found) if as_json else key_values(found)


@agent.command("evict")
@click.argument("spiffe_id")
@json_option
@pass_ctx
def agent_evict(ctx: Ctx, spiffe_id: str, as_json: bool) -> None:
    """Forget an agent: it must attest again with a new join token."""
    done = call(lambda: ctx.client().post("/v1/agents/evict", {"spiffe_id": spiffe_id}))
    emit_json(done) if as_json else click.echo(f"evicted {spiffe_id}")


@agent.command("ban")
@click.argument("spiffe_id")
@json_option
@pass_ctx
def agent_ban(ctx: Ctx, spiffe_id: str, as_json: bool) -> None:
    """Ban an agent: every call it makes is refused until it is evicted."""
    done = call(lambda: ctx.client().post("/v1/agents/ban", {"spiffe_id": spiffe_id}))
    emit_json(done) if as_json else click.echo(f"banned {spiffe_id}")


@cli.group()
def bundle() -> None:
    """The trust bundle."""


@bundle.command("show")
@click.option(
    "--format", "fmt", type=click.Choice(["pem", "spiffe"]), default="pem", show_default=True
)
@pass_ctx
def bundle_show(ctx: Ctx, fmt: str) -> None:
    """Print the trust bundle: root certificates (pem) or the SPIFFE bundle JSON (spiffe)."""
    shown = call(lambda: ctx.client().get("/v1/bundle", format=fmt))
    text = shown if isinstance(shown, str) else json.dumps(shown, indent=2)
    click.echo(text.rstrip("\n"))


@cli.group()
def authority() -> None:
    """Signing authorities (roots, intermediates, JWT keys)."""


@authority.command("list")
@click.option("--kind", type=click.Choice(["root", "x509", "jwt"]), help="Only this kind.")
@json_option
@pass_ctx
def authority_list(ctx: Ctx, kind: str | None, as_json: bool) -> None:
    """List every authority of the trust domain."""
    found = call(lambda: ctx.client().get("/v1/authorities"))["authorities"]
    if kind is not None:
        wanted = {"root": "x509-root", "x509": "x509-intermediate", "jwt": "jwt"}[kind]
        found = [a for a in found if a["kind"] == wanted]
    if as_json:
        emit_json(found)
        return
    rows = [(a["id"], a["kind"], a["state"], a["owner"], a["not_after"]) for a in found]
    table(rows, ["id", "kind", "state", "owner", "expires"])


# ---- minting ----------------------------------------------------------------------------------


@cli.group()
def x509() -> None:
    """X509-SVIDs."""


@x509.command("mint")
@click.option("--spiffe-id", required=True)
@click.option("--ttl", type=DURATION, help="Lifetime (capped by the CA).")
@click.option("--dns-name", "dns_names", multiple=True)
@click.option(
    "--write", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory for svid.pem, svid_key.pem (0600) and bundle.pem.",
)  # fmt: skip
@json_option
@pass_ctx
def x509_mint(ctx: Ctx, *, spiffe_id: str, ttl: int | None, dns_names: tuple[str, ...],
              out_dir: Path, as_json: bool) -> None:  # fmt: skip
    """Mint an X509-SVID and write svid.pem (leaf, intermediate), svid_key.pem, bundle.pem."""
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "dns_names": list(dns_names)}
    if ttl:
        body["ttl"] = ttl
    minted = call(lambda: ctx.client().post("/v1/x509/mint", body))
    files = call(lambda: write_svid_files(out_dir, minted))
    summary = {k: minted[k] for k in ("spiffe_id", "serial", "expires_at")}
    summary["files"] = [str(f) for f in files]
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {', '.join(summary['files'])} (expires {minted['expires_at']})")


def write_svid_files(out_dir: Path, minted: dict[str, Any]) -> list[Path]:
    """Write the three PEM files; the key file is created 0600 and never world-readable."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, key, mode in (
            ("svid.pem", "chain_pem", 0o644),
            ("svid_key.pem", "key_pem", 0o600),
            ("bundle.pem", "bundle_pem", 0o644),
        ):
            path = out_dir / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "w") as out:
                os.fchmod(out.fileno(), mode)
                out.write(minted[key])
            written.append(path)
    except OSError as exc:
        raise errors.InvalidRequest(f"cannot write into {out_dir}: {exc.strerror}") from exc
    return written


@cli.group()
def jwt() -> None:
    """JWT-SVIDs."""


@jwt.command("mint")
@click.option("--spiffe-id", required=True)
@click.option("--audience", "audience", required=True, multiple=True, help="Repeat for several.")
@click.option("--ttl", type=DURATION, help="Lifetime (capped by the CA).")
@json_option
@pass_ctx
def jwt_mint(ctx: Ctx, spiffe_id: str, audience: tuple[str, ...], ttl: int | None,
             as_json: bool) -> None:  # fmt: skip
    """Mint a JWT-SVID and print it."""
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "audience": list(audience)}
    if ttl:
        body["ttl"] = ttl
    minted = call(lambda: ctx.client().post("/v1/jwt/mint", body))
    emit_json(minted) if as_json else click.echo(minted["token"])


# ---- revocation -------------------------------------------------------------------------------


@cli.command()
@click.option("--serial", help="Hex serial of a certificate this CA issued (leaf or intermediate).")
@click.option("--spiffe-id", help="Everything issued to this SPIFFE ID until now.")
@click.option("--jti", help="One JWT-SVID, by its jti.")
@click.option(
    "--agent", "agent_id", help="An agent: its SVIDs and every SVID it obtained; bans it."
)
@click.option("--reason", default="", help="Why (RFC 5280 reason names become CRL reason codes).")
@json_option
@pass_ctx
def revoke(ctx: Ctx, /, reason: str, as_json: bool, **targets: str | None) -> None:
    """Revoke credentials. The record is durable in the store before this returns."""
    given = {("agent" if k == "agent_id" else k): v for k, v in targets.items() if v is not None}
    if len(given) != 1:
        raise click.UsageError("give exactly one of --serial, --spiffe-id, --jti, --agent")
    done = call(lambda: ctx.client().post("/v1/revocations", {**given, "reason": reason}))
    if as_json:
        emit_json(done)
        return
    what = f"{done['target'].replace('_', ' ')} {done['value']}"
    count = f"{len(done['records'])} record(s), {done['changed']} new or changed"
    state = "was already revoked" if done["already_revoked"] else "revoked"
    click.echo(f"{what} {state}: {count}" + ("; agent banned" if done["banned"] else ""))


@cli.group()
def revocations() -> None:
    """Revocation records."""


@revocations.command("list")
@json_option
@pass_ctx
def revocations_list(ctx: Ctx, as_json: bool) -> None:
    """List the revocation records (until what they cover has expired)."""
    feed = call(lambda: ctx.client().get("/v1/revocations"))
    if as_json:
        emit_json(feed)
        return
    rows = [(r["kind"], r["value"], r["revoked_at"], r["expires_at"], r["reason"])
            for r in feed["records"]]  # fmt: skip
    table(rows, ["kind", "value", "revoked at", "expires", "reason"])


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["pem", "der"]), default="pem", show_default=True
)
@click.option("--issuer", help="Key id (hex) of one issuing CA (see --json).")
@click.option("--json", "as_json", is_flag=True, help="Print the CRLs' metadata as JSON.")
@pass_ctx
def crl(ctx: Ctx, fmt: str, issuer: str | None, as_json: bool) -> None:
    """Print the CRLs (one per issuing CA); DER (binary) needs one, chosen with --issuer."""
    query = {"format": "json", **({"issuer": issuer} if issuer else {})}
    crls = call(lambda: ctx.client().get("/v1/crl", **query))["crls"]
    if as_json:
        emit_json([{k: v for k, v in c.items() if k != "der"} for c in crls])
    elif fmt == "der":
        if len(crls) != 1:
            raise click.UsageError("DER holds one CRL: choose it with --issuer KEYID (see --json)")
        sys.stdout.buffer.write(base64.b64decode(crls[0]["der"]))
    else:
        for c in crls:
            lines = textwrap.wrap(c["der"], 64)
            click.echo("\n".join(["-----BEGIN X509 CRL-----", *lines, "-----END X509 CRL-----"]))


from s2s.cli.ca_rotation import register as _register_rotation  # noqa: E402

_register_rotation(cli, authority)  # authority prepare|activate|taint|revoke, rotate-root


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point (``s2s-ca``)."""
    try:
        args = list(argv) if argv is not None else None
        cli.main(args=args, prog_name="s2s-ca", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except S2SError as exc:
        click.echo(f"error: {exc}", err=True)
        return exit_code_for(exc)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
