"""``s2s-ca init``, ``serve`` (with its ``--config`` TOML file) and ``healthcheck``: the commands
that create or run a CA rather than administer one."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from s2s.cli.ca_common import (
    DURATION,
    Ctx,
    call,
    emit_json,
    parse_duration,
    pass_ctx,
    source_of,
)
from s2s.cli.exits import EXIT_UNAVAILABLE
from s2s.cli.program_dirs import refuse_other_programs_dir
from s2s.core import errors

__all__ = ["healthcheck", "init", "load_config_file", "serve"]

_store_options = [
    click.option("--store", "store_url", envvar="S2S_CA_STORE",
                 help="etcd://host:port[,host:port][/<td>] (default: SQLite in the data dir; "
                      "env S2S_CA_STORE)."),
    click.option("--etcd-ca", type=click.Path(dir_okay=False, path_type=Path),
                 envvar="S2S_CA_ETCD_CA",
                 help="CA certificate (PEM) that signed etcd's certificate: enables TLS "
                      "(env S2S_CA_ETCD_CA)."),
    click.option("--etcd-cert", type=click.Path(dir_okay=False, path_type=Path),
                 envvar="S2S_CA_ETCD_CERT",
                 help="Client certificate (PEM) for etcd (env S2S_CA_ETCD_CERT)."),
    click.option("--etcd-key", type=click.Path(dir_okay=False, path_type=Path),
                 envvar="S2S_CA_ETCD_KEY", help="Client key (PEM) for etcd (env S2S_CA_ETCD_KEY)."),
]  # fmt: skip


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_store_options):
        fn = option(fn)
    return fn


def store_settings(values: dict[str, Any], trust_domain: str | None = None) -> Any:
    """``StoreSettings`` from the --store/--etcd-* values (flags or config file)."""
    from s2s.ca.store_config import StoreSettings  # noqa: PLC0415

    paths = {k: Path(values[k]) if values.get(k) else None for k in _ETCD_KEYS}
    grace = values.get(_LEASE_GRACE_KEY)
    return call(
        lambda: StoreSettings(
            url=values.get("store") or None, trust_domain=trust_domain, lease_grace=grace, **paths
        )
    )


_ETCD_KEYS = ("etcd_ca", "etcd_cert", "etcd_key")


@click.command()
@click.option(
    "--trust-domain", required=True, envvar="S2S_CA_TRUST_DOMAIN",
    help="The trust domain name, e.g. example.org (env S2S_CA_TRUST_DOMAIN).",
)  # fmt: skip
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def init(ctx: Ctx, /, trust_domain: str, as_json: bool, store_url: str | None, **etcd: Any) -> None:
    """Create a trust domain: root CA, key-encryption key (0600) and store in --data-dir
    (with --store etcd://..., the root goes to etcd; the KEK stays in --data-dir)."""
    from s2s.ca.bootstrap import init_data_dir  # noqa: PLC0415  (keeps admin commands light)

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
             "jwt_key", "join_token", "access_token")  # fmt: skip


_ISSUER_KEYS = ("jwt_issuer", "oauth_issuer")  # https URLs (docs/oauth.md)
_LEASE_GRACE_KEY = "etcd_lease_grace"  # file only: a duration (the etcd store's lease grace)
_FILE_KEYS = ("data_dir", "socket", "listen", "name", "log_level", "log_format", "store",
              "etcd_ca", "etcd_cert", "etcd_key", "trust_domain", *_ISSUER_KEYS)  # fmt: skip


def load_config_file(path: Path | None) -> tuple[dict[str, Any], dict[str, timedelta]]:
    """The TOML file of ``serve --config`` (deploy/ca.toml): keys named like the flags
    (``_FILE_KEYS``, text), ``etcd_lease_grace`` (a duration, returned as a timedelta), a
    ``[ttl]`` table of ``_TTL_KEYS`` (seconds or ``5m``/``1h``), a
    ``[limits]`` table of :class:`~s2s.ca.config.ServerLimits` fields (durations or counts) and a
    ``[federation]`` table (``s2s.ca.federation_config.FEDERATION_KEYS``, passed on unparsed).

    Returns (flag values, CaConfig TTL overrides); the flag values carry the limits, parsed, as
    ``"limits"`` when the file has the table.
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
    limits = doc.pop("limits", None)
    federation = doc.pop("federation", None)
    housekeeping = doc.pop("housekeeping", None)
    lease_grace = doc.pop(_LEASE_GRACE_KEY, None)
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
    if limits is not None:
        doc["limits"] = _server_limits(path, limits)
    if federation is not None:
        doc["federation"] = federation  # parsed by serve (with --bundle-endpoint)
    if housekeeping is not None:
        doc["housekeeping"] = _housekeeping(path, housekeeping)
    if lease_grace is not None:
        doc[_LEASE_GRACE_KEY] = _lease_grace(path, lease_grace)
    return doc, ttls


def _lease_grace(path: Path, value: object) -> timedelta:
    """``etcd_lease_grace`` (seconds or ``90s``/``5m``/``1h``), within its bounds."""
    from s2s.ca.store_config import check_lease_grace  # noqa: PLC0415

    if isinstance(value, bool) or not isinstance(value, str | int):
        raise errors.InvalidConfig(f"{path}: {_LEASE_GRACE_KEY} must be a duration like 5m")
    try:
        grace = timedelta(seconds=parse_duration(str(value)))
    except click.BadParameter as exc:
        raise errors.InvalidConfig(f"{path}: {_LEASE_GRACE_KEY}: {exc.message}") from exc
    try:
        return check_lease_grace(grace)
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{path}: {exc}") from exc


def _housekeeping(path: Path, table: object) -> Any:
    """The ``[housekeeping]`` table (``lease``, ``interval``: durations) as HousekeepingSettings."""
    from s2s.ca.housekeeping import HousekeepingSettings  # noqa: PLC0415

    if not isinstance(table, dict):
        raise errors.InvalidConfig(f"{path}: [housekeeping] must be a table")
    unknown = sorted(set(table) - {"lease", "interval"})
    if unknown:
        raise errors.InvalidConfig(
            f"{path}: unknown setting(s) {', '.join(f'housekeeping.{k}' for k in unknown)}"
        )
    values: dict[str, Any] = {}
    for key, field_name in (("lease", "lease_ttl"), ("interval", "interval")):
        if key in table:
            try:
                values[field_name] = parse_duration(str(table[key]))
            except click.BadParameter as exc:
                raise errors.InvalidConfig(f"{path}: housekeeping.{key}: {exc.message}") from exc
    try:
        return HousekeepingSettings(**values)
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{path}: [housekeeping]: {exc}") from exc


def _server_limits(path: Path, table: object) -> Any:
    """The ``[limits]`` table as ServerLimits: ``*_timeout`` keys are durations, the others
    whole numbers; unknown keys and bad values are refused with their name."""
    from s2s.ca.config import ServerLimits  # noqa: PLC0415

    if not isinstance(table, dict):
        raise errors.InvalidConfig(f"{path}: [limits] must be a table")
    known = {f.name for f in dataclasses.fields(ServerLimits)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise errors.InvalidConfig(
            f"{path}: unknown setting(s) {', '.join(f'limits.{k}' for k in unknown)}"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key.endswith("_timeout"):
            try:
                values[key] = parse_duration(str(value))
            except click.BadParameter as exc:
                raise errors.InvalidConfig(f"{path}: limits.{key}: {exc.message}") from exc
        else:
            values[key] = value
    try:
        return ServerLimits(**values)
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{path}: [limits]: {exc}") from exc


@click.command()
@click.option(
    "--listen", envvar="S2S_CA_LISTEN",
    help="HOST:PORT for HTTPS [127.0.0.1:8443] (env S2S_CA_LISTEN).",
)  # fmt: skip
@click.option(
    "--name", "replica_name", envvar="S2S_CA_NAME", help="Replica name [ca-0] (env S2S_CA_NAME)."
)
@click.option(
    "--config", "config_file", envvar="S2S_CA_CONFIG",
    help="TOML file (listen, name, [ttl], ...; env S2S_CA_CONFIG).",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)  # fmt: skip
@click.option(
    "--max-svid-ttl", type=DURATION, envvar="S2S_CA_MAX_SVID_TTL",
    help="Raise the SVID lifetime cap (default 5m; env S2S_CA_MAX_SVID_TTL).",
)  # fmt: skip
@store_options
@click.option(
    "--trust-domain", envvar="S2S_CA_TRUST_DOMAIN",
    help="The trust domain of an etcd store (or in its URL path; env S2S_CA_TRUST_DOMAIN).",
)  # fmt: skip
@click.option(
    "--log-level", envvar="S2S_CA_LOG_LEVEL",
    help="DEBUG, INFO, WARNING, ERROR [INFO] (env S2S_CA_LOG_LEVEL).",
)  # fmt: skip
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), envvar="S2S_CA_LOG_FORMAT",
    help="Log lines [json] (env S2S_CA_LOG_FORMAT).",
)  # fmt: skip
@click.option(
    "--jwt-issuer", envvar="S2S_CA_JWT_ISSUER",
    help="https URL: iss of JWT-SVIDs and OIDC discovery (env S2S_CA_JWT_ISSUER).",
)  # fmt: skip
@click.option(
    "--oauth-issuer", envvar="S2S_CA_OAUTH_ISSUER",
    help="https URL of the token service [jwt-issuer] (env S2S_CA_OAUTH_ISSUER).",
)  # fmt: skip
@click.option(
    "--bundle-endpoint", envvar="S2S_CA_BUNDLE_ENDPOINT",
    help="HOST:PORT of the SPIFFE bundle endpoint for federation [off]; its profile and more "
         "in [federation] of --config (env S2S_CA_BUNDLE_ENDPOINT).",
)  # fmt: skip
@pass_ctx
def serve(ctx: Ctx, /, **opts: Any) -> None:
    """Run the CA until SIGTERM or SIGINT. Flags win over S2S_CA_* variables, which win over
    the --config file; the start-up log names each setting's source."""
    from s2s.ca.app import ServeOptions, serve_forever  # noqa: PLC0415

    file, ttls = call(lambda: load_config_file(opts["config_file"]))
    if opts["max_svid_ttl"]:
        ttls["max_svid_ttl"] = timedelta(seconds=opts["max_svid_ttl"])
    issuers = {k: opts[k] or file.get(k) for k in _ISSUER_KEYS if opts[k] or file.get(k)}
    data_dir = ctx.data_dir or (Path(file["data_dir"]) if "data_dir" in file else None)
    socket_path = ctx.socket_path or (Path(file["socket"]) if "socket" in file else None)
    if data_dir is None:
        raise click.UsageError("--data-dir DIR (or S2S_CA_DATA_DIR, or data_dir in --config)")
    call(lambda: refuse_other_programs_dir(data_dir, program="ca"))
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
        config_overrides={**ttls, **issuers},
        store=_serve_store(opts, file),
        federation=call(lambda: _federation(opts, file)),
        **({"limits": file["limits"]} if "limits" in file else {}),
        **({"housekeeping": file["housekeeping"]} if "housekeeping" in file else {}),
    )
    settings = _serve_settings(ctx, opts, file, options)
    call(lambda: serve_forever(dataclasses.replace(options, settings=settings)))


def _federation(opts: dict[str, Any], file: dict[str, Any]) -> Any:
    """FederationSettings from [federation] and --bundle-endpoint (the flag wins)."""
    from s2s.ca.federation_config import federation_settings  # noqa: PLC0415

    def seconds(text: str) -> int:
        try:
            return parse_duration(text)
        except click.BadParameter as exc:
            raise errors.InvalidConfig(exc.message) from None

    where = f"{opts['config_file']}" if opts["config_file"] else "--bundle-endpoint"
    return federation_settings(
        file.get("federation", {}), where=where, seconds=seconds,
        bundle_endpoint=opts["bundle_endpoint"],
    )  # fmt: skip


def _serve_settings(
    ctx: Ctx, opts: dict[str, Any], file: dict[str, Any], options: Any
) -> tuple[tuple[str, str, str], ...]:
    """(setting, value, source) of every serve setting, for the start-up log."""
    click_ctx = click.get_current_context()
    config_file = opts["config_file"]

    def source(key: str, param: str | None = None) -> str:
        given = ctx.sources.get(key) if param is None else source_of(click_ctx, param)
        if given is not None:
            return given
        return f"file {config_file}" if key in file else "default"

    store = options.store
    rows = [
        ("data_dir", str(options.data_dir), source("data_dir")),
        ("socket", str(options.admin_socket), source("socket")),
        ("config", str(config_file or ""), source_of(click_ctx, "config_file") or "default"),
        ("listen", options.listen, source("listen", "listen")),
        ("name", options.replica_name, source("name", "replica_name")),
        ("store", store.url or "sqlite (data dir)", source("store", "store_url")),
        *((k, str(getattr(store, k) or ""), source(k, k)) for k in _ETCD_KEYS),
        (_LEASE_GRACE_KEY, _grace_text(store), source(_LEASE_GRACE_KEY)),
        ("trust_domain", str(opts["trust_domain"] or file.get("trust_domain") or ""),
         source("trust_domain", "trust_domain")),
        ("log_level", options.log_level, source("log_level", "log_level")),
        ("log_format", "json" if options.json_logs else "text", source("log_format", "log_format")),
    ]  # fmt: skip
    for key, value in sorted(options.config_overrides.items()):
        from_flag = key == "max_svid_ttl" and opts["max_svid_ttl"]
        where = source_of(click_ctx, "max_svid_ttl") if from_flag else f"file {config_file}"
        if isinstance(value, str):  # an issuer URL
            rows.append((key, value, source(key, key)))
            continue
        rows.append((key, f"{int(value.total_seconds())}s", where or "default"))
    endpoint = options.federation.bundle_endpoint
    if endpoint is not None:
        where = source("federation", "bundle_endpoint")
        rows.append(("federation.bundle_endpoint", endpoint.address, where))
        rows.append(("federation.bundle_endpoint_profile", endpoint.profile.value, where))
    if "limits" in file:
        for field in dataclasses.fields(options.limits):
            rows.append((f"limits.{field.name}", str(getattr(options.limits, field.name)),
                         f"file {config_file}"))  # fmt: skip
    return tuple(rows)


def _grace_text(store: Any) -> str:
    """The etcd store's lease grace for the start-up log ("" for SQLite)."""
    from s2s.store.etcd_leases import DEFAULT_LEASE_GRACE  # noqa: PLC0415

    if not store.is_etcd:
        return ""
    return f"{int((store.lease_grace or DEFAULT_LEASE_GRACE).total_seconds())}s"


def _serve_store(opts: dict[str, Any], file: dict[str, Any]) -> Any:
    """The store settings of ``serve``: flags win over the config file, key by key."""
    values = {k: file.get(k) for k in ("store", *_ETCD_KEYS, _LEASE_GRACE_KEY)}
    values.update({k: opts[k] for k in _ETCD_KEYS if opts[k] is not None})
    if opts["store_url"]:
        values["store"] = opts["store_url"]
    return store_settings(values, opts["trust_domain"] or file.get("trust_domain"))


@click.command()
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
