"""What the s2s CLIs do when something fails: the exit codes (each program's table, shown at the
end of its ``--help``), and the error on stderr, as ``error: <message>`` for people or, when the
command line has ``--json``, as one JSON object for scripts::

    {"error": "not_found", "message": "no entry 3f2a...", "code": 4}

``error`` is the error's wire code (the ``error`` field of the CA's JSON answers, see
``s2s.core.errors``), ``usage_error`` for a command line click refuses, ``aborted`` for Ctrl-C;
``code`` is the exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

import click

from s2s.core import errors
from s2s.core.errors import S2SError

__all__ = [
    "AGENT_EXIT_CODES_HELP",
    "CA_EXIT_CODES_HELP",
    "EXIT_CODES",
    "exit_code_for",
    "fail",
    "report_error",
    "run_cli",
    "wants_json",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_REFUSED = (
    range(7)
)
EXIT_TRUST_BUNDLE_MISMATCH, EXIT_TRUST_DOMAIN_MISMATCH, EXIT_NOT_A_CA = 7, 8, 9
EXIT_CODES: dict[type[S2SError], int] = {
    errors.Unavailable: EXIT_UNAVAILABLE,
    errors.NotFound: EXIT_NOT_FOUND,
    errors.Conflict: EXIT_CONFLICT,
    errors.NotAuthorized: EXIT_REFUSED,
    errors.Revoked: EXIT_REFUSED,
    errors.AttestationFailed: EXIT_REFUSED,
    errors.InvalidToken: EXIT_REFUSED,
    errors.InvalidConfig: EXIT_ERROR,
    # s2s-agent run: the server at the CA URL is not the CA configured (never retried)
    errors.TrustBundleMismatch: EXIT_TRUST_BUNDLE_MISMATCH,
    errors.TrustDomainMismatch: EXIT_TRUST_DOMAIN_MISMATCH,
    errors.NotACa: EXIT_NOT_A_CA,
    errors.InvalidRequest: EXIT_USAGE,
    errors.InvalidSpiffeId: EXIT_USAGE,
    errors.InvalidSelector: EXIT_USAGE,
    errors.InvalidSvid: EXIT_USAGE,
    errors.InvalidBundle: EXIT_USAGE,
}

USAGE_ERROR: Final = "usage_error"
_JSON_NOTE: Final = """With --json, an error is one JSON object on stderr:
  {"error": <code above>, "message": <text>, "code": <exit code>}"""
# "\b" keeps click from rewrapping the table.
CA_EXIT_CODES_HELP: Final = f"""\b
Exit codes:
  0  success
  1  error on the CA's side, a bad configuration (invalid_config), unexpected
  2  bad usage or invalid input (usage_error, invalid_request, invalid_spiffe_id,
     invalid_selector, invalid_svid, invalid_bundle)
  3  the CA is not reachable or not ready (unavailable, store_error)
  4  not found (not_found)
  5  conflict: it already exists, or another change won a race (conflict)
  6  refused (not_authorized, revoked, attestation_failed, invalid_token)
  7  rotate-root only: still waiting for agents, replicas or the hold time;
     re-run it to resume
{_JSON_NOTE}
"""
AGENT_EXIT_CODES_HELP: Final = f"""\b
Exit codes:
  0  success
  1  error: a bad configuration (invalid_config) or unexpected
  2  bad usage or invalid input (usage_error, invalid_request, ...)
  3  the agent (or, for run, the CA) is not reachable (unavailable)
  6  refused: no identity for this process (not_authorized), JWT-SVID
     rejected (invalid_token), join token refused (attestation_failed)
  7  run: the CA's certificate does not chain to the trust bundle
     (trust_bundle_mismatch): re-export it with s2s-ca bundle show
  8  run: the CA at the CA URL serves another trust domain
     (trust_domain_mismatch)
  9  run: the CA URL does not lead to an s2s CA (not_a_ca)
{_JSON_NOTE}
"""


def exit_code_for(exc: S2SError) -> int:
    """The exit code for an error (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_ERROR


def report_error(error: str, message: str, code: int, *, as_json: bool) -> None:
    """Write one error to stderr, for people or (``as_json``) for scripts."""
    if as_json:
        doc = {"error": error, "message": message, "code": code}
        click.echo(json.dumps(doc), err=True)
    else:
        click.echo(f"error: {message}", err=True)


def fail(exc: S2SError) -> NoReturn:
    """Report ``exc`` the way the running command was asked to (``--json`` or not) and exit
    with its code."""
    code = exit_code_for(exc)
    report_error(exc.code, str(exc), code, as_json=_json_requested())
    sys.exit(code)


def _json_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def wants_json(args: Sequence[str]) -> bool:
    """Whether a command line asks for JSON (``--json`` before any ``--``): known before click
    parses it, so that usage errors are JSON too."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def run_cli(group: click.Group, prog: str, argv: Sequence[str] | None) -> int:
    """Run a CLI group and return its exit code; every failure is reported on stderr (JSON with
    ``--json``), never as a traceback of click or of s2s."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(args)
    try:
        group.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        report_error("aborted", "aborted", EXIT_ERROR, as_json=as_json)
        return EXIT_ERROR
    except click.ClickException as exc:
        if as_json:
            error = USAGE_ERROR if isinstance(exc, click.UsageError) else "error"
            report_error(error, exc.format_message(), exc.exit_code, as_json=True)
        else:
            exc.show()
        return exc.exit_code
    except S2SError as exc:
        code = exit_code_for(exc)
        report_error(exc.code, str(exc), code, as_json=as_json)
        return code
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        report_error("error", str(exc.code), EXIT_ERROR, as_json=as_json)
        return EXIT_ERROR
    return EXIT_OK
