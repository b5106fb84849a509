"""Every shell block of the README's cheat sheet, run as written against a real CA and agent.

The blocks are read from README.md at test time, so a README edit is tested by the next run. Only
what cannot be the same on a test machine is rewritten, and each rewrite is listed in
``SUBSTITUTIONS``: the data and socket directories become directories under the test's temporary
directory, the CA listens on a free loopback port instead of 8443, and the placeholders a reader
fills in (``<token>``, ``<id>``, a serial, a ``jti``) get the values the earlier commands printed.
Any other ``<placeholder>`` fails the test, so a new README command cannot go untested.

Commands that run until stopped (``s2s-ca serve``, ``s2s-agent run``) start in the background and
the next command runs once they are ready; every other command must exit 0. The one difference
from a reader's shell is ``SPIFFE_ENDPOINT_SOCKET``, pointing the agent's client commands at the
test's socket instead of ``/run/s2s/agent.sock``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from readme_shell import README, Shell, free_port, reader_shell, sh_blocks

TD = "example.org"

pytestmark = [pytest.mark.slow]


def _cheat_sheet() -> str:
    text = README.read_text()
    start = text.index("## Cheat sheet")
    return text[start : text.index("\n## ", start + 1)]


def python_blocks() -> dict[str, str]:
    """heading -> the ``python`` block under it, in the cheat sheet."""
    blocks: dict[str, str] = {}
    heading = ""
    for match in re.finditer(r"^### ([^\n]+)$|```python\n(.*?)```", _cheat_sheet(), re.S | re.M):
        if match.group(1):
            heading = match.group(1).strip()
        else:
            blocks[heading] = match.group(2)
    return blocks


def cheat_sheet_blocks() -> list[tuple[str, list[str]]]:
    """(heading, commands) for each ``sh`` block under "## Cheat sheet", in order."""
    return sh_blocks(_cheat_sheet())


@pytest.fixture
def shell() -> Iterator[Shell]:
    with reader_shell() as sh:
        work = sh.cwd
        run_dir = work / "run"
        run_dir.mkdir(mode=0o755)
        port = free_port()
        sh.env["SPIFFE_ENDPOINT_SOCKET"] = f"unix://{run_dir}/agent.sock"
        sh.substitutions.update(
            {
                "/var/lib/s2s-ca": str(work / "ca"),
                "/var/lib/s2s-agent": str(work / "agent"),
                "/run/s2s": str(run_dir),
                "0.0.0.0:8443": f"127.0.0.1:{port}",
                "https://ca:8443": f"https://127.0.0.1:{port}",
                "/tmp/svid": str(work / "svid"),
            }
        )
        yield sh


def test_the_cheat_sheet_has_the_python_programs_this_test_knows() -> None:
    assert list(python_blocks()) == [
        "Protect an aiohttp service",
        "Call another service",
        "JWT-SVIDs",
    ]


def test_the_cheat_sheet_has_the_blocks_this_test_knows() -> None:
    headings = [heading for heading, _ in cheat_sheet_blocks()]
    assert headings == ["Run a CA", "Run an agent", "Register a workload", "Revoke"], headings


def test_every_cheat_sheet_block_runs_as_written(shell: Shell) -> None:
    blocks = dict(cheat_sheet_blocks())

    # --- Run a CA
    for command in blocks["Run a CA"]:
        shell.run(command)
        if shell.background:
            shell.until_ok(
                f"s2s-ca --data-dir {shell.substitutions['/var/lib/s2s-ca']} healthcheck"
            )
    bundle = x509.load_pem_x509_certificates((shell.cwd / "bundle.pem").read_bytes())
    assert bundle
    assert all(cert.extensions for cert in bundle)

    # --- Run an agent: the token and the agent's SPIFFE ID come from `token generate`
    for command in blocks["Run an agent"]:
        out = shell.run(command)
        if command.startswith("s2s-ca token generate"):
            ids = re.findall(rf"spiffe://{re.escape(TD)}/s2s/agent/join_token/(\S+)", out)
            assert len(ids) == 1, f"token generate must name the agent's SPIFFE ID:\n{out}"
            token = _token_from(out)
            shell.substitutions["<token>"] = token
            shell.substitutions["<id>"] = ids[0]
        if shell.background and command.startswith(("S2S", "s2s-agent run")):
            shell.until_ok("s2s-agent healthcheck")

    # --- Register a workload: the README's entry, plus one for this test's own uid so that the
    # workload-side commands the README names inline have something to fetch
    for command in blocks["Register a workload"]:
        shell.run(command)
    listing = shell.run("s2s-ca entry list --json")
    assert f"spiffe://{TD}/ns/shop/sa/billing" in listing
    parent = f"spiffe://{TD}/s2s/agent/join_token/{shell.substitutions['<id>']}"
    shell.run(
        f"s2s-ca entry create --spiffe-id spiffe://{TD}/ns/shop/sa/billing --parent-id {parent} "
        f"--selector unix:uid:{os.getuid()}"
    )
    serial, jti = _workload_side(shell)

    # --- the Python programs, as written, against the agent (before the Revoke block, which
    # revokes this identity and the agent)
    _run_python_blocks(shell)

    # --- Revoke: a real serial and jti from the workload-side commands
    shell.substitutions["7ef98fd1..."] = serial
    shell.substitutions["<jwt id>"] = jti
    for command in blocks["Revoke"]:
        out = shell.run(command)
        if command.startswith("s2s-ca revocations list"):
            assert serial in out.replace(":", "").lower() or serial in out
        if command.startswith("s2s-ca crl"):
            assert "-----BEGIN X509 CRL-----" in out


def _token_from(out: str) -> str:
    """The join token in ``token generate``'s output: the line that is not the SPIFFE ID."""
    for line in out.splitlines():
        words = line.split()
        candidates = [w for w in words if not w.startswith("spiffe://") and len(w) >= 16]
        if candidates and not line.lower().startswith(("spiffe", "agent", "expires")):
            return candidates[-1]
    raise AssertionError(f"no token in token generate's output:\n{out}")


def _workload_side(shell: Shell) -> tuple[str, str]:
    """Run the README's inline workload-side commands; the serial of the fetched X509-SVID and
    the ``jti`` of a fetched JWT-SVID."""
    text = README.read_text()
    inline = [" ".join(c.split()) for c in re.findall(r"`(s2s-agent api [^`]+)`", text)]
    assert any(c.startswith("s2s-agent api fetch x509") for c in inline), inline
    deadline = time.monotonic() + 30
    cert_path = Path(shell.substitutions["/tmp/svid"]) / "svid.0.pem"
    while True:
        done = subprocess.run(
            ["bash", "-c", shell.rewrite(next(c for c in inline if " x509" in c))],
            check=False,
            cwd=shell.cwd,
            env=shell.env,
            capture_output=True,
        )
        if done.returncode == 0 and cert_path.exists():
            break
        assert time.monotonic() < deadline, done.stderr.decode() + shell.background_logs()
        time.sleep(0.3)
    leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    serial = format(leaf.serial_number, "x")
    jwt_command = next(c for c in inline if c.startswith("s2s-agent api fetch jwt"))
    out = shell.run(jwt_command)
    token = next(w for w in out.split() if w.count(".") == 2)
    payload = token.split(".")[1]
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return serial, str(claims["jti"])


def _run_python_blocks(shell: Shell) -> None:
    """The service block serves (on a free port instead of 8443), the caller block calls it and
    prints what it saw; the JWT-SVID block serves and calls itself (on a free port, not 8080)."""
    programs = python_blocks()
    https_port, http_port = free_port(), free_port()
    rewrite = {
        '"0.0.0.0", 8443': f'"127.0.0.1", {https_port}',
        "billing:8443": f"127.0.0.1:{https_port}",
        "8080": str(http_port),
    }

    def source(heading: str) -> Path:
        text = programs[heading]
        for old, new in rewrite.items():
            text = text.replace(old, new)
        path = shell.cwd / (re.sub(r"\W+", "_", heading).lower() + ".py")
        path.write_text(text)
        return path

    billing = f"spiffe://{TD}/ns/shop/sa/billing"
    server = source("Protect an aiohttp service")
    shell.run(f"{sys.executable} {server}")  # runs until stopped: started in the background
    client = source("Call another service")
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [sys.executable, str(client)],
            check=False,
            cwd=shell.cwd,
            env=shell.env,
            capture_output=True,
        )
        if done.returncode == 0:
            break
        assert time.monotonic() < deadline, done.stderr.decode() + shell.background_logs()
        time.sleep(0.3)
    # the server saw the client's SPIFFE ID, the client verified the server's
    assert done.stdout.decode().strip() == f"hello {billing} from {billing}", done.stdout
    out = subprocess.run(
        [sys.executable, str(source("JWT-SVIDs"))],
        check=False,
        cwd=shell.cwd,
        env=shell.env,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == f"hello {billing}", out.stdout
