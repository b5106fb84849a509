"""Runs README shell commands one by one, as a reader would, for the tests that check the README.

``Shell`` rewrites what cannot be the same on a test machine (directories, ports, placeholders a
reader fills in) through its ``substitutions``; any ``<placeholder>`` left fails the test.
Commands that run until stopped (``s2s-ca serve``, ``s2s-agent run``, a README service program)
start in the background; every other command must exit 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_section(heading: str) -> str:
    """The README's ``## heading`` section, up to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def sh_blocks(section: str) -> list[tuple[str, list[str]]]:
    """(heading, commands) for each ``sh`` block of ``section``, in order; a command is one
    logical line (continuations joined, comments dropped); the heading is the last ``###`` one."""
    blocks: list[tuple[str, list[str]]] = []
    heading = ""
    for match in re.finditer(r"^### ([^\n]+)$|```sh\n(.*?)```", section, flags=re.S | re.M):
        if match.group(1):
            heading = match.group(1).strip()
            continue
        commands = []
        for raw in match.group(2).replace("\\\n", " ").splitlines():
            line = strip_comment(raw).strip()
            if line:
                commands.append(" ".join(line.split()))
        blocks.append((heading, commands))
    return blocks


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Shell:
    """Runs README commands one by one in a shell whose working directory is the test's."""

    cwd: Path
    env: dict[str, str]
    substitutions: dict[str, str]
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    def rewrite(self, command: str) -> str:
        for old, new in self.substitutions.items():
            command = command.replace(old, new)
        left = re.findall(r"<[^<>\s][^<>]*>", command)
        assert not left, f"README placeholder(s) {left} have no value in this test: {command}"
        return command

    def run(self, command: str, *, timeout: float = 60) -> str:
        line = self.rewrite(command)
        exported = re.fullmatch(r"export (\w+)=(\S+)", line)
        if exported:
            self.env[exported.group(1)] = os.path.expandvars(exported.group(2))
            self.transcript.append(f"$ {line}")
            return ""
        if self._runs_until_stopped(line):
            self.transcript.append(f"$ {line} &")
            log = open(self.cwd / f"background-{len(self.background)}.log", "wb")  # noqa: SIM115
            self.background.append(
                subprocess.Popen(
                    ["bash", "-c", line],
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            return ""
        done = subprocess.run(
            ["bash", "-c", line],
            check=False,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        self.transcript.append(f"$ {line}\n{out}{err}".rstrip())
        assert done.returncode == 0, (
            f"README command failed (exit {done.returncode}): {line}\n{err}\n{out}\n"
            + self.background_logs()
        )
        return out

    @staticmethod
    def _runs_until_stopped(line: str) -> bool:
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]
        return (
            words[:2] == ["s2s-agent", "run"]
            or (bool(words) and words[0] == "s2s-ca" and "serve" in words)
            or (bool(words) and words[0] == sys.executable)  # a README service program
        )

    def until_ok(self, command: str, *, timeout: float = 30) -> None:
        """Poll a command (not from the README) until it exits 0."""
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                ["bash", "-c", command],
                check=False,
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
            )
            if done.returncode == 0:
                return
            for process in self.background:
                assert process.poll() is None, f"exited early\n{self.background_logs()}"
            assert time.monotonic() < deadline, (
                f"{command} never succeeded\n{self.background_logs()}"
            )
            time.sleep(0.2)

    def background_logs(self) -> str:
        logs = sorted(self.cwd.glob("background-*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.background:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@contextlib.contextmanager
def reader_shell() -> Iterator[Shell]:
    """A Shell in a fresh short directory (a Unix socket path has a ~107-byte limit), with the
    environment of a reader's shell: nothing ``S2S_*``/``SPIFFE_*`` from the developer's, and
    the s2s commands on ``PATH``. Background processes are stopped and the directory removed."""
    base = Path(os.environ.get("S2S_TEST_SHORT_DIR", "/tmp"))
    work = Path(
        subprocess.check_output(["mktemp", "-d", str(base / "s2s-readme.XXXXXX")]).decode().strip()
    )
    work.chmod(0o755)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("S2S_", "SPIFFE_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    sh = Shell(cwd=work, env=env, substitutions={})
    try:
        yield sh
    finally:
        sh.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
