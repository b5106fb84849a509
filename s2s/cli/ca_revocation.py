"""``s2s-ca revoke``, ``s2s-ca revocations list`` and ``s2s-ca crl``."""

from __future__ import annotations

import base64
import sys
import textwrap

import click

from s2s.cli.ca_common import Ctx, call, emit_json, json_option, pass_ctx, table

__all__ = ["crl", "revocations", "revoke"]


@click.command()
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


@click.group()
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


@click.command()
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
