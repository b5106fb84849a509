"""``s2s-ca bundle show`` and ``s2s-ca authority list`` (the rotation subcommands of
``authority`` are in ``ca_rotation``)."""

from __future__ import annotations

import json

import click

from s2s.cli.ca_common import Ctx, call, emit_json, json_option, pass_ctx, table

__all__ = ["authority", "bundle"]


@click.group()
def bundle() -> None:
    """This trust domain's bundle (show) and other trust domains' (set, list, delete)."""


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


@click.group()
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
