"""The CA's HTTPS certificate names the configured issuers' hosts, so OAuth and OIDC clients
(which check a host name, never a SPIFFE ID) verify the CA with the trust bundle alone."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from s2s.ca.app import issuer_hosts


async def _handshake(ca: Any, tmp_path: Path, server_hostname: str) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    ctx = ssl.create_default_context(cafile=str(bundle))  # checks the host name
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", ca.port, ssl=ctx, server_hostname=server_hostname),
        10,
    )
    writer.close()


async def test_the_issuer_host_verifies_and_another_does_not(
    make_harness: Any, tmp_path: Path
) -> None:
    ca = (await make_harness(jwt_issuer="https://ca.example.test:8443")).ca
    await _handshake(ca, tmp_path, "ca.example.test")
    await _handshake(ca, tmp_path, "localhost")  # loopback listener
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        await _handshake(ca, tmp_path, "other.example.test")


async def test_without_an_issuer_only_localhost_is_named(live_ca: Any, tmp_path: Path) -> None:
    await _handshake(live_ca, tmp_path, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        await _handshake(live_ca, tmp_path, "ca.example.test")


def test_issuer_hosts_leave_out_ip_literals_and_repeats() -> None:
    assert issuer_hosts(
        "https://ca.example.test:8443", "https://ca.example.test", "https://10.0.0.1:8443", None
    ) == ("ca.example.test",)
    assert issuer_hosts("https://[::1]:8443") == ()
