"""Preparing the demo: its directory, and how the two workloads get distinct identities.

Two Python workloads run the same interpreter, so ``unix:path`` (and ``unix:sha256``) cannot tell
them apart. The demo tells them apart honestly:

* **as root**: each workload drops to its own unprivileged uid (default 65533 for the server,
  65534 for the client) before it first talks to the agent; the entries select ``unix:uid`` plus
  the interpreter's ``unix:path``. This is what production does with one system user per service.
* **as any other user**: the demo cannot switch uids, so both run as you; each workload gets its
  own copy of the interpreter (a ``venv --copies`` under the demo directory), which gives each a
  distinct ``unix:path``, and the entries select your ``unix:uid`` plus that path.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from s2s.core.errors import Conflict, InvalidConfig

__all__ = ["MARKER", "DemoDir", "WorkloadPlan", "plan_workloads", "prepare_dir"]

MARKER: Final = ".s2s-demo"  # a directory holding this file is ours to wipe and reuse
_MAX_SOCKET_PATH: Final = 100


@dataclass(frozen=True, slots=True)
class DemoDir:
    root: Path
    ca: Path
    agent: Path
    socket_dir: Path
    own_socket_dir: bool  # True when the socket dir is a temp dir we must remove at the end

    @property
    def socket(self) -> Path:
        return self.socket_dir / "agent.sock"


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    """How one workload runs and which selectors its entry has."""

    name: str
    python: str  # interpreter to start it with
    uid: int | None  # drop to this uid (root mode), or None
    selectors: tuple[str, ...]


def _live_socket(path: Path) -> bool:
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _others_can_reach(path: Path) -> bool:
    """Every directory from / to ``path`` is searchable by other users (o+x)."""
    return all(stat.S_IMODE(p.stat().st_mode) & stat.S_IXOTH for p in [path, *path.parents])


def prepare_dir(root: Path, *, shared: bool) -> DemoDir:
    """Create (or wipe and re-create) the demo directory.

    Refuses a non-empty directory that is not an earlier demo's, and one whose CA or agent is
    still running. ``shared``: other uids must reach the agent socket (root mode).
    """
    root = root.absolute()
    if root.exists():
        if not root.is_dir():
            raise InvalidConfig(f"{root} exists and is not a directory")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise InvalidConfig(f"{root} is not empty and was not made by the demo; pick --dir")
        for sock in (root / "ca" / "admin.sock", root / "run" / "agent.sock"):
            if _live_socket(sock):
                raise Conflict(f"another demo is running in {root} ({sock} answers); stop it first")
        shutil.rmtree(root)
    root.mkdir(mode=0o755, parents=True)
    root.chmod(0o755)
    (root / MARKER).write_text("made by python -m s2s.demo; safe to delete\n")
    agent = root / "agent"
    agent.mkdir(mode=0o700)
    socket_dir, own = root / "run", False
    too_long = len(str(socket_dir / "agent.sock")) > _MAX_SOCKET_PATH
    if too_long or (shared and not _others_can_reach(root)):
        socket_dir, own = Path(tempfile.mkdtemp(prefix="s2s-demo-", dir="/tmp")), True
    else:
        socket_dir.mkdir(mode=0o755)
    socket_dir.chmod(0o755)  # workloads of other uids must reach the socket (0777 itself)
    return DemoDir(root, root / "ca", agent, socket_dir, own)


def _interpreter_copy(root: Path, name: str) -> str:
    """A ``venv --copies`` of this interpreter whose site-packages point at ours."""
    target = root / "venvs" / name
    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(target)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = target / "lib" / version / "site-packages"
    ours = sysconfig.get_paths()["purelib"]
    (site / "s2s-demo.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return str(target / "bin" / "python")


def plan_workloads(root: Path, *, uids: tuple[int, int]) -> tuple[WorkloadPlan, WorkloadPlan]:
    """(server, client) plans for this launcher's privileges (see the module docstring)."""
    if os.geteuid() == 0:
        python = sys.executable
        path = os.path.realpath(python)  # what the agent reads from /proc/<pid>/exe
        return tuple(  # type: ignore[return-value]
            WorkloadPlan(name, python, uid, (f"unix:uid:{uid}", f"unix:path:{path}"))
            for name, uid in zip(("server", "client"), uids, strict=True)
        )
    me = os.getuid()
    plans = []
    for name in ("server", "client"):
        python = _interpreter_copy(root, name)
        path = os.path.realpath(python)
        plans.append(WorkloadPlan(name, python, None, (f"unix:uid:{me}", f"unix:path:{path}")))
    return plans[0], plans[1]
