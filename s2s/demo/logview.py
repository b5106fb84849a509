"""The demo's readable log: one prefixed line per thing worth seeing, from the JSON the CA, the
agent and the workloads write, plus a tally the launcher uses for its summary and exit status.

    16:31:02 ca     | issued workload X509-SVID spiffe://demo.s2s.test/client serial 3f0a..
    16:31:03 client | GET /hello -> 200 from spiffe://demo.s2s.test/server (it saw us as ...)

Lines that are not JSON are shown as they are; JSON lines the view does not know are shown only
with ``verbose`` (warnings and errors always are).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

__all__ = ["LogView", "Tally"]

_WIDTH: Final = 7
_COLORS: Final = {
    "demo": "1",
    "ca": "36",
    "agent": "35",
    "server": "32",
    "client": "34",
}
_ALWAYS_LEVELS: Final = frozenset({"warning", "error", "critical"})


@dataclass
class Tally:
    """What happened, counted from the events (read by the launcher and its summary)."""

    identities: dict[str, int] = field(default_factory=dict)  # role -> SVIDs received
    rotations: dict[str, int] = field(default_factory=dict)  # role -> rotations seen
    serials: dict[str, str] = field(default_factory=dict)  # role -> current serial
    responses_ok: int = 0
    requests_served: int = 0
    failures: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # reason -> server-side refusals
    probe_refused: int = 0
    probe_accepted: int = 0
    pinned_serial: str | None = None
    listening: str | None = None  # the server's address
    ca_address: str | None = None
    agent_id: str | None = None
    agent_ready: bool = False
    last_ok_serial: str | None = None
    last_ok_after_failure: float | None = None
    last_failure: float | None = None


def _short(serial: object) -> str:
    text = str(serial or "")
    return text if len(text) <= 10 else text[:8] + ".."


def _until(fields: dict[str, Any]) -> str:
    value = str(fields.get("not_after") or "")
    return value[11:19] if len(value) >= 19 and value[10] == "T" else value


class LogView:
    """Formats child output; ``write`` is where lines go (stdout by default)."""

    def __init__(
        self,
        *,
        verbose: bool = False,
        stream: TextIO | None = None,
        color: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self.clock = clock
        self.tally = Tally()

    # -- output -------------------------------------------------------------------------------

    def say(self, source: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.clock()))
        name = source.ljust(_WIDTH)
        if self.color:
            name = f"\x1b[{_COLORS.get(source, '0')}m{name}\x1b[0m"
        self.stream.write(f"{stamp} {name}| {text}\n")
        self.stream.flush()

    def line(self, source: str, _stream: str, raw: str) -> None:
        """One line of a child's stdout or stderr."""
        if not raw.strip():
            return
        try:
            fields = json.loads(raw)
        except ValueError:
            self.say(source, raw)
            return
        if not isinstance(fields, dict):
            self.say(source, raw)
            return
        text = self.describe(source, fields)
        if text is None and (self.verbose or fields.get("level") in _ALWAYS_LEVELS):
            text = _generic(fields)
        if text:
            self.say(source, text)

    # -- events -------------------------------------------------------------------------------

    def describe(self, source: str, f: dict[str, Any]) -> str | None:
        """The readable text for a known event (updating the tally), or None."""
        event = str(f.get("event", ""))
        if event.startswith("demo."):
            return self._workload(event.removeprefix("demo."), f)
        handler = _EVENTS.get(event)
        if handler is not None:
            return handler(self, f)
        if "revo" in event or "crl" in event:
            return _generic(f)
        return None

    def _workload(self, event: str, f: dict[str, Any]) -> str | None:
        role = str(f.get("role", "?"))
        method = getattr(self, f"_wl_{event}", None)
        return None if method is None else str(method(role, f))

    def _wl_waiting(self, role: str, f: dict[str, Any]) -> str:
        uid = f.get("uid")
        who = f"as uid {uid}" if uid is not None else "as the launcher's uid"
        return f"started {who}; asking the agent for an identity (Workload API)"

    def _wl_identity(self, role: str, f: dict[str, Any]) -> str:
        t = self.tally
        t.identities[role] = t.identities.get(role, 0) + 1
        t.serials[role] = str(f.get("serial"))
        if f.get("rotation"):
            t.rotations[role] = t.rotations.get(role, 0) + 1
            return (
                f"ROTATED: new X509-SVID serial {_short(f.get('serial'))} "
                f"(until {f.get('not_after')}), replacing {_short(f.get('previous'))}; "
                "no restart, no dropped connection"
            )
        return (
            f"got identity {f.get('spiffe_id')} serial {_short(f.get('serial'))} "
            f"(until {f.get('not_after')})"
        )

    def _wl_listening(self, role: str, f: dict[str, Any]) -> str:
        self.tally.listening = str(f.get("address"))
        allowed = ", ".join(f.get("allowed") or []) or "any SVID of the trust domain"
        return f"serving https://{f.get('address')}/hello over mTLS; callers allowed: {allowed}"

    def _wl_request(self, role: str, f: dict[str, Any]) -> str:
        self.tally.requests_served += 1
        return f"request {f.get('path')} from {f.get('peer')} (verified client SVID)"

    def _wl_response(self, role: str, f: dict[str, Any]) -> str:
        t = self.tally
        t.responses_ok += 1
        t.last_ok_serial = str(f.get("serial"))
        recovered = ""
        if t.last_failure is not None and (
            t.last_ok_after_failure is None or t.last_ok_after_failure < t.last_failure
        ):
            t.last_ok_after_failure = self.clock()
            recovered = "  <- RECOVERED"
        return (
            f"GET /hello -> {f.get('status')} from {f.get('server')} "
            f"(it saw us as {f.get('seen_as')}; our serial {_short(f.get('serial'))}){recovered}"
        )

    def _wl_response_failed(self, role: str, f: dict[str, Any]) -> str:
        self.tally.failures += 1
        self.tally.last_failure = self.clock()
        return f"GET /hello FAILED with serial {_short(f.get('serial'))}: {f.get('error')}"

    def _wl_refused(self, role: str, f: dict[str, Any]) -> str:
        reason = str(f.get("reason"))
        if role == "server":
            self.tally.refusals[reason] = self.tally.refusals.get(reason, 0) + 1
            return f"REFUSED a client in the TLS handshake: {reason}"
        return f"refused the server's certificate: {reason}"

    def _wl_pinned(self, role: str, f: dict[str, Any]) -> str:
        self.tally.pinned_serial = str(f.get("serial"))
        return f"kept a copy of its current SVID, serial {_short(f.get('serial'))}"

    def _wl_probe(self, role: str, f: dict[str, Any]) -> str:
        self.tally.probe_accepted += 1
        return f"probe with the kept SVID {_short(f.get('serial'))}: still accepted"

    def _wl_probe_failed(self, role: str, f: dict[str, Any]) -> str:
        self.tally.probe_refused += 1
        return f"probe with the kept SVID {_short(f.get('serial'))}: REFUSED ({f.get('error')})"

    def _wl_error(self, role: str, f: dict[str, Any]) -> str:
        return f"error: {f.get('error')}"

    def _wl_stopped(self, role: str, f: dict[str, Any]) -> str:
        return "stopped"


def _generic(f: dict[str, Any]) -> str:
    skip = {"ts", "logger", "event", "level", "audit_event"}
    rest = " ".join(f"{k}={v}" for k, v in f.items() if k not in skip)
    level = str(f.get("level", ""))
    mark = f"{level.upper()} " if level in _ALWAYS_LEVELS else ""
    return f"{mark}{f.get('event', '')} {rest}".rstrip()


def _ca_started(view: LogView, f: dict[str, Any]) -> str:
    view.tally.ca_address = str(f.get("address"))
    return f"CA for {f.get('trust_domain')} serving on https://{f.get('address')}"


def _x509_issued(view: LogView, f: dict[str, Any]) -> str:
    kind = f.get("kind", "workload")
    what = {"server": "its own HTTPS", "agent": "agent", "workload": "workload"}.get(
        str(kind), str(kind)
    )
    return (
        f"issued {what} X509-SVID {f.get('spiffe_id')} serial {_short(f.get('serial'))} "
        f"(until {_until(f)})"
    )


def _agent_attested(view: LogView, f: dict[str, Any]) -> str:
    return f"attested agent {f.get('spiffe_id')} (join token used up)"


def _admin(view: LogView, f: dict[str, Any]) -> str:
    target = f.get("spiffe_id") or f.get("agent_id") or f.get("target")
    return f"admin: {f.get('action')} {target}"


def _agent_started(view: LogView, f: dict[str, Any]) -> str:
    view.tally.agent_id = str(f.get("spiffe_id"))
    view.tally.agent_ready = True
    return f"serving the Workload API on {f.get('socket')} as {f.get('spiffe_id')}"


def _svids_issued(view: LogView, f: dict[str, Any]) -> str:
    return f"obtained {f.get('count')} workload SVID(s) from the CA (keys made here, CSRs sent)"


def _watch_failed(view: LogView, f: dict[str, Any]) -> str:
    return f"Workload API stream ended ({f.get('error')}); reconnecting"


_EVENTS: Final[dict[str, Callable[[LogView, dict[str, Any]], str]]] = {
    "revocation.added": lambda v, f: (
        f"revocation recorded ({f.get('kind')}, {f.get('count')} record(s))"
    ),
    "crl.published": lambda v, f: f"published {f.get('count')} CRL(s), one per issuing CA",
    "agent.svids_revoked": lambda v, f: f"stopped serving {f.get('count')} revoked SVID(s)",
    "agent.revoked_svids_replaced": lambda v, f: (
        f"replaced {f.get('count')} revoked SVID(s) at once"
    ),
    "source.watch_failed": _watch_failed,
    "ca.started": _ca_started,
    "audit.x509_svid.issued": _x509_issued,
    "audit.agent.attested": _agent_attested,
    "audit.admin.change": _admin,
    "agent.attested": lambda v, f: f"attested with its join token: {f.get('spiffe_id')}",
    "agent.started": _agent_started,
    "agent.svids_issued": _svids_issued,
    "agent.entries_removed": lambda v, f: f"dropped {f.get('count')} entry(ies)",
    "agent.stopped": lambda v, f: "stopped",
    "ca.stopped": lambda v, f: "stopped",
}
