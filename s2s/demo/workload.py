"""What the demo's two workloads share: events on stdout, dropping to their own uid, following
their X.509 source, and logging the peers the verifier refuses.

The workloads print one JSON object per line on stdout (``{"event": "demo.identity", ...}``);
the launcher (:mod:`s2s.demo.launcher`) turns them into the readable log. Library log lines go to
stderr as JSON (warnings and above).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry

from s2s.core.errors import InvalidConfig, S2SError
from s2s.log import configure_logging
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.source import X509Source
from s2s.verifier.x509context import X509Context

__all__ = [
    "EVENT_PREFIX",
    "LoggingPeerMetrics",
    "SvidWatcher",
    "drop_privileges",
    "emit",
    "hhmmss",
    "open_source",
    "preload",
    "run_workload",
    "set_parent_death_signal",
    "start_source",
]

EVENT_PREFIX: Final = "demo."
_PR_SET_PDEATHSIG: Final = 1


def emit(event: str, **fields: Any) -> None:
    """One event line on stdout for the launcher (never keys or PEM: IDs, serials, times)."""
    line = {"event": EVENT_PREFIX + event, **fields}
    sys.stdout.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def hhmmss(moment: datetime) -> str:
    """``16:31:05`` in UTC."""
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` when the launcher dies (PR_SET_PDEATHSIG; Linux only).

    A uid change clears the setting, so :func:`drop_privileges` sets it again.
    """
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - not Linux/glibc
        return
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


# Modules that the standard library and aiohttp import lazily, on first use. After the drop the
# interpreter's own directory may be unreadable (e.g. a pyenv build under /root), so they are
# imported while still root.
_LAZY_MODULES: Final = (
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "stringprep",
    "unicodedata",
    "aiohttp.client",
    "aiohttp.connector",
    "aiohttp.web_protocol",
    "aiohttp.http_parser",
    "aiohttp.http_writer",
    "grpc.aio",
    "concurrent.futures.thread",
)


def preload() -> None:
    """Import what would otherwise be imported lazily after the privilege drop."""
    for name in _LAZY_MODULES:
        importlib.import_module(name)


def drop_privileges(uid: int) -> None:
    """Become ``uid`` (group ``uid``, no supplementary groups) for good.

    The workload starts as root, imports everything it needs (the interpreter and the code may
    live where the target uid cannot read), then drops before it first talks to the agent: the
    agent sees ``uid`` in SO_PEERCRED and selects the entry registered for ``unix:uid:<uid>``.
    """
    if os.getuid() == uid:
        return
    if os.geteuid() != 0:
        raise InvalidConfig(f"cannot switch to uid {uid}: not running as root")
    preload()
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:  # pragma: no cover - kernel refused silently
        raise InvalidConfig(f"could not switch to uid {uid}")
    set_parent_death_signal()


async def start_source(source: Any, stop: asyncio.Event, timeout: float) -> bool:
    """Start ``source`` (first update within ``timeout``); False if ``stop`` came first."""
    starting = asyncio.create_task(source.start(timeout=timeout))
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (starting, stopping):
        task.cancel()
    await asyncio.gather(stopping, return_exceptions=True)
    if starting in done:
        starting.result()  # raises Unavailable when no identity came in time
        return True
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False


async def open_source(
    role: str, args: argparse.Namespace, timeout: float
) -> tuple[X509Source, asyncio.Event] | None:
    """The started X.509 source and the stop event (set by SIGTERM/SIGINT); None if stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("waiting", role=role, uid=args.uid)
    source = X509Source(socket=args.socket)
    if not await start_source(source, stop, timeout):
        await source.close()
        emit("stopped", role=role)
        return None
    return source, stop


def run_workload(
    role: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> int:
    """Drop to ``args.uid`` (or die with the launcher), run ``body(args)``; the exit code."""
    configure_logging(level="WARNING")
    try:
        if args.uid is not None:
            drop_privileges(args.uid)
        else:
            set_parent_death_signal()
        asyncio.run(body(args))
    except S2SError as exc:
        emit("error", role=role, error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


class LoggingPeerMetrics(PeerMetrics):
    """Peer metrics (on a private registry) that also emit an event for every refused peer."""

    def __init__(self, role: str) -> None:
        super().__init__(registry=CollectorRegistry())
        self._role = role

    def rejected(self, reason: str) -> None:
        super().rejected(reason)
        emit("refused", role=self._role, reason=reason)


class SvidWatcher:
    """Emits ``demo.identity`` for the first SVID and every rotation of a source's default SVID."""

    def __init__(self, role: str) -> None:
        self._role = role
        self._serial: int | None = None
        self.rotations = 0

    def __call__(self, context: X509Context) -> None:
        svid = context.default_svid
        if svid.serial == self._serial:
            return  # a bundle or CRL change, not a new SVID
        previous, self._serial = self._serial, svid.serial
        if previous is not None:
            self.rotations += 1
        emit(
            "identity",
            role=self._role,
            spiffe_id=str(svid.spiffe_id),
            serial=format(svid.serial, "x"),
            not_after=hhmmss(svid.not_after),
            lifetime_s=int((svid.not_after - svid.not_before).total_seconds()),
            previous=None if previous is None else format(previous, "x"),
            rotation=previous is not None,
        )

    def follow(self, source: Any) -> Callable[[], None]:
        """Emit the current identity now and every change later; returns the unsubscribe."""
        self(source.current())
        unsubscribe: Callable[[], None] = source.subscribe(self)
        return unsubscribe
