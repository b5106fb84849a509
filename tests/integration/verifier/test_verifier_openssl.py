"""Interop with the system's openssl: ``s_client`` with an SVID against our server, and our client
against ``openssl s_server -Verify`` (which demands our client certificate)."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from verifier_support import serving, source_of

from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_any, authorize_id
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.tls import client_context, server_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
PEM = serialization.Encoding.PEM
SERVER = "spiffe://example.org/server"
CLIENT = "spiffe://example.org/client"


def write_svid(directory: Path, svid: X509Svid, roots_pem: bytes) -> dict[str, Path]:
    directory.mkdir(exist_ok=True)
    files = {
        "leaf": svid.leaf.public_bytes(PEM),
        "chain": b"".join(c.public_bytes(PEM) for c in svid.cert_chain[1:]),
        "key": svid.key_pem(),
        "roots": roots_pem,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


async def s_client(port: int, files: dict[str, Path] | None, roots: Path) -> str:
    args = ["-connect", f"127.0.0.1:{port}", "-CAfile", str(roots), "-verify_return_error"]
    if files is not None:
        args += ["-cert", str(files["leaf"]), "-cert_chain", str(files["chain"])]
        args += ["-key", str(files["key"])]
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-quiet",
        "-ign_eof",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode(errors="replace")


def our_server_context(ca: TestAuthority, metrics: PeerMetrics) -> ssl.SSLContext:
    """Our server (SVID of SERVER from ``ca``) accepting any client of ``ca``'s trust domain."""
    return server_context(
        source_of(ca.issue_x509_svid(SERVER), ca.bundle()),
        metrics=metrics,
        authorize=authorize_any(),
        revocations=no_revocation_check(),
    )


def our_client_context(ca: TestAuthority, metrics: PeerMetrics) -> ssl.SSLContext:
    """Our client (SVID of CLIENT from ``ca``) accepting only SERVER."""
    return client_context(
        source_of(ca.issue_x509_svid(CLIENT), ca.bundle()),
        authorize=authorize_id(SERVER),
        metrics=metrics,
        revocations=no_revocation_check(),
    )


@pytest.fixture
def ca() -> TestAuthority:
    return TestAuthority("example.org")


async def test_s_client_with_svid_is_accepted(
    ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    files = write_svid(tmp_path / "c", ca.issue_x509_svid(CLIENT), ca.bundle_pem())
    ctx = our_server_context(ca, metrics)
    async with serving(ctx) as served:
        out = await s_client(served.port, files, files["roots"])
    assert CLIENT in out
    assert served.peers == [CLIENT]


async def test_s_client_without_certificate_is_rejected(
    ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    files = write_svid(tmp_path / "c", ca.issue_x509_svid(CLIENT), ca.bundle_pem())
    ctx = our_server_context(ca, metrics)
    async with serving(ctx) as served:
        out = await s_client(served.port, None, files["roots"])
    assert CLIENT not in out
    assert served.peers == []
    assert metrics.rejection_count("no-certificate") == 1


async def test_s_client_with_svid_of_foreign_root_is_rejected(
    ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    foreign = TestAuthority("example.org").issue_x509_svid(CLIENT)
    files = write_svid(tmp_path / "c", foreign, ca.bundle_pem())
    ctx = our_server_context(ca, metrics)
    async with serving(ctx) as served:
        await s_client(served.port, files, files["roots"])
    assert served.peers == []
    assert metrics.rejection_count("untrusted-root") == 1


async def _with_s_server(files: dict[str, Path], check: object) -> object:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-Verify",
        "3",
        "-CAfile",
        str(files["roots"]),
        "-cert",
        str(files["leaf"]),
        "-cert_chain",
        str(files["chain"]),
        "-key",
        str(files["key"]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, "openssl s_server exited before listening"
            if m := re.match(r"ACCEPT .*:(\d+)", line):
                port = int(m.group(1))
        return await check(port)  # type: ignore[operator]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _connect_peer(port: int, ctx: object) -> str:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    sid = writer.get_extra_info("ssl_object").peer_spiffe_id
    writer.close()
    return str(sid)


async def test_our_client_against_s_server_verify(
    ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    files = write_svid(tmp_path / "s", ca.issue_x509_svid(SERVER), ca.bundle_pem())
    ctx = our_client_context(ca, metrics)
    assert await _with_s_server(files, lambda port: _connect_peer(port, ctx)) == SERVER
    assert metrics.accepted_count() == 1


@pytest.mark.parametrize("case", ["unauthorized", "untrusted-root", "svid-uri-san"])
async def test_our_client_rejects_s_server(
    case: str, ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    server_svid = {
        "unauthorized": lambda: ca.issue_x509_svid("spiffe://example.org/impostor"),
        "untrusted-root": lambda: TestAuthority("example.org").issue_x509_svid(SERVER),
        "svid-uri-san": lambda: ca.issue_x509_svid(SERVER, two_uri_sans=True),
    }[case]()
    files = write_svid(tmp_path / "s", server_svid, ca.bundle_pem())
    ctx = our_client_context(ca, metrics)
    with pytest.raises(PeerRejected) as info:
        await _with_s_server(files, lambda port: _connect_peer(port, ctx))
    assert info.value.reason == case
    assert metrics.rejection_count(case) == 1
