"""The processes of a soak run: an etcd cluster, CA replicas, agents and workloads.

Every child runs in its own session with a parent-death signal (:class:`s2s.demo.procs.Child`;
etcd members through :class:`s2s.testing_etcd.EtcdCluster`), and carries ``S2S_SOAK_RUN=<id>`` in
its environment, so that :func:`leftovers` can find anything a run left behind by scanning
``/proc``. Each child's output goes to ``<dir>/logs/<name>.log``; the workloads' JSON records are
also kept in memory for the accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from bench.soak.plan import AGENTS, Plan, WorkloadSpec
from s2s.demo.launcher import _base_env
from s2s.demo.procs import Child, CliResult, run_cli
from s2s.testing_etcd import EtcdCluster

__all__ = ["RUN_MARKER", "SoakFailed", "System", "leftovers"]

RUN_MARKER: Final = "S2S_SOAK_RUN"
START_TIMEOUT: Final = 90.0


class SoakFailed(RuntimeError):
    """The run cannot go on (a process would not start, a command failed)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leftovers(run_id: str, *, exclude: int | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose environment carries this run's marker."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (exclude, os.getpid()):
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue  # a zombie whose parent is about to reap it holds nothing
        found.append((int(entry.name), cmd.strip()))
    return found


@dataclass(slots=True)
class Proc:
    """A restartable child: its argv, environment, and the state its log lines report."""

    name: str
    argv: list[str]
    env: dict[str, str]
    child: Child | None = None
    ready: bool = False
    starts: int = 0
    pids: list[int] = field(default_factory=list)


class System:
    """Brings the whole system up, applies faults on request, and brings it down."""

    def __init__(self, plan: Plan, root: Path, run_id: str, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.root = root
        self.run_id = run_id
        self.say = say
        self.env = {**_base_env(), RUN_MARKER: run_id}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # The workloads run under their own uids: they must reach the agents' sockets. Below a
        # private directory (pytest's tmp_path) the sockets go to a directory of their own.
        self.run_dir = root / "run"
        self.own_run_dir = not _others_can_reach(root) or len(str(self.run_dir)) > 80
        if self.own_run_dir:
            self.run_dir = Path(tempfile.mkdtemp(prefix="s2s-soak-run-", dir="/tmp"))
        self.run_dir.mkdir(mode=0o755, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.etcd = EtcdCluster(root / "etcd")
        self.ca_ports = [free_port(), free_port()]
        self.procs: dict[str, Proc] = {}
        self.records: list[dict[str, Any]] = []
        self.ca_events: list[dict[str, Any]] = []
        self.agent_ids: dict[str, str] = {}
        self.workload_ports = {w.name: (free_port(), free_port() if w.jwt else 0)
                               for w in plan.workloads}  # fmt: skip
        self._files: dict[str, TextIO] = {}
        self.etcd_pids: list[int] = []
        self.ca_kills = 0  # CA replicas killed so far (a command they were serving fails)

    # -- names and commands ----------------------------------------------------------------------

    @property
    def store_url(self) -> str:
        return f"etcd://{self.etcd.endpoints}/{self.plan.trust_domain}"

    @property
    def ca_urls(self) -> list[str]:
        return [f"https://127.0.0.1:{p}" for p in self.ca_ports]

    def ca_dir(self, i: int) -> Path:
        return self.root / f"ca-{i}"

    def spiffe_id(self, workload: str) -> str:
        return f"spiffe://{self.plan.trust_domain}/w/{workload}"

    def socket(self, agent: str) -> Path:
        return self.run_dir / f"agent-{agent}.sock"

    def uid(self, spec: WorkloadSpec) -> int:
        return self.plan.first_uid + [w.name for w in self.plan.workloads].index(spec.name)

    def ca_cli(self, i: int, *args: str) -> list[str]:
        return [sys.executable, "-m", "s2s.cli.ca", "--data-dir", str(self.ca_dir(i)), *args]

    async def ca(self, *args: str, timeout: float = 30.0, check: bool = True) -> CliResult:
        """An admin command through the first replica whose admin socket answers."""
        last: CliResult | None = None
        for i in self._live_cas():
            last = await run_cli(self.ca_cli(i, *args), env=self.env, timeout=timeout)
            if last.code != 3 and "admin socket" not in last.stderr:
                break
        if last is None:
            raise SoakFailed(f"s2s-ca {args[0]}: no CA replica is running")
        if check and last.code != 0:
            raise SoakFailed(f"s2s-ca {' '.join(args[:2])} failed ({last.code}): {last.stderr}")
        return last

    def any_ca_running(self) -> bool:
        return any(self._running(f"ca-{i}") for i in (0, 1))

    def _live_cas(self) -> list[int]:
        live = [i for i in (0, 1) if self._running(f"ca-{i}")]
        return live or [0, 1]

    def _running(self, name: str) -> bool:
        proc = self.procs.get(name)  # running and ready: a starting CA has no admin socket yet
        return proc is not None and proc.child is not None and proc.child.running and proc.ready

    # -- output ----------------------------------------------------------------------------------

    def _on_line(self, name: str) -> Callable[[str, str], None]:
        out = self._files.get(name)
        if out is None:
            out = self._files[name] = (self.logs / f"{name}.log").open("a")

        def handle(stream: str, line: str) -> None:
            out.write(line + "\n")
            if not line.startswith("{"):
                return
            try:
                record = json.loads(line)
            except ValueError:
                return
            if not isinstance(record, dict):
                return
            proc = self.procs.get(name)
            if "k" in record:
                self.records.append(record)
                if record["k"] == "listening" and proc is not None:
                    proc.ready = True
                return
            event = record.get("event") or record.get("message")
            if event in ("ca.started", "agent.started") and proc is not None:
                proc.ready = True
            if (
                name.startswith("ca-")
                and isinstance(event, str)
                and (event.startswith(("authority.", "root_rotation.", "bundle.changed")))
            ):
                self.ca_events.append({"ca": name, "t": time.time(), **record})

        return handle

    # -- lifecycle -------------------------------------------------------------------------------

    async def start_proc(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = self.procs.get(name)
        if proc is None:
            proc = self.procs[name] = Proc(name, argv, env)
        if proc.child is not None and proc.child.running:
            return proc
        proc.ready = False
        proc.child = Child(name, proc.argv, proc.env, self._on_line(name))
        await proc.child.start()
        proc.starts += 1
        proc.pids.append(proc.child.pid)
        return proc

    async def wait_ready(self, name: str, timeout: float = START_TIMEOUT) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while not proc.ready:
            if proc.child is None or not proc.child.running:
                raise SoakFailed(f"{name} exited while starting; see {self.logs / name}.log")
            if time.monotonic() > deadline:
                raise SoakFailed(
                    f"{name} not ready after {timeout:g} s; see {self.logs}/{name}.log"
                )
            await asyncio.sleep(0.05)

    async def stop_proc(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.child is None:
            return None
        return await proc.child.stop()

    async def kill_proc(self, name: str) -> None:
        """SIGKILL, as a crash would (the child's whole process group)."""
        proc = self.procs[name]
        assert proc.child is not None
        proc.child.stopping = True
        self.ca_kills += name.startswith("ca-")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.child.pid, 9)
        await proc.child.wait()

    async def start(self) -> None:
        plan = self.plan
        self.say(f"starting a 3-member etcd cluster under {self.root / 'etcd'}")
        await asyncio.to_thread(self.etcd.start)
        self.etcd_pids = [m._process.pid for m in self.etcd.members if m._process is not None]
        self.say(f"etcd: {self.etcd.endpoints}")
        config = self.root / "ca.toml"
        config.write_text(
            "[ttl]\n"
            f'x509_svid = "{plan.svid_ttl}s"\njwt_svid = "{plan.svid_ttl}s"\n'
            f'max_svid = "{plan.svid_ttl}s"\nagent_svid = "{plan.agent_svid_ttl}s"\n'
            f'server_svid = "{plan.server_svid_ttl}s"\nintermediate = "{plan.intermediate_ttl}s"\n'
            f'jwt_key = "{plan.jwt_key_ttl}s"\n'
        )
        init = await run_cli(
            self.ca_cli(0, "init", "--trust-domain", plan.trust_domain, "--store", self.store_url),
            env=self.env,
            timeout=60,
        )
        if init.code != 0:
            raise SoakFailed(f"s2s-ca init failed: {init.stderr}")
        self.ca_dir(1).mkdir(mode=0o700)
        shutil.copy2(self.ca_dir(0) / "kek.bin", self.ca_dir(1) / "kek.bin")
        for i in (0, 1):
            await self.start_ca(i, config)
        bundle = self.root / "bundle.pem"
        bundle.write_text((await self.ca("bundle", "show", "--format", "pem")).stdout)
        for agent in AGENTS:
            await self.start_agent(agent, bundle)
        for spec in plan.workloads:
            await self.register(spec)
        for spec in plan.workloads:
            await self.start_workload(spec)
        for spec in plan.workloads:
            await self.wait_ready(spec.name)
        for spec in plan.workloads:
            await self.go(spec.name)
        self.say("every process is up; traffic flows")

    async def go(self, name: str) -> None:
        """Tell a listening workload that its peers listen too: its client starts calling."""
        child = self.procs[name].child
        assert child is not None
        await child.send("go")

    async def restart(self, name: str) -> None:
        """Start a stopped process again with its first command line (and wait until ready)."""
        proc = self.procs[name]
        await self.start_proc(name, proc.argv, proc.env)
        await self.wait_ready(name)

    async def start_ca(self, i: int, config: Path | None = None) -> None:
        name = f"ca-{i}"
        argv = self.ca_cli(i, "serve", "--store", self.store_url, "--name", name,
                           "--listen", f"127.0.0.1:{self.ca_ports[i]}", "--log-format", "json",
                           "--config", str(config or self.root / "ca.toml"))  # fmt: skip
        await self.start_proc(name, argv, self.env)
        await self.wait_ready(name)

    async def start_agent(self, agent: str, bundle: Path) -> None:
        token = json.loads((await self.ca("token", "generate", "--json")).stdout)
        self.agent_ids[agent] = token["agent_id"]
        data = self.root / f"agent-{agent}"
        argv = [
            sys.executable, "-m", "s2s.cli.agent", "run",
            "--trust-domain", self.plan.trust_domain,
            "--trust-bundle", str(bundle), "--data-dir", str(data),
            "--socket", str(self.socket(agent)), "--log-format", "json",
        ]  # fmt: skip
        for url in self.ca_urls:
            argv += ["--ca-url", url]
        if agent == "b":  # one agent follows revocations in etcd, the others long-poll the CA
            argv += ["--revocations-etcd", self.etcd.endpoints]
        name = f"agent-{agent}"
        await self.start_proc(name, argv, {**self.env, "S2S_AGENT_JOIN_TOKEN": token["token"]})
        await self.wait_ready(name)
        self.procs[name].env = dict(self.env)  # a restart needs no token: the agent keeps its SVID

    async def register(self, spec: WorkloadSpec) -> None:
        await self.ca(
            "entry", "create", "--spiffe-id", self.spiffe_id(spec.name),
            "--parent-id", self.agent_ids[spec.agent], "--selector", f"unix:uid:{self.uid(spec)}",
            "--x509-ttl", f"{self.plan.svid_ttl}s", "--jwt-ttl", f"{self.plan.svid_ttl}s",
        )  # fmt: skip

    async def start_workload(self, spec: WorkloadSpec) -> None:
        port, jwt_port = self.workload_ports[spec.name]
        argv = [
            sys.executable, "-m", "bench.soak.workload", "--name", spec.name,
            "--trust-domain", self.plan.trust_domain, "--socket", str(self.socket(spec.agent)),
            "--uid", str(self.uid(spec)), "--revocations", spec.path,
            "--etcd", self.etcd.endpoints, "--listen", str(port), "--jwt-listen", str(jwt_port),
            "--interval", str(self.plan.interval),
        ]  # fmt: skip
        for url in self.ca_urls:
            argv += ["--ca-url", url]
        for peer in self.plan.workloads:
            if peer.name != spec.name:
                p, j = self.workload_ports[peer.name]
                argv += ["--peer", f"{peer.name}={self.spiffe_id(peer.name)}@{p},{j}"]
        await self.start_proc(spec.name, argv, self.env)

    async def shutdown(self) -> dict[str, int | None]:
        """Stop everything (workloads, agents, CAs, then etcd); the exit codes by name."""
        codes: dict[str, int | None] = {}
        order = [w.name for w in self.plan.workloads] + [f"agent-{a}" for a in AGENTS]
        order += ["ca-0", "ca-1"]
        for name in order:
            if name in self.procs:
                codes[name] = await self.stop_proc(name)
        await asyncio.to_thread(self._stop_etcd_all)
        for out in self._files.values():
            out.close()
        self._files.clear()
        if self.own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return codes

    def _stop_etcd_all(self) -> None:
        for member in self.etcd.members:
            member.stop()

    def crashed(self, expected: Collection[str] = ()) -> list[str]:
        """Processes that exited without being asked to (before the shutdown), but ``expected``."""
        out = []
        for name, proc in self.procs.items():
            if name in expected:
                continue
            child = proc.child
            if child is not None and not child.running and not child.stopping:
                code = None if child.process is None else child.process.returncode
                out.append(f"{name} exited by itself (code {code}); see {self.logs}/{name}.log")
        return out

    def all_pids(self) -> list[int]:
        pids = [pid for proc in self.procs.values() for pid in proc.pids]
        return pids + self.etcd_pids


def _others_can_reach(path: Path) -> bool:
    """Every directory from / to ``path`` lets other users through (o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
