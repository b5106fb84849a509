"""Two trust domains as a user runs them: ``s2s-ca serve --bundle-endpoint`` for a.test and
``s2s-ca serve --config`` with a ``[federation]`` table for b.test (both subprocesses), then
``s2s-ca bundle show --format spiffe`` and ``s2s-ca federation create|refresh|show`` on the
command line. Twins: a bad ``--bundle-endpoint`` and a bad ``[federation]`` table stop serve with
a clear message (no traceback)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s2s.ca.client import AdminClient

CLI = [sys.executable, "-m", "s2s.cli.ca"]


def s2s_ca(data_dir: Path, *args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(data_dir: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        # Port 0: the CA binds a free port itself (a port found free and released here could be
        # taken by another process before the CA binds it); it is reached by its admin socket.
        [*CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        admin = AdminClient(data_dir / "admin.sock")
        deadline = time.monotonic() + 30
        while True:
            try:
                if admin.call("GET", "/readyz")["ready"]:
                    break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("s2s-ca serve did not become ready") from None
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_two_trust_domains_federate_on_the_command_line(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    s2s_ca(a_dir, "init", "--trust-domain", "a.test")
    s2s_ca(b_dir, "init", "--trust-domain", "b.test")
    endpoint_port = free_port()
    config = tmp_path / "b.toml"
    config.write_text('[federation]\nrefresh_min = "1s"\nrefresh_max = "10s"\n')
    a_config = tmp_path / "a.toml"  # the flag's address wins over the file's
    a_config.write_text('[federation]\nbundle_endpoint = "127.0.0.1:1"\nrefresh_hint = "2s"\n')
    with (
        serving(
            a_dir, "--config", str(a_config), "--bundle-endpoint", f"127.0.0.1:{endpoint_port}"
        ),
        serving(b_dir, "--config", str(config)),
    ):
        bundle = tmp_path / "a.json"
        bundle.write_text(s2s_ca(a_dir, "bundle", "show", "--format", "spiffe").stdout)
        s2s_ca(
            b_dir, "federation", "create", "--trust-domain", "a.test",
            "--bundle-endpoint-url", f"https://127.0.0.1:{endpoint_port}/",
            "--profile", "https_spiffe",
            "--endpoint-spiffe-id", "spiffe://a.test/s2s/bundle-endpoint",
            "--bundle", str(bundle),
        )  # fmt: skip
        refreshed = json.loads(s2s_ca(b_dir, "federation", "refresh", "a.test", "--json").stdout)
        assert refreshed["bundle"]["source"] == "endpoint"
        assert refreshed["bundle"]["refresh_hint"] == 2
        listed = s2s_ca(b_dir, "federation", "list").stdout
        assert "a.test" in listed
        assert "https_spiffe" in listed
        # B's own refresher fetches again by itself, at A's hint (2 s, within B's 1-10 s).
        first = refreshed["status"]["last_success_at"]
        deadline = time.monotonic() + 20
        while True:
            shown = json.loads(s2s_ca(b_dir, "federation", "show", "a.test", "--json").stdout)
            if shown["status"]["last_success_at"] != first:
                break
            assert time.monotonic() < deadline, "B's refresher did not fetch again"
            time.sleep(0.2)
        assert shown["status"]["failures"] == 0


def test_bad_federation_settings_stop_serve(tmp_path: Path) -> None:
    data_dir = tmp_path / "a"
    s2s_ca(data_dir, "init", "--trust-domain", "a.test")
    bad = s2s_ca(data_dir, "serve", "--bundle-endpoint", "nowhere", check=1)
    assert "bundle_endpoint must be HOST:PORT" in bad.stderr
    config = tmp_path / "bad.toml"
    config.write_text(
        '[federation]\nbundle_endpoint = "127.0.0.1:0"\nbundle_endpoint_profile = "https_web"\n'
    )
    bad = s2s_ca(data_dir, "serve", "--config", str(config), check=1)
    assert "bundle_endpoint_cert_file" in bad.stderr
