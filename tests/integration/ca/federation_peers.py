"""Helpers for the federation tests: real CAs of their own trust domains on loopback (each with
its own data dir, store and admin socket, optionally a bundle endpoint), a Web PKI authority for
https_web endpoints (certificates minted at run time), and a tiny HTTPS server that answers with
whatever body a test gives it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.federation_config import FederationSettings
from s2s.core.clock import Clock
from s2s.core.spiffe_id import TrustDomain

# A trust domain whose keys move fast: the old root leaves ~9 s after the switch.
SHORT = {
    "max_svid_ttl": dt.timedelta(seconds=6),
    "x509_svid_ttl": dt.timedelta(seconds=6),
    "jwt_svid_ttl": dt.timedelta(seconds=6),
    "agent_svid_ttl": dt.timedelta(seconds=8),
    "server_svid_ttl": dt.timedelta(seconds=8),
    "backdate": dt.timedelta(seconds=1),
}


@dataclass
class Peer:
    """A running CA of trust domain ``td``."""

    td: TrustDomain
    server: CaServer
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def endpoint_url(self) -> str:
        endpoint = self.server.bundle_endpoint
        assert endpoint is not None, "this CA serves no bundle endpoint"
        return f"https://localhost:{endpoint.port}/"

    @property
    def admin_socket(self) -> Path:
        return self.server.options.admin_socket

    async def close(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)
        await self.server.close()


@contextlib.asynccontextmanager
async def running_peer(
    base: Path,
    name: str,
    *,
    federation: FederationSettings | None = None,
    overrides: dict[str, Any] | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Peer]:
    """A CA for trust domain ``name`` with its data under ``base/name``."""
    data_dir = base / name
    if not data_dir.exists():
        await init_trust_domain(data_dir, name)
    options = ServeOptions(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        tick=0.2,
        json_logs=False,
        config_overrides=overrides or {},
        socket_path=data_dir / "admin.sock",
        federation=federation or FederationSettings(),
    )
    server = await CaServer.open(options, clock=clock)
    stop = asyncio.Event()
    peer = Peer(TrustDomain.parse(name), server, stop, asyncio.create_task(server.run(stop)))
    try:
        yield peer
    finally:
        await peer.close()


async def wait_for(predicate: Any, what: str, *, timeout: float = 20.0) -> None:
    """Poll ``await predicate()`` (or a plain call) every 50 ms until true, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


class WebPki:
    """A private Web PKI: a CA and server certificates for host names and IPs (PEM files)."""

    def __init__(self, directory: Path, name: str = "Test Web CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / "web-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, *names: str) -> tuple[Path, Path]:
        """A server certificate (DNS names, or IPs when they parse as one) and its key files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(IPv4Address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=12))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file


@contextlib.asynccontextmanager
async def https_answering(
    cert_file: Path,
    key_file: Path,
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """An HTTPS server on loopback that answers every GET with ``body``; yields its URL."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(
            body=body, status=status, content_type="application/json", headers=headers
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://localhost:{port}/bundle"
    finally:
        await runner.cleanup()
