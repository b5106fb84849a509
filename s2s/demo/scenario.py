"""The demo's story once everything runs: mTLS traffic, a rotation, then a revocation with
``s2s-ca revoke`` and the recovery.

The revocation targets one credential: the client's SVID of that moment (``--serial``). The client
keeps a copy of it ("pin") and, after the revocation, keeps presenting that copy as well ("probe"):
the server must refuse it in the TLS handshake. Meanwhile the client's normal calls use whatever
the agent serves; they recover once the client holds an SVID that is not revoked. Every timing is
measured and printed, and a step that does not happen fails the demo (exit status 1).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Final

from s2s.cli.ca import cli as ca_cli
from s2s.cli.exits import EXIT_REFUSED, EXIT_UNAVAILABLE
from s2s.demo.errors import DemoFailed
from s2s.demo.procs import run_cli

if TYPE_CHECKING:
    from s2s.demo.launcher import Demo

__all__ = ["REFUSAL_TIMEOUT", "Scenario", "revoke_available"]

FIRST_CALL_TIMEOUT: Final = 60.0
REFUSAL_TIMEOUT: Final = 45.0
_PENDING: Final = "pending: this build's s2s-ca has no 'revoke' command yet (step skipped)"


def revoke_available() -> bool:
    """Whether ``s2s-ca revoke`` exists in this build."""
    return "revoke" in getattr(ca_cli, "commands", {})


class Scenario:
    """Drives the steps; ``outcome`` is the revocation result for the summary."""

    def __init__(self, demo: Demo, *, svid_ttl: int) -> None:
        self.demo = demo
        self.svid_ttl = svid_ttl
        self.outcome = "not reached (stopped before the client's first rotation)"

    async def run(self) -> None:
        demo, tally = self.demo, self.demo.view.tally
        await demo.until(lambda: tally.responses_ok > 0, "the first mTLS call", FIRST_CALL_TIMEOUT)
        demo.say(
            "client and server talk over mTLS; each checks the other's SPIFFE ID, chain and "
            "revocations on every new connection (one connection per call)"
        )
        await self.stranger()
        demo.say(f"waiting for the client's first rotation (about {self.svid_ttl // 2} s) ...")
        await demo.until(
            lambda: tally.rotations.get("client", 0) >= 1,
            "the client's first rotation",
            self.svid_ttl * 1.5 + 30,
        )
        if not revoke_available():
            self.outcome = _PENDING
            demo.say(f"revocation: {_PENDING}")
            return
        await self.revoke()

    async def stranger(self) -> None:
        """A process matching no entry asks the agent: it must get nothing (a rejecting twin)."""
        demo = self.demo
        assert demo.dirs is not None
        argv = [sys.executable, "-m", "s2s.cli.agent", "api", "fetch", "x509"]
        argv += ["--socket", str(demo.dirs.socket)]
        who = f"uid {os.getuid()}, {os.path.realpath(sys.executable)}"
        for _attempt in range(5):  # exit 3 (agent unreachable) is retried: it is no answer
            result = await run_cli(argv, env=demo.env, timeout=30.0)
            if result.code != EXIT_UNAVAILABLE:
                break
        reason = (result.stderr.strip().splitlines() or ["?"])[-1].removeprefix("error: ")
        if result.code == 0:
            raise DemoFailed(f"a process matching no entry ({who}) got an identity")
        if result.code != EXIT_REFUSED:
            raise DemoFailed(
                f"could not ask the agent as a stranger (exit {result.code}): {reason}"
            )
        demo.say(
            f"a process that matches no entry ({who}) asks the agent for an SVID: "
            f"refused (exit {result.code}: {reason})"
        )

    async def revoke(self) -> None:
        demo, tally = self.demo, self.demo.view.tally
        loop = asyncio.get_running_loop()
        client = demo.children["client"]
        tally.pinned_serial = None
        await client.send("pin")
        await demo.until(lambda: tally.pinned_serial, "the client to keep its SVID", 10.0)
        serial = str(tally.pinned_serial)
        self.outcome = f"FAILED: serial {serial} was revoked but not refused"
        demo.say(f"revoking the client's current SVID: s2s-ca revoke --serial {serial}")
        started = loop.time()
        await demo.ca("revoke", "--serial", serial, "--reason", "demo: key compromise")
        returned = loop.time()
        demo.say(f"s2s-ca revoke returned after {returned - started:.2f} s (durable in the store)")
        before = dict(tally.refusals)
        await client.send("probe")
        await demo.until(
            lambda: self._refused_as_revoked(before),
            f"the server to refuse the revoked SVID {serial}",
            REFUSAL_TIMEOUT,
        )
        refused_after = loop.time() - returned
        demo.say(f"the revoked SVID is refused: {refused_after:.1f} s after s2s-ca revoke returned")
        await client.send("unpin")
        self.outcome = f"FAILED: serial {serial} refused, but the client did not recover"
        await demo.until(
            lambda: tally.last_ok_serial not in (None, serial),
            "the client to call again with an SVID that is not revoked",
            self.svid_ttl * 1.5 + 30,
        )
        recovered_after = loop.time() - returned
        demo.say(
            f"RECOVERED: the client calls with a fresh SVID {tally.last_ok_serial} "
            f"({recovered_after:.1f} s after the revocation)"
        )
        self.outcome = (
            f"done: serial {serial} refused {refused_after:.1f} s after s2s-ca revoke, "
            f"client recovered after {recovered_after:.1f} s"
        )

    def _refused_as_revoked(self, before: dict[str, int]) -> bool:
        """True once the server refused a client as revoked since ``before``; DemoFailed if it
        refused it for another reason (e.g. it expired first: revocation was not enforced)."""
        now = self.demo.view.tally.refusals
        grown = {r for r, n in now.items() if n > before.get(r, 0)}
        if "revoked" in grown:
            return True
        if grown:
            raise DemoFailed(
                f"the server refused the kept SVID only as {', '.join(sorted(grown))}, "
                "never as revoked: the revocation did not reach it"
            )
        return False
