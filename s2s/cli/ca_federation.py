"""``s2s-ca federation create|list|show|update|delete|refresh``: federation relationships with
other trust domains (their bundle endpoint URL and profile), kept by the running CA, whose
refresher fetches each bundle at its refresh hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from s2s.cli.ca_common import Ctx, call, emit_json, json_option, key_values, pass_ctx, table

__all__ = ["federation"]

_PATH = "/v1/federation"
_PROFILES = click.Choice(["https_spiffe", "https_web"])
_MAX_FILE = 1 << 20


@click.group()
def federation() -> None:
    """Federation relationships with other trust domains."""


def _read_bundle(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--bundle"
        ) from None
    if len(data) > _MAX_FILE:
        raise click.BadParameter(f"{path} is larger than {_MAX_FILE} bytes", param_hint="--bundle")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint="--bundle") from None


def _summary(rel: dict[str, Any]) -> tuple[str, ...]:
    bundle = rel.get("bundle") or {}
    status = rel.get("status") or {}
    return (
        rel["trust_domain"],
        rel["profile"],
        rel["bundle_endpoint_url"],
        str(bundle.get("sequence", "-")),
        f"{bundle['age_seconds']}s" if "age_seconds" in bundle else "-",
        (status.get("last_error") or "ok")[:60],
    )


def _show(rel: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(rel)
        return
    flat = {k: v for k, v in rel.items() if k not in ("bundle", "status")}
    for prefix in ("bundle", "status"):
        for key, value in (rel.get(prefix) or {}).items():
            flat[f"{prefix}.{key}"] = value
    if rel.get("bundle") is None:
        flat["bundle"] = "none yet"
    key_values(flat)


_endpoint_options = [
    click.option("--bundle-endpoint-url", "url", help="https URL of the bundle endpoint."),
    click.option("--profile", type=_PROFILES, help="How the endpoint is authenticated."),
    click.option("--endpoint-spiffe-id", help="The SPIFFE ID an https_spiffe endpoint presents."),
    click.option(
        "--bundle", "bundle_file", type=click.Path(dir_okay=False, path_type=Path),
        help="The trust domain's current bundle (SPIFFE JSON or PEM): verifies the first "
             "connection to a self-serving https_spiffe endpoint.",
    ),
]  # fmt: skip


def _endpoint(fn: Any) -> Any:
    for option in reversed(_endpoint_options):
        fn = option(fn)
    return fn


@federation.command("create")
@click.option("--trust-domain", required=True, help="The foreign trust domain, e.g. b.example.")
@_endpoint
@json_option
@pass_ctx
def federation_create(ctx: Ctx, /, trust_domain: str, as_json: bool, **opts: Any) -> None:
    """Federate with a trust domain: fetch its bundle from its bundle endpoint from now on."""
    if not opts["url"] or not opts["profile"]:
        raise click.UsageError(
            "give --bundle-endpoint-url URL and --profile https_spiffe|https_web"
        )
    if opts["profile"] == "https_spiffe" and not opts["endpoint_spiffe_id"]:
        raise click.UsageError("an https_spiffe endpoint needs --endpoint-spiffe-id ID")
    if opts["profile"] == "https_web" and opts["endpoint_spiffe_id"]:
        raise click.UsageError("an https_web endpoint is authenticated by Web PKI: no SPIFFE ID")
    body: dict[str, Any] = {
        "trust_domain": trust_domain,
        "bundle_endpoint_url": opts["url"],
        "profile": opts["profile"],
        "endpoint_spiffe_id": opts["endpoint_spiffe_id"],
        "bundle": _read_bundle(opts["bundle_file"]),
    }
    _show(call(lambda: ctx.client().post(_PATH, body)), as_json)


@federation.command("list")
@json_option
@pass_ctx
def federation_list(ctx: Ctx, as_json: bool) -> None:
    """List federation relationships, their bundle's sequence and age, and the last error."""
    found = call(lambda: ctx.client().get(_PATH))["relationships"]
    if as_json:
        emit_json(found)
        return
    table([_summary(r) for r in found], ["trust domain", "profile", "url", "seq", "age", "last"])


@federation.command("show")
@click.argument("trust_domain")
@json_option
@pass_ctx
def federation_show(ctx: Ctx, trust_domain: str, as_json: bool) -> None:
    """One relationship: endpoint, the bundle held (sequence, age) and the refresh status."""
    _show(call(lambda: ctx.client().get(f"{_PATH}/show", trust_domain=trust_domain)), as_json)


@federation.command("update")
@click.argument("trust_domain")
@_endpoint
@json_option
@pass_ctx
def federation_update(ctx: Ctx, /, trust_domain: str, as_json: bool, **opts: Any) -> None:
    """Change a relationship's endpoint (URL, profile, SPIFFE ID) or its bundle."""
    body: dict[str, Any] = {"trust_domain": trust_domain}
    if opts["url"]:
        body["bundle_endpoint_url"] = opts["url"]
    if opts["profile"]:
        body["profile"] = opts["profile"]
    if opts["endpoint_spiffe_id"]:
        body["endpoint_spiffe_id"] = opts["endpoint_spiffe_id"]
    bundle = _read_bundle(opts["bundle_file"])
    if bundle is not None:
        body["bundle"] = bundle
    if len(body) == 1:
        raise click.UsageError(
            "nothing to update: give --bundle-endpoint-url, --profile, --endpoint-spiffe-id "
            "or --bundle"
        )
    _show(call(lambda: ctx.client().post(f"{_PATH}/update", body)), as_json)


@federation.command("delete")
@click.argument("trust_domain")
@json_option
@pass_ctx
def federation_delete(ctx: Ctx, trust_domain: str, as_json: bool) -> None:
    """Stop fetching a trust domain's bundle (the bundle stays: s2s-ca bundle delete drops it)."""
    deleted = call(lambda: ctx.client().post(f"{_PATH}/delete", {"trust_domain": trust_domain}))
    if as_json:
        emit_json(deleted)
    else:
        click.echo(f"deleted the relationship with {deleted['trust_domain']}")


@federation.command("refresh")
@click.argument("trust_domain")
@json_option
@pass_ctx
def federation_refresh(ctx: Ctx, trust_domain: str, as_json: bool) -> None:
    """Fetch a trust domain's bundle now (the last good one stays if this fails)."""
    body = {"trust_domain": trust_domain}
    _show(call(lambda: ctx.client().post(f"{_PATH}/refresh", body)), as_json)
