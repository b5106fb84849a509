"""The README's federation walkthrough, run as written: two CAs on loopback, each serving a bundle
endpoint, federated both ways, and an entry that federates.

Only the data directories, the ports and the agent ``<id>`` placeholder are rewritten. Beyond
"every command exits 0", the test checks what the walkthrough promises: each CA holds the other's
bundle as fetched from its endpoint (the same roots the other CA publishes), including the side that
never ran ``federation refresh`` (the refresher fetches on its own when a relationship is created),
and the twins are refused: an entry federating with a trust domain that has neither a bundle nor a
relationship, and a relationship whose endpoint presents another SPIFFE ID.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from readme_shell import Shell, free_port, reader_shell, readme_section, sh_blocks

pytestmark = [pytest.mark.slow]


def walkthrough() -> list[str]:
    blocks = sh_blocks(readme_section("Federation"))
    assert len(blocks) == 1, "the federation section has one walkthrough block"
    return blocks[0][1]


@pytest.fixture
def shell() -> Iterator[Shell]:
    with reader_shell() as sh:
        for old in ("127.0.0.1:8443", "127.0.0.1:8444", "127.0.0.1:9443", "127.0.0.1:9444"):
            sh.substitutions[old] = f"127.0.0.1:{free_port()}"
        sh.substitutions["/tmp/a"] = str(sh.cwd / "a")
        sh.substitutions["/tmp/b"] = str(sh.cwd / "b")
        sh.substitutions["<id>"] = "node-1"
        yield sh


def _json(shell: Shell, command: str) -> object:
    return json.loads(shell.run(command))


def _roots(shell: Shell, command: str) -> set[bytes]:
    pem = shell.run(command).encode()
    return {c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(pem)}


def _held(shell: Shell, data_dir: str, td: str, *, timeout: float = 30) -> dict[str, object]:
    """The record of ``td``'s bundle at the CA in ``data_dir`` once fetched from its endpoint."""
    deadline = time.monotonic() + timeout
    while True:
        listing = _json(shell, f"s2s-ca --data-dir {data_dir} bundle list --json")
        assert isinstance(listing, list), listing
        for record in listing:
            if record.get("trust_domain") == td and record.get("source") == "endpoint":
                return dict(record)
        assert time.monotonic() < deadline, f"{td} never fetched: {listing}"
        time.sleep(0.2)


def test_the_federation_walkthrough_runs_as_written(shell: Shell) -> None:
    a, b = shell.substitutions["/tmp/a"], shell.substitutions["/tmp/b"]
    for command in walkthrough():
        background = len(shell.background)
        shell.run(command)
        if len(shell.background) > background:  # a CA started: wait until it is ready
            data_dir = a if f"--data-dir {a}" in shell.rewrite(command) else b
            shell.until_ok(f"s2s-ca --data-dir {data_dir} healthcheck")

    # b holds a.test's bundle from a's endpoint, a holds b.test's (a never ran refresh)
    assert _held(shell, b, "a.test")["source"] == "endpoint"
    assert _held(shell, a, "b.test")["source"] == "endpoint"
    for here, there, td in ((b, a, "a.test"), (a, b, "b.test")):
        published = _roots(shell, f"s2s-ca --data-dir {there} bundle show --format pem")
        held = _roots(
            shell, f"s2s-ca --data-dir {here} bundle list --trust-domain {td} --format pem"
        )
        assert held == published
    listing = _json(shell, f"s2s-ca --data-dir {b} federation list --json")
    assert isinstance(listing, list)
    assert len(listing) == 1
    entries = _json(shell, f"s2s-ca --data-dir {b} entry list --federates-with a.test --json")
    assert isinstance(entries, list)
    assert len(entries) == 1

    # twins: a trust domain b knows nothing about; an endpoint presenting another SPIFFE ID
    refused = subprocess.run(
        [
            "bash",
            "-c",
            f"s2s-ca --data-dir {b} entry create --spiffe-id spiffe://b.test/other "
            "--parent-id spiffe://b.test/s2s/agent/join_token/node-1 "
            "--selector unix:uid:1002 --federates-with c.test",
        ],
        env=shell.env,
        capture_output=True,
        check=False,
    )
    assert refused.returncode != 0
    assert b"c.test" in refused.stderr
    endpoint_a = shell.substitutions["127.0.0.1:8444"]
    shell.run(
        f"s2s-ca --data-dir {b} federation update a.test "
        "--endpoint-spiffe-id spiffe://a.test/not-the-endpoint"
    )
    failed = subprocess.run(
        ["bash", "-c", f"s2s-ca --data-dir {b} federation refresh a.test --json"],
        env=shell.env,
        capture_output=True,
        check=False,
    )
    assert failed.returncode != 0, failed.stdout
    error = json.loads(failed.stderr)
    assert error["error"] == "not_authorized", error
    assert "spiffe://a.test/s2s/bundle-endpoint is not authorized" in error["message"]
    shown = _json(shell, f"s2s-ca --data-dir {b} federation show a.test --json")
    assert isinstance(shown, dict)
    assert shown["status"]["failures"] >= 1
    assert "not_authorized" in shown["status"]["last_error"]
    assert endpoint_a in shown["bundle_endpoint_url"]
    # the last good bundle stays in force
    assert shown["bundle"]["source"] == "endpoint"
    assert _held(shell, b, "a.test")["sequence"] == 1
