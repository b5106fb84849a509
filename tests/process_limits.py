"""Helpers for tests that run a program under an open-files limit and read its JSON log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) ``Max open files`` of process ``pid``, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


def with_limit(soft: int, hard: int) -> list[str]:
    """The command prefix that runs a program under an open-files limit of (soft, hard)."""
    return ["prlimit", f"--nofile={soft}:{hard}", "--"]


def events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` whose ``event`` is ``event``."""
    lines = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]
