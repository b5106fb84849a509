"""``python -m s2s.demo``: a whole trust domain on this machine, as real processes, with a live log.

Creates a trust domain in ``./.s2s-demo`` (embedded SQLite store), starts ``s2s-ca serve`` and one
``s2s-agent run``, registers two workloads by selectors, starts them (an aiohttp mTLS service and
its client, both on ``s2s.verifier``), then shows rotations, a revocation with ``s2s-ca revoke``
and the recovery. Ctrl-C or SIGTERM stops every process; ``--duration`` stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import s2s
from s2s.core.errors import InvalidConfig, S2SError
from s2s.core.spiffe_id import TrustDomain
from s2s.demo.errors import DemoFailed
from s2s.demo.logview import LogView
from s2s.demo.procs import Child, run_cli
from s2s.demo.scenario import Scenario
from s2s.demo.setup import DemoDir, WorkloadPlan, plan_workloads, prepare_dir

__all__ = ["DemoOptions", "main"]

FAST_TTL: Final = 30  # seconds: rotation at half-life, ~15 s
START_TIMEOUT: Final = 60.0
_STOP_ORDER: Final = ("client", "server", "agent", "ca")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    dir: Path
    fast: bool = False
    duration: float | None = None
    trust_domain: str = "demo.s2s.test"
    uids: tuple[int, int] = (65533, 65534)
    verbose: bool = False


class Demo:
    """Runs the processes and the story; ``run`` returns the exit code."""

    def __init__(self, options: DemoOptions, view: LogView) -> None:
        self.options = options
        self.view = view
        self.td = TrustDomain.parse(options.trust_domain)
        self.children: dict[str, Child] = {}
        self.dirs: DemoDir | None = None
        self.env = _base_env()
        self.failed: str | None = None
        self.scenario: Scenario | None = None
        self.svid_ttl = 300
        self.agent_id = ""

    def say(self, text: str) -> None:
        self.view.say("demo", text)

    # -- helpers ------------------------------------------------------------------------------

    def ca_cli(self, *args: str) -> list[str]:
        assert self.dirs is not None
        return [sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(self.dirs.ca), *args]

    async def ca(self, *args: str, timeout: float = 30.0) -> str:
        """Run an ``s2s-ca`` admin command; its stdout, or DemoFailed with its error."""
        result = await run_cli(self.ca_cli(*args), env=self.env, timeout=timeout)
        if result.code != 0:
            raise DemoFailed(f"s2s-ca {args[0]} failed ({result.code}): {result.stderr.strip()}")
        return result.stdout

    async def until(self, check: Callable[[], object], what: str, timeout: float) -> None:
        """Poll ``check`` every 50 ms; DemoFailed after ``timeout`` or if a process died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            self.check_children()
            if loop.time() > deadline:
                raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.05)

    def check_children(self) -> None:
        for name, child in self.children.items():
            if not child.running and not child.stopping:
                code = None if child.process is None else child.process.returncode
                raise DemoFailed(f"the {name} process exited unexpectedly (exit code {code})")

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, lambda stream, line: self.view.line(name, stream, line))
        self.children[name] = child
        await child.start()
        if self.options.verbose:
            self.say(f"started {name} (pid {child.pid})")
        return child

    # -- the story ----------------------------------------------------------------------------

    async def setup(self) -> None:
        opts = self.options
        self.dirs = prepare_dir(opts.dir, shared=os.geteuid() == 0)
        self.env["S2S_DEMO_DIR"] = str(self.dirs.root)  # marks every process of this demo
        self.say(f"demo directory {self.dirs.root} (removed and re-created on every run)")
        init = json.loads(await self.ca("init", "--trust-domain", str(self.td), "--json"))
        self.say(
            f"created trust domain {self.td} on the embedded SQLite store: "
            f"root CA {init['root_id'][:12]}.. valid until {init['not_after'][:10]}"
        )
        await self.start_ca()
        await self.start_agent()
        server, client = await asyncio.to_thread(plan_workloads, self.dirs.root, uids=opts.uids)
        self.explain(server, client)
        await self.register(server)
        await self.register(client)
        await self.start_workloads(server, client)

    async def start_ca(self) -> None:
        self.say("starting the CA: s2s-ca serve --listen 127.0.0.1:0")
        argv = self.ca_cli("serve", "--listen", "127.0.0.1:0", "--log-format", "json")
        await self.start("ca", argv, self.env)
        await self.until(lambda: self.view.tally.ca_address, "the CA to listen", START_TIMEOUT)

    async def start_agent(self) -> None:
        assert self.dirs is not None
        bundle = self.dirs.agent / "bundle.pem"
        bundle.write_text(await self.ca("bundle", "show", "--format", "pem") + "\n")
        token = json.loads(await self.ca("token", "generate", "--json"))
        self.say(
            f"made a single-use join token for agent {token['agent_id']} "
            "(passed in S2S_AGENT_JOIN_TOKEN, never printed)"
        )
        argv = [
            sys.executable, "-m", "s2s.cli.agent", "run",
            "--trust-domain", str(self.td),
            "--ca-url", f"https://{self.view.tally.ca_address}",
            "--trust-bundle", str(bundle),
            "--data-dir", str(self.dirs.agent),
            "--socket", str(self.dirs.socket),
            "--log-format", "json",
        ]  # fmt: skip
        self.say(f"starting the agent: s2s-agent run --socket {self.dirs.socket}")
        await self.start("agent", argv, {**self.env, "S2S_AGENT_JOIN_TOKEN": token["token"]})
        await self.until(lambda: self.view.tally.agent_ready, "the agent to attest", START_TIMEOUT)
        self.agent_id = token["agent_id"]

    def explain(self, server: WorkloadPlan, client: WorkloadPlan) -> None:
        self.say(
            "two Python workloads share one interpreter, so unix:path alone cannot tell them apart."
        )
        if server.uid is not None:
            self.say(
                f"running as root: each workload drops to its own uid before it asks the agent "
                f"(server uid {server.uid}, client uid {client.uid}); the entries select "
                "unix:uid plus the interpreter's unix:path."
            )
        else:
            self.say(
                f"not root: both workloads run as your uid {os.getuid()}, so each gets its own "
                "copy of the interpreter (a distinct unix:path). In production give each service "
                "its own user instead (deploy/README.md)."
            )

    async def register(self, plan: WorkloadPlan) -> None:
        spiffe_id = str(self.td.child(plan.name))
        args = ["entry", "create", "--spiffe-id", spiffe_id, "--parent-id", self.agent_id]
        for selector in plan.selectors:
            args += ["--selector", selector]
        if self.options.fast:
            args += ["--x509-ttl", str(FAST_TTL)]
        entry = json.loads(await self.ca(*args, "--json"))
        ttl = int(entry.get("x509_svid_ttl") or 300)
        self.svid_ttl = ttl
        self.say(
            f"registered {spiffe_id} for {' + '.join(plan.selectors)} "
            f"(X509-SVID TTL {ttl} s: rotation every ~{ttl // 2} s)"
        )

    async def start_workloads(self, server: WorkloadPlan, client: WorkloadPlan) -> None:
        assert self.dirs is not None
        env = {**self.env, "SPIFFE_ENDPOINT_SOCKET": f"unix://{self.dirs.socket}"}
        server_id, client_id = str(self.td.child("server")), str(self.td.child("client"))
        argv = [server.python, "-m", "s2s.demo.server", "--listen", "127.0.0.1:0"]
        argv += ["--allow", client_id, *_uid_args(server)]
        await self.start("server", argv, env)
        await self.until(lambda: self.view.tally.listening, "the server to listen", START_TIMEOUT)
        url = f"https://{self.view.tally.listening}/hello"
        argv = [client.python, "-m", "s2s.demo.client", "--url", url, "--server-id", server_id]
        await self.start("client", [*argv, *_uid_args(client)], env)

    async def run(self, stop: asyncio.Event) -> int:
        story = asyncio.create_task(self.story(stop))
        stopper = asyncio.create_task(stop.wait())
        timer = asyncio.create_task(asyncio.sleep(self.options.duration or 10**9))
        try:
            done, _ = await asyncio.wait(
                {story, stopper, timer}, return_when=asyncio.FIRST_COMPLETED
            )
            if story in done and story.exception() is not None:
                raise story.exception()  # type: ignore[misc]
            if timer in done:
                self.say(f"--duration {self.options.duration:g} s reached")
        except (DemoFailed, S2SError) as exc:
            self.failed = str(exc)
            self.say(f"FAILED: {exc}")
        finally:
            for task in (story, stopper, timer):
                task.cancel()
            await asyncio.gather(story, stopper, timer, return_exceptions=True)
            await self.shutdown()
        return self.summary()

    async def story(self, stop: asyncio.Event) -> None:
        await self.setup()
        self.scenario = Scenario(self, svid_ttl=self.svid_ttl)
        await self.scenario.run()
        while not stop.is_set():  # the story is told; keep watching until stopped
            await asyncio.sleep(0.2)
            self.check_children()

    async def shutdown(self) -> None:
        if self.children:
            self.say("stopping: " + ", ".join(n for n in _STOP_ORDER if n in self.children))
        for name in _STOP_ORDER:
            child = self.children.get(name)
            if child is None or child.process is None:
                continue
            code = await child.stop()
            self.say(f"{name} (pid {child.pid}) exited with {code}")
        if self.dirs is not None and self.dirs.own_socket_dir:
            shutil.rmtree(self.dirs.socket_dir, ignore_errors=True)

    def summary(self) -> int:
        t = self.view.tally
        rotations = ", ".join(f"{k} {v}" for k, v in sorted(t.rotations.items())) or "none yet"
        refused = ", ".join(f"{k} {v}" for k, v in sorted(t.refusals.items())) or "none"
        self.say(
            f"summary: mTLS calls ok {t.responses_ok}, failed {t.failures}; "
            f"server handled {t.requests_served}; rotations: {rotations}; "
            f"refused in handshake: {refused}"
        )
        revocation = self.scenario.outcome if self.scenario is not None else "not reached"
        self.say(f"summary: revocation: {revocation}")
        if self.failed is not None:
            return 1
        return 0


def _uid_args(plan: WorkloadPlan) -> list[str]:
    return [] if plan.uid is None else ["--uid", str(plan.uid)]


def _base_env() -> dict[str, str]:
    """The children's environment: ours without S2S_* / SPIFFE_* settings that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2S_", "SPIFFE_ENDPOINT"))}
    package_root = str(Path(s2s.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2s.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".s2s-demo"), help="demo directory")
    parser.add_argument(
        "--fast", action="store_true", help=f"{FAST_TTL} s SVIDs: a rotation every ~15 s"
    )
    parser.add_argument("--duration", type=float, help="stop by itself after SECONDS")
    parser.add_argument("--trust-domain", default="demo.s2s.test")
    parser.add_argument(
        "--uids",
        default="65533,65534",
        help="server,client uids when run as root (default 65533,65534)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show every log line")
    return parser


def _options(argv: Sequence[str] | None) -> DemoOptions:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        server_uid, client_uid = (int(x) for x in args.uids.split(","))
    except ValueError:
        parser.error("--uids must be two numbers: SERVER,CLIENT")
    if server_uid == client_uid or min(server_uid, client_uid) <= 0:
        parser.error("--uids must be two different unprivileged uids")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    return DemoOptions(
        dir=args.dir,
        fast=args.fast,
        duration=args.duration,
        trust_domain=args.trust_domain,
        uids=(server_uid, client_uid),
        verbose=args.verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m s2s.demo``; returns the exit code."""
    options = _options(argv)
    view = LogView(verbose=options.verbose)

    async def body() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Demo(options, view).run(stop)

    try:
        return asyncio.run(body())
    except (InvalidConfig, S2SError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
