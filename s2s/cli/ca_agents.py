"""``s2s-ca token generate`` and ``s2s-ca agent list|show|evict|ban``: join tokens and the
agents that attested with them."""

from __future__ import annotations

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

__all__ = ["agent", "token"]


@click.group()
def token() -> None:
    """Join tokens for agents."""


@token.command("generate")
@click.option("--ttl", type=DURATION, help="How long the token stays usable (default 10m).")
@json_option
@pass_ctx
def token_generate(ctx: Ctx, ttl: int | None, as_json: bool) -> None:
    """Create a single-use join token (printed once; the CA keeps only its hash) and print it, the
    SPIFFE ID the agent attesting with it gets (the --parent-id of its entries) and its expiry."""
    created = call(lambda: ctx.client().post("/v1/tokens", {"ttl": ttl} if ttl else {}))
    if as_json:
        emit_json(created)
        return
    click.echo(created["token"])  # first line alone: TOKEN=$(s2s-ca token generate | head -n1)
    click.echo(f"agent SPIFFE ID: {created['agent_id']}  (the --parent-id of its entries)")
    click.echo(f"expires: {created['expires_at']}  (single use)")


@click.group()
def agent() -> None:
    """Attested agents."""


@agent.command("list")
@click.option("--attestation-type", help="Only agents attested this way (e.g. join_token).")
@click.option(
    "--banned/--not-banned", default=None, help="Only banned agents, or only agents not banned."
)
@click.option(
    "--expires-before",
    help="Only agents whose SVID expires before this time (ISO 8601 with a zone, e.g."
    " 2026-01-02T03:04:05Z).",
)
@json_option
@pass_ctx
def agent_list(
    ctx: Ctx,
    /,
    *,
    attestation_type: str | None,
    banned: bool | None,
    expires_before: str | None,
    as_json: bool,
) -> None:
    """List attested agents; the filters given combine (an agent matches all of them)."""
    query = {}
    if attestation_type is not None:
        query["attestation_type"] = attestation_type
    if banned is not None:
        query["banned"] = "true" if banned else "false"
    if expires_before is not None:
        query["expires_before"] = expires_before
    agents = call(lambda: ctx.client().get("/v1/agents", **query))["agents"]
    if as_json:
        emit_json(agents)
        return
    rows = [
        (a["spiffe_id"], a["attestation_type"], a["serial"], a["not_after"],
         a.get("bundle_sequence", ""), "yes" if a["banned"] else "")
        for a in agents
    ]  # fmt: skip
    table(rows, ["spiffe id", "attestation", "serial", "expires", "bundle", "banned"])


_SHOWN = (
    ("spiffe_id", "spiffe id"),
    ("attestation_type", "attestation"),
    ("address", "address"),
    ("first_seen", "first seen"),
    ("last_seen", "last seen"),
    ("serial", "svid serial"),
    ("not_after", "svid expires"),
    ("next_serial", "next serial"),
    ("entries", "entries"),
    ("bundle_sequence", "bundle"),
    ("banned", "banned"),
)


@agent.command("show")
@click.argument("spiffe_id")
@json_option
@pass_ctx
def agent_show(ctx: Ctx, spiffe_id: str, as_json: bool) -> None:
    """Show one agent: where it last called from, first and last seen (to within a minute),
    its SVID's serial and expiry, and how many entries it serves (is the parent of)."""
    found = call(lambda: ctx.client().get("/v1/agents/show", spiffe_id=spiffe_id))
    if as_json:
        emit_json(found)
        return
    shown = {label: found.get(key) for key, label in _SHOWN}
    if found.get("last_seen") is None:
        shown["last seen"] = "not since it attested"
    shown["banned"] = "yes" if found.get("banned") else "no"
    key_values(shown)


def _agent_action(action: str, done_word: str, help_text: str) -> click.Command:
    """``agent <action> SPIFFE_ID [--json]``: POST /v1/agents/<action>, say what was done."""

    @agent.command(action, help=help_text)
    @click.argument("spiffe_id")
    @json_option
    @pass_ctx
    def command(ctx: Ctx, spiffe_id: str, as_json: bool) -> None:
        done = call(lambda: ctx.client().post(f"/v1/agents/{action}", {"spiffe_id": spiffe_id}))
        emit_json(done) if as_json else click.echo(f"{done_word} {spiffe_id}")

    return command


agent_evict = _agent_action(
    "evict", "evicted", "Forget an agent: it must attest again with a new join token."
)
agent_ban = _agent_action(
    "ban", "banned", "Ban an agent: every call it makes is refused until it is evicted."
)
