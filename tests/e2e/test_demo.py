"""The demo as a user runs it: ``python -m s2s.demo --fast`` as a subprocess, judged by its output,
its exit status and the processes it leaves (none)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from s2s.demo.scenario import revoke_available

ROOT = Path(__file__).resolve().parents[2]
TD = "spiffe://demo.s2s.test"
OK_CALL = re.compile(
    rf"client +\| GET /hello -> 200 from {TD}/server \(it saw us as {TD}/client; our serial"
)
SERVED = re.compile(rf"server +\| request /hello from {TD}/client \(verified client SVID\)")
ROTATED = re.compile(r"(client|server) +\| ROTATED: new X509-SVID serial")
EXITED = re.compile(r"demo +\| (ca|agent|server|client) \(pid (\d+)\) exited with (-?\d+)")

pytestmark = [pytest.mark.slow]


@dataclass
class DemoRun:
    """A demo subprocess whose output is collected line by line in a thread."""

    directory: Path
    args: tuple[str, ...]
    process: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def start(self) -> DemoRun:
        argv = [sys.executable, "-m", "s2s.demo", "--dir", str(self.directory), *self.args]
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # our own group: a failed test can still clean up
        )
        threading.Thread(target=self._collect, daemon=True).start()
        return self

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(pattern.search(line) for line in list(self.lines)):
            if self.process.poll() is not None:
                raise AssertionError(f"demo exited early:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{self.output}")
            time.sleep(0.1)

    def finish(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"demo did not stop within {timeout} s:\n{self.output}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def leftovers(directory: Path, pids: list[int]) -> list[str]:
    """Processes still alive that belong to this demo: by pid, command line or environment."""
    needle = str(directory).encode()
    found = [f"pid {pid} still exists" for pid in pids if Path(f"/proc/{pid}").exists()]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                data = (proc / name).read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(f"pid {proc.name}: {data[:200]!r}")
                break
    return found


def exited_children(output: str) -> dict[str, tuple[int, int]]:
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in EXITED.finditer(output)}


def assert_all_stopped(run: DemoRun) -> None:
    children = exited_children(run.output)
    assert set(children) == {"ca", "agent", "server", "client"}, run.output
    assert all(code == 0 for _pid, code in children.values()), children
    deadline = time.monotonic() + 5  # reaped by the launcher already; allow the kernel a moment
    while (left := leftovers(run.directory, [pid for pid, _ in children.values()])) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not left, left


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One fast demo long enough for a rotation (~15 s), and for revocation and recovery when
    ``s2s-ca revoke`` exists."""
    duration = 60 if revoke_available() else 40
    run = DemoRun(tmp_path_factory.mktemp("demo") / "d", ("--fast", "--duration", str(duration)))
    run.start()
    try:
        run.exit_code = run.finish(duration + 60)
        yield run
    finally:
        run.kill()


@pytest.mark.timeout(240)
def test_two_workloads_talk_over_mtls(fast_run: DemoRun) -> None:
    assert fast_run.exit_code == 0, fast_run.output
    assert len(OK_CALL.findall(fast_run.output)) >= 10, fast_run.output
    assert len(SERVED.findall(fast_run.output)) >= 10
    assert re.search(r"got identity spiffe://demo\.s2s\.test/server serial", fast_run.output)
    assert re.search(r"got identity spiffe://demo\.s2s\.test/client serial", fast_run.output)
    assert re.search(r"registered spiffe://demo\.s2s\.test/client for unix:uid:\d+ \+ unix:path:/",
                     fast_run.output)  # fmt: skip
    # the rejecting twin: a process that matches no entry gets nothing
    assert re.search(r"a process that matches no entry .* refused \(exit 6: ", fast_run.output)


@pytest.mark.timeout(240)
def test_rotation_happens_without_failed_calls(fast_run: DemoRun) -> None:
    rotated = {m.group(1) for m in ROTATED.finditer(fast_run.output)}
    assert rotated == {"client", "server"}, fast_run.output
    if not revoke_available():  # with a revocation some calls fail on purpose
        assert re.search(r"mTLS calls ok \d+, failed 0;", fast_run.output), fast_run.output


@pytest.mark.timeout(240)
def test_revoked_workload_is_refused_then_recovers(fast_run: DemoRun) -> None:
    if not revoke_available():
        assert "revocation: pending: this build's s2s-ca has no 'revoke'" in fast_run.output
        pytest.skip("s2s-ca revoke is not in this build yet: the demo reports the step pending")
    out = fast_run.output
    assert re.search(r"revoking the client's current SVID: s2s-ca revoke --serial [0-9a-f]+", out)
    assert re.search(r"probe with the kept SVID \S+: REFUSED", out), out
    assert re.search(r"server +\| REFUSED a client in the TLS handshake: revoked", out), out
    assert "RECOVERED: the client calls with a fresh SVID" in out
    assert re.search(r"revocation: done: serial [0-9a-f]+ refused", out), out


@pytest.mark.timeout(240)
def test_no_process_left_after_duration(fast_run: DemoRun) -> None:
    assert_all_stopped(fast_run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    run = DemoRun(tmp_path / "d", ("--fast",)).start()
    try:
        run.wait_for(OK_CALL, 60)
        run.process.send_signal(sig)
        assert run.finish(30) == 0, run.output
        assert_all_stopped(run)
        assert "summary: mTLS calls ok" in run.output
    finally:
        run.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "moment", [r"demo +\| starting the agent", r"server +\| started as"], ids=["setup", "startup"]
)
def test_interrupt_during_setup_stops_everything(tmp_path: Path, moment: str) -> None:
    run = DemoRun(tmp_path / "d", ("--fast",)).start()
    try:
        run.wait_for(re.compile(moment), 60)
        run.process.send_signal(signal.SIGINT)
        assert run.finish(30) == 0, run.output
        children = exited_children(run.output)
        assert "ca" in children, run.output
        assert not leftovers(run.directory, [pid for pid, _ in children.values()])
    finally:
        run.kill()


def test_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    done = subprocess.run(
        [sys.executable, "-m", "s2s.demo", "--dir", str(target), "--duration", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "was not made by the demo" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert (target / "precious.txt").read_text() == "keep me"
    assert not leftovers(target, [])


@pytest.mark.parametrize(
    "args", [("--duration", "-1"), ("--uids", "5,5"), ("--uids", "0,65534"), ("--uids", "x")]
)
def test_bad_arguments_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "s2s.demo", "--dir", str(tmp_path / "d"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()
