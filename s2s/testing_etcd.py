"""A real etcd for tests and benchmarks: free loopback ports, a temp data dir, fast elections.

For tests only, never a production path::

    with EtcdServer(tmp_path / "etcd") as server:       # started and healthy, killed on exit
        store = await EtcdStore.open(server.endpoints, trust_domain="example.org")
        server.stop()                                   # for fault tests: etcd down ...
        server.start()                                  # ... and back, same data and ports

``EtcdServer(..., tls=EtcdTlsFiles.create(dir))`` serves TLS and requires client certificates
(plain TLS with a test CA minted at run time, not SPIFFE). A missing ``etcd`` binary raises
:class:`EtcdMissing` telling the reader to run ``make test``, which installs Debian's etcd-server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from s2s.store.etcd import EtcdStore
from s2s.testing_etcd_tls import EtcdTlsFiles

__all__ = [
    "EtcdCluster",
    "EtcdMissing",
    "EtcdServer",
    "OpenEtcd",
    "etcd_binary",
    "etcd_store_opener",
]

OpenEtcd = Callable[..., Awaitable[EtcdStore]]

_START_DEADLINE = 15.0
_STOP_DEADLINE = 10.0


class EtcdMissing(RuntimeError):
    """No etcd binary on this machine."""


def etcd_binary() -> str:
    """The path of the etcd server binary, or :class:`EtcdMissing` saying how to get it."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if found is None:
        raise EtcdMissing(
            "the etcd server is not installed, so the etcd store tests cannot run: "
            "run `make test` (it installs Debian's etcd-server), or "
            "`apt-get install etcd-server`"
        )
    return found


class _KilledOnExit:
    """``with`` ends with :meth:`kill`: whatever the test did, no etcd outlives it."""

    def kill(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@contextlib.asynccontextmanager
async def etcd_store_opener(endpoint: str, **defaults: Any) -> AsyncIterator[OpenEtcd]:
    """Open ``EtcdStore`` handles on ``endpoint``; each call's keyword arguments (over
    ``defaults``) go to ``EtcdStore.open``, and every handle opened is closed on exit."""
    handles: list[EtcdStore] = []

    async def open_one(**kwargs: Any) -> EtcdStore:
        store = await EtcdStore.open(endpoint, **{**defaults, **kwargs})
        handles.append(store)
        return store

    yield open_one
    for store in handles:
        await store.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer(_KilledOnExit):
    """One etcd member on 127.0.0.1 with its own data dir; a context manager that kills it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        tls: EtcdTlsFiles | None = None,
        name: str = "s2s-test",
        peer_port: int | None = None,
        initial_cluster: str | None = None,
    ) -> None:
        self.binary = etcd_binary()
        self.data_dir = data_dir
        self.tls = tls
        self.name = name
        self.client_port = _free_port()
        self.peer_port = peer_port or _free_port()
        self._cluster = initial_cluster
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.endpoint,)

    @property
    def url(self) -> str:
        """The store URL: ``etcd://127.0.0.1:<port>``."""
        return f"etcd://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self._cluster or f'{self.name}={peer}'}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls:
            command += [
                f"--trusted-ca-file={self.tls.ca}",
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                "--client-cert-auth",
            ]
        return command

    def start(self, deadline: float = _START_DEADLINE) -> None:
        """Start etcd (same data dir and ports as before) and return once it is healthy.

        On the very first start, a port taken by someone else meanwhile is replaced (up to 3
        times); later starts keep the ports, as a restarted member would."""
        if self.running:
            return
        first = not self._started
        for _ in range(3):
            self._spawn()
            try:
                self.wait_healthy(deadline)
            except RuntimeError as exc:
                if not (first and self._cluster is None and "address already in use" in str(exc)):
                    raise
                self.client_port, self.peer_port = _free_port(), _free_port()
                continue
            self._started = True
            return
        raise RuntimeError("etcd could not get free ports three times")

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 (our own etcd command line)
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    def wait_healthy(self, deadline: float = _START_DEADLINE) -> None:
        """Poll ``/health`` until etcd is healthy; RuntimeError with its log after ``deadline``."""
        until = time.monotonic() + deadline
        context = self._client_ssl_context()
        url = f"{'https' if self.tls else 'http'}://{self.endpoint}/health"
        last = "no answer"
        while time.monotonic() < until:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"etcd exited while starting; log:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as answer:  # noqa: S310
                    body = answer.read()
                if b'"health":"true"' in body:
                    return
                last = body.decode(errors="replace")
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.02)  # polling a subprocess with a deadline
        raise RuntimeError(f"etcd not healthy after {deadline}s ({last}); log:\n{self._log_tail()}")

    def _client_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop etcd gracefully (SIGTERM, then SIGKILL after a deadline); data is kept."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL), as a crash would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self


class EtcdCluster(_KilledOnExit):
    """``size`` etcd members on 127.0.0.1 forming one cluster (plain HTTP), for failover tests.

    ``members[i]`` can be stopped, killed and started like a single :class:`EtcdServer`."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        peers = [(f"m{i}", _free_port()) for i in range(size)]
        spec = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers)
        self.members = [
            EtcdServer(base_dir / name, name=name, peer_port=port, initial_cluster=spec)
            for name, port in peers
        ]

    @property
    def endpoints(self) -> str:
        """``"127.0.0.1:p1,127.0.0.1:p2,..."``, as ``EtcdStore.open`` takes it."""
        return ",".join(m.endpoint for m in self.members)

    def start(self, deadline: float = _START_DEADLINE) -> None:
        """Start every member (a new cluster needs a quorum before any is healthy)."""
        for member in self.members:
            if not member.running:
                member._spawn()
        for member in self.members:
            member.wait_healthy(deadline)
            member._started = True

    def kill(self) -> None:
        for member in self.members:
            member.kill()

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self
