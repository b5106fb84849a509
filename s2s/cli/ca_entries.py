"""``s2s-ca entry create|list|show|update|delete``: registration entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click

from s2s.cli.ca_common import (
    DURATION,
    Ctx,
    call,
    emit_json,
    json_option,
    key_values,
    pass_ctx,
    table,
)
from s2s.core.errors import NotFound

__all__ = ["entry"]


@click.group()
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
    click.option(
        "--federates-with",
        "federates_with",
        multiple=True,
        help="A trust domain whose bundle its workloads get (repeat; replaces on update).",
    ),
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


_filter_options = [
    click.option("--parent-id", help="Only entries of this agent."),
    click.option("--spiffe-id", help="Only entries for this SPIFFE ID."),
    click.option(
        "--selector",
        "selectors",
        multiple=True,
        help="type:value (repeat): only entries that have every one given.",
    ),
    click.option(
        "--federates-with",
        "federates_with",
        multiple=True,
        help="A trust domain (repeat): only entries that federate with every one given.",
    ),
]


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_filter_options):
        fn = option(fn)
    return fn


def _filters(
    parent_id: str | None,
    spiffe_id: str | None,
    selectors: tuple[str, ...],
    federates_with: tuple[str, ...] = (),
) -> Any:
    """Query parameters for GET /v1/entries (the CA parses and checks them)."""
    query: dict[str, str | list[str]] = {}
    if federates_with:
        query["federates_with"] = list(federates_with)
    if parent_id is not None:
        query["parent_id"] = parent_id
    if spiffe_id is not None:
        query["spiffe_id"] = spiffe_id
    if selectors:
        query["selector"] = list(selectors)
    return query


@entry.command("list")
@filter_options
@json_option
@pass_ctx
def entry_list(
    ctx: Ctx,
    /,
    *,
    parent_id: str | None,
    spiffe_id: str | None,
    selectors: tuple[str, ...],
    federates_with: tuple[str, ...],
    as_json: bool,
) -> None:
    """List registration entries; the filters given combine (an entry matches all of them)."""
    query = _filters(parent_id, spiffe_id, selectors, federates_with)
    entries = call(lambda: ctx.client().get("/v1/entries", **query))["entries"]
    emit_json(entries) if as_json else _entry_rows(entries)


@entry.command("show")
@click.argument("entry_id", required=False)
@filter_options
@json_option
@pass_ctx
def entry_show(
    ctx: Ctx,
    /,
    entry_id: str | None,
    *,
    parent_id: str | None,
    spiffe_id: str | None,
    selectors: tuple[str, ...],
    federates_with: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show one entry by ID, or every entry the filters match (--selector, --parent-id,
    --spiffe-id, --federates-with; exit 4 when none does)."""
    query = _filters(parent_id, spiffe_id, selectors, federates_with)
    if entry_id is not None:
        if query:
            raise click.UsageError("give an entry ID or filters, not both")
        found = call(lambda: ctx.client().get(f"/v1/entries/{_segment(entry_id)}"))
        emit_json(found) if as_json else key_values(found)
        return
    if not query:
        raise click.UsageError(
            "give an entry ID, or --selector/--parent-id/--spiffe-id/--federates-with"
        )
    entries = call(lambda: ctx.client().get("/v1/entries", **query))["entries"]
    if not entries:
        raise NotFound("no entry matches " + _described(query))
    if as_json:
        emit_json(entries)
        return
    for index, one in enumerate(entries):
        if index:
            click.echo()
        key_values(one)


def _described(query: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in query.items() if k != "selector"]
    parts = [p for p in parts if not p.startswith("federates_with=")]
    parts += [f"selector={s}" for s in query.get("selector", [])]
    parts += [f"federates_with={t}" for t in query.get("federates_with", [])]
    return " and ".join(parts)


@entry.command("update")
@click.argument("entry_id")
@click.option("--spiffe-id")
@click.option("--parent-id")
@entry_options
@click.option(
    "--no-federation", is_flag=True, help="Federate with no trust domain (clears the list)."
)
@json_option
@pass_ctx
def entry_update(
    ctx: Ctx, /, entry_id: str, as_json: bool, no_federation: bool, **opts: Any
) -> None:
    """Change fields of an entry (the ones given)."""
    if no_federation and opts["federates_with"]:
        raise click.UsageError("give --federates-with or --no-federation, not both")
    body = _entry_body(opts)
    if no_federation:
        body["federates_with"] = []
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
