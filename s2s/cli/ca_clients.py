"""``s2s-ca client create|list|show|update|delete|rotate-secret``: OAuth clients of the CA's
token service (docs/oauth.md). A secret is printed once, when it is created."""

from __future__ import annotations

from typing import Any

import click

from s2s.cli.ca_common import Ctx, call, emit_json, json_option, key_values, pass_ctx, table

__all__ = ["client"]

_PATH = "/v1/oauth/clients"


@click.group()
def client() -> None:
    """OAuth clients of the token service."""


def _rows(clients: list[dict[str, Any]]) -> None:
    rows = [
        (c["client_id"], c["auth"], " ".join(c["scopes"]), " ".join(c["audiences"]))
        for c in clients
    ]
    table(rows, ["client id", "auth", "scopes", "audiences"])


def _show_created(created: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(created)
        return
    click.echo(created["client_id"])
    if "client_secret" in created:
        click.echo(created["client_secret"])
        click.echo("keep this secret now: it is not shown again", err=True)


@client.command("create")
@click.option("--spiffe-id", help="An SVID client: it authenticates with its SVIDs.")
@click.option("--client-id", help="A secret client (with --secret).")
@click.option("--secret", "with_secret", is_flag=True, help="Generate its secret (shown once).")
@click.option("--scope", "scopes", multiple=True, help="A scope it may ask for (repeat).")
@click.option("--audience", "audiences", multiple=True, required=True, help="Repeatable.")
@json_option
@pass_ctx
def client_create(ctx: Ctx, /, as_json: bool, **opts: Any) -> None:
    """Register an OAuth client: --spiffe-id ID, or --client-id NAME --secret."""
    spiffe_id, client_id, with_secret = opts["spiffe_id"], opts["client_id"], opts["with_secret"]
    if (spiffe_id is None) == (client_id is None):
        raise click.UsageError("give --spiffe-id ID or --client-id NAME --secret")
    if client_id is not None and not with_secret:
        raise click.UsageError("a --client-id client authenticates with a secret: add --secret")
    if spiffe_id is not None and with_secret:
        raise click.UsageError("an SVID client has no secret: leave out --secret")
    body: dict[str, Any] = {"scopes": list(opts["scopes"]), "audiences": list(opts["audiences"])}
    body.update({"spiffe_id": spiffe_id} if spiffe_id else {"client_id": client_id})
    _show_created(call(lambda: ctx.client().post(_PATH, body)), as_json)


@client.command("list")
@json_option
@pass_ctx
def client_list(ctx: Ctx, as_json: bool) -> None:
    """List OAuth clients."""
    clients = call(lambda: ctx.client().get(_PATH))["clients"]
    emit_json(clients) if as_json else _rows(clients)


@client.command("show")
@click.argument("client_id")
@json_option
@pass_ctx
def client_show(ctx: Ctx, client_id: str, as_json: bool) -> None:
    """Show one OAuth client (never its secret)."""
    found = call(lambda: ctx.client().get(f"{_PATH}/show", client_id=client_id))
    emit_json(found) if as_json else key_values(found)


@client.command("update")
@click.argument("client_id")
@click.option("--scope", "scopes", multiple=True, help="The scopes it may ask for (replaces).")
@click.option("--audience", "audiences", multiple=True, help="Its audiences (replaces).")
@json_option
@pass_ctx
def client_update(
    ctx: Ctx, client_id: str, scopes: tuple[str, ...], audiences: tuple[str, ...], as_json: bool
) -> None:
    """Change the scopes or audiences of a client."""
    body: dict[str, Any] = {"client_id": client_id}
    if scopes:
        body["scopes"] = list(scopes)
    if audiences:
        body["audiences"] = list(audiences)
    if len(body) == 1:
        raise click.UsageError("nothing to update: give --scope or --audience")
    updated = call(lambda: ctx.client().post(f"{_PATH}/update", body))
    emit_json(updated) if as_json else key_values(updated)


@client.command("delete")
@click.argument("client_id")
@json_option
@pass_ctx
def client_delete(ctx: Ctx, client_id: str, as_json: bool) -> None:
    """Delete an OAuth client."""
    deleted = call(lambda: ctx.client().post(f"{_PATH}/delete", {"client_id": client_id}))
    emit_json(deleted) if as_json else click.echo(f"deleted {deleted['client_id']}")


@client.command("rotate-secret")
@click.argument("client_id")
@click.option("--finish", is_flag=True, help="Drop the previous secret (keep only the newest).")
@json_option
@pass_ctx
def client_rotate_secret(ctx: Ctx, client_id: str, finish: bool, as_json: bool) -> None:
    """A new secret valid beside the current one (printed once); --finish ends the overlap."""
    body = {"client_id": client_id, "finish": finish}
    rotated = call(lambda: ctx.client().post(f"{_PATH}/rotate-secret", body))
    if finish and not as_json:
        click.echo(f"{client_id}: only the newest secret is valid now")
        return
    _show_created(rotated, as_json)
