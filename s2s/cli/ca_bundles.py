"""``s2s-ca bundle set|list|delete``: the bundles of other trust domains (federated bundles) that
the CA hands to the agents whose entries federate with them (``bundle show`` prints our own)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from s2s.cli.ca_common import Ctx, call, emit_json, json_option, key_values, pass_ctx, table
from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.errors import InvalidRequest
from s2s.core.spiffe_id import TrustDomain

__all__ = ["register"]

_PATH = "/v1/federation/bundles"
_F = TypeVar("_F", bound=Callable[..., Any])


def register(bundle: click.Group) -> None:
    """Add the commands to the ``s2s-ca bundle`` group."""
    for command in (bundle_set, bundle_list, bundle_delete):
        bundle.add_command(command)


def _read_bundle_file(path: Path) -> str:
    """The file's text: at most MAX_BUNDLE_BYTES of UTF-8 (the CA checks the document)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise InvalidRequest(f"{path} is larger than {MAX_BUNDLE_BYTES} bytes: not a bundle")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path} is not UTF-8 text: not a SPIFFE bundle") from None


def _format_option(help_text: str) -> Callable[[_F], _F]:
    """``--format spiffe|pem`` (default spiffe), explained by ``help_text``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["spiffe", "pem"]),
        default="spiffe",
        show_default=True,
        help=help_text,
    )


def _show(record: dict[str, Any]) -> None:
    shown = {k: v for k, v in record.items() if k != "bundle"}
    key_values(shown)


@click.command("set")
@click.option("--trust-domain", required=True, help="The foreign trust domain (e.g. b.test).")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Its bundle, e.g. the output of `s2s-ca bundle show --format spiffe` over there.",
)
@_format_option("spiffe: a SPIFFE bundle (JSON, X.509 and JWT keys); pem: X.509 roots only.")
@json_option
@pass_ctx
def bundle_set(ctx: Ctx, trust_domain: str, path: Path, fmt: str, as_json: bool) -> None:
    """Set (or replace) the bundle of another trust domain, by hand."""
    text = call(lambda: _read_bundle_file(path))
    body = {"trust_domain": trust_domain, "bundle": text, "format": fmt}
    record = call(lambda: ctx.client().post(_PATH, body))
    emit_json(record) if as_json else _show(record)


@click.command("list")
@click.option("--trust-domain", help="Print this trust domain's bundle itself (exit 4: none).")
@_format_option("With --trust-domain: the SPIFFE bundle JSON, or its X.509 roots as PEM.")
@json_option
@pass_ctx
def bundle_list(ctx: Ctx, trust_domain: str | None, fmt: str, as_json: bool) -> None:
    """List the federated bundles (other trust domains' bundles), or print one."""
    if trust_domain is not None:
        found = call(lambda: ctx.client().get(f"{_PATH}/show", trust_domain=trust_domain))
        if as_json:
            emit_json(found)
        elif fmt == "pem":
            td = TrustDomain.parse(found["trust_domain"])
            bundle = call(lambda: Bundle.decode(td, json.dumps(found["bundle"])))
            click.echo(bundle.x509_pem().decode().rstrip("\n"))
        else:
            click.echo(json.dumps(found["bundle"], indent=2))
        return
    records = call(lambda: ctx.client().get(_PATH))["bundles"]
    if as_json:
        emit_json(records)
        return
    rows = [
        (
            r["trust_domain"],
            r["source"],
            r["sequence"],
            r["x509_authorities"],
            r["jwt_authorities"],
            r["updated_at"],
            r["refreshed_at"],
        )
        for r in records
    ]
    table(rows, ["trust domain", "source", "sequence", "roots", "jwt keys", "updated", "refreshed"])


@click.command("delete")
@click.argument("trust_domain")
@click.option(
    "--force", is_flag=True, help="Delete even while entries federate with it (exit 5 without)."
)
@json_option
@pass_ctx
def bundle_delete(ctx: Ctx, trust_domain: str, force: bool, as_json: bool) -> None:
    """Delete the federated bundle of a trust domain (workloads stop receiving it)."""
    body = {"trust_domain": trust_domain, "force": force}
    deleted = call(lambda: ctx.client().post(f"{_PATH}/delete", body))
    emit_json(deleted) if as_json else click.echo(f"deleted {deleted['trust_domain']}")
