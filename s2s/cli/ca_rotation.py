"""``s2s-ca authority prepare|activate|taint|revoke`` and ``s2s-ca rotate-root``.

Registered on the ``s2s-ca`` groups by ``s2s/cli/ca.py`` (:func:`register`).

``rotate-root`` exits 0 when the rotation finished (or, with ``--step``, when the step made
progress), and
:data:`EXIT_WAITING` (7) when it waits for something outside its control: agents that have not
picked up the new bundle (named in the output), replicas still signing under the old root, or
the old root's hold time. Every step is resumable: re-run the command after a crash or Ctrl-C.
``--new`` while a rotation is under way is a conflict (exit 5) that says where that one is.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import click

from s2s.ca.root_rotation import duration_text
from s2s.cli.ca_common import call, emit_json, json_option

__all__ = ["EXIT_WAITING", "register"]

EXIT_WAITING: Final = 7


def register(cli: click.Group, authority: click.Group) -> None:
    """Add the commands to the ``s2s-ca`` group and its ``authority`` subgroup."""
    for command in (authority_prepare, authority_activate, authority_taint, authority_revoke):
        authority.add_command(command)
    cli.add_command(rotate_root)


_kind_option = click.option(
    "--kind",
    type=click.Choice(["x509", "jwt"]),
    default="x509",
    show_default=True,
    help="Intermediate CA (x509) or JWT signing key (jwt).",
)
_id_option = click.option(
    "--id", "authority_id", help="The authority (default: this replica's only candidate)."
)


def _act(ctx: Any, action: str, kind: str, authority_id: str | None, as_json: bool) -> None:
    body: dict[str, Any] = {"kind": kind}
    if authority_id:
        body["id"] = authority_id
    done = call(lambda: ctx.client().post(f"/v1/authorities/{action}", body))
    if as_json:
        emit_json(done)
    else:
        for key in ("id", "kind", "state", "owner", "not_after"):
            click.echo(f"{key:<9}  {done.get(key, '')}")


@click.command("prepare")
@_kind_option
@json_option
@click.pass_obj
def authority_prepare(ctx: Any, kind: str, as_json: bool) -> None:
    """Prepare a new authority for the replica answering (a JWT key joins the bundle now)."""
    _act(ctx, "prepare", kind, None, as_json)


def _transition(action: str, help_text: str) -> click.Command:
    """``authority <action> [--kind] [--id] [--json]``: move one authority to its next state."""

    @click.command(action, help=help_text)
    @_kind_option
    @_id_option
    @json_option
    @click.pass_obj
    def command(ctx: Any, kind: str, authority_id: str | None, as_json: bool) -> None:
        _act(ctx, action, kind, authority_id, as_json)

    return command


authority_activate = _transition(
    "activate", "Activate a prepared authority; the active one becomes old."
)
authority_taint = _transition(
    "taint", "Taint an old authority: agents re-issue everything it signed at once."
)
authority_revoke = _transition(
    "revoke",
    "Revoke a tainted authority (an intermediate's serial is revoked; a JWT key leaves the\n"
    "bundle).",
)


# ---- rotate-root ------------------------------------------------------------------------------


_WAITS: Final = {
    "federation": "federated trust domains to fetch the new root (three bundle refresh hints)",
    "agents": "every live agent to hold the new bundle (they fetch it on their next sync)",
    "replicas": "every CA replica to sign under the new root (on its next authority check)",
    "lifetime": "the hold time: everything signed under the old root expires",
}


def _show(progress: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(progress)
        return
    click.echo(f"[{progress['phase']}] {progress['message']}")
    for agent in progress.get("lagging_agents", []):
        click.echo(f"  agent {agent['spiffe_id']} holds bundle sequence {agent['bundle_sequence']}")
    for replica in progress.get("lagging_replicas", []):
        click.echo(f"  replica {replica} still signs under the old root")
    if _waiting(progress):
        click.echo(f"  waiting for {_WAITS.get(progress['waiting_for'], progress['waiting_for'])}")
    if progress.get("eta") and not progress["done"]:
        click.echo(f"  finishes at the earliest at {progress['eta']}{_in(progress['eta'])}")


def _in(when: str) -> str:
    left = (datetime.fromisoformat(when) - datetime.now(UTC)).total_seconds()
    return f" (in {duration_text(timedelta(seconds=max(0, round(left))))})"


def _announce_hold(progress: dict[str, Any]) -> None:
    """Before a rotation starts: how long it holds the old root, and why (from the settings)."""
    click.echo(
        f"rotate-root keeps the old root in the bundle for {progress['hold_reason']};"
        " with agents that sync promptly the rotation takes about"
        f" {duration_text(timedelta(seconds=progress['hold_seconds']))}"
        " (interrupt it any time; re-run s2s-ca rotate-root to resume)"
    )


def _waiting(progress: dict[str, Any]) -> bool:
    return bool(progress["waiting_for"]) and not progress["done"]


def _starts(progress: dict[str, Any], new: bool) -> bool:
    return progress["state"] is None or (progress["done"] and new)


@click.command("rotate-root")
@click.option("--step", "one_step", is_flag=True, help="Run one step only (exit 7 if waiting).")
@click.option("--status", "status_only", is_flag=True, help="Show where the rotation is.")
@click.option(
    "--new",
    "new",
    is_flag=True,
    help="Start another rotation after a finished one (refused, exit 5, during one).",
)
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between checks.")
@click.option(
    "--report-every",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between progress lines while nothing changes.",
)
@click.option("--timeout", type=float, help="Give up (exit 7) if still waiting after this long.")
@json_option
@click.pass_obj
def rotate_root(
    ctx: Any,
    *,
    one_step: bool,
    status_only: bool,
    new: bool,
    poll: float,
    report_every: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Rotate the trust domain's root: prepare -> every live agent holds the new bundle ->
    activate -> every replica signs under the new root -> hold (longest SVID lifetime plus
    skew; 1h0m30s with the default settings) -> retire. Resumable at any point."""
    client = ctx.client()
    if status_only:
        progress = call(lambda: client.get("/v1/root-rotation"))
        _show(progress, as_json)
        return
    if not as_json:
        before = call(lambda: client.get("/v1/root-rotation"))
        if _starts(before, new):
            _announce_hold(before)
    if one_step:
        progress = call(lambda: client.post("/v1/root-rotation/step", {"new": new}))
        _show(progress, as_json)
        sys.exit(EXIT_WAITING if _waiting(progress) and not progress["changed"] else 0)
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    reported = time.monotonic()
    while True:
        progress = call(partial(client.post, "/v1/root-rotation/step", {"new": new}))
        new = False  # only the first step may start a rotation
        shown = (progress["phase"], progress["message"])
        if shown != last or time.monotonic() - reported >= report_every:
            _show(progress, as_json)
            last, reported = shown, time.monotonic()
        if progress["done"] or (not _waiting(progress) and not progress["changed"]):
            return
        if progress["changed"]:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            click.echo("still waiting; re-run s2s-ca rotate-root to resume", err=True)
            sys.exit(EXIT_WAITING)
        time.sleep(poll)
