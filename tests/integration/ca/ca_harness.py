"""Helpers for the CA integration tests: start and stop a real CA (``CaServer``, what ``s2s-ca
serve`` runs), act as an agent (join token attestation, mTLS with the agent SVID) and as an operator
(the admin API on the Unix socket, through the same client the CLI uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.client import AdminClient
from s2s.core.clock import Clock
from s2s.verifier.memcert import load_cert_chain_from_memory

TRUST_DOMAIN = "example.org"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_pem(key: Any, *, uri: str | None = None) -> str:
    """A CSR for ``key``. The CA must take the identity from the entry, never from here."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def load_chain(pem: str | bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)


@dataclass
class Agent:
    """An attested agent: its key, its SVID chain (PEM) and an mTLS session to the CA."""

    spiffe_id: str
    key: ec.EllipticCurvePrivateKey
    chain_pem: str
    bundle: dict[str, Any]
    ca: RunningCa
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    def session(self) -> aiohttp.ClientSession:
        ctx = self.ca.client_ssl(self.chain_pem.encode(), key_pem(self.key))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        self.sessions.append(session)
        return session

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session().request(method, self.ca.url + path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()


@dataclass
class RunningCa:
    """A CA serving on 127.0.0.1; ``url`` is its HTTPS base, ``admin`` its admin client."""

    server: CaServer
    data_dir: Path
    url: str
    admin: AdminClient
    bundle_pem: bytes
    session: aiohttp.ClientSession
    agents: list[Agent] = field(default_factory=list)

    def client_ssl(
        self, chain_pem: bytes | None = None, key: bytes | None = None
    ) -> ssl.SSLContext:
        """A client context trusting the CA's bundle (server identity is an SVID, not a name)."""
        ctx = ssl.create_default_context(cadata=self.bundle_pem.decode())
        ctx.check_hostname = False
        if chain_pem is not None and key is not None:
            load_cert_chain_from_memory(ctx, chain_pem, key)
        return ctx

    async def admin_call(self, method: str, path: str, body: Any = None, **query: str) -> Any:
        """The admin API through the CLI's (blocking) client, off the event loop."""
        return await asyncio.to_thread(
            self.admin.call, method, path, body=body, query=query or None
        )

    async def public(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """A call without a client certificate; returns (status, JSON or text)."""
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, json.loads(text)
            return resp.status, text

    async def token(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin_call("POST", "/v1/tokens", {})
        return result

    async def attest(self, key: ec.EllipticCurvePrivateKey | None = None) -> Agent:
        """Attest a new agent with a fresh join token."""
        key = key or new_key()
        token = await self.token()
        status, body = await self.public(
            "POST", "/v1/agent/attest", json={"join_token": token["token"], "csr": csr_pem(key)}
        )
        assert status == 200, body
        assert body["spiffe_id"] == token["agent_id"]
        agent = Agent(body["spiffe_id"], key, body["svid_chain"], body["bundle"], self)
        self.agents.append(agent)
        return agent

    async def entry(self, agent: Agent, path: str = "/billing", **extra: Any) -> dict[str, Any]:
        body = {
            "spiffe_id": f"spiffe://{TRUST_DOMAIN}{path}",
            "parent_id": agent.spiffe_id,
            "selectors": ["unix:uid:1000"],
            **extra,
        }
        result: dict[str, Any] = await self.admin_call("POST", "/v1/entries", body)
        return result


async def served_leaf(ca: RunningCa) -> x509.Certificate:
    """The certificate the CA presents in a new TLS handshake."""
    _, writer = await asyncio.open_connection("127.0.0.1", ca.server.port, ssl=ca.client_ssl())
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        await writer.wait_closed()


async def start_ca(
    data_dir: Path, *, clock: Clock | None = None, **overrides: Any
) -> tuple[CaServer, asyncio.Task[None], asyncio.Event]:
    """Open a CA on 127.0.0.1:0 and run its loops in a task until the event is set."""
    options = ServeOptions(
        data_dir=data_dir, listen="127.0.0.1:0", tick=0.2, json_logs=False, **overrides
    )
    server = await CaServer.open(options, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    return server, task, stop


async def stop_ca(server: CaServer, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)
    await server.close()


@contextlib.asynccontextmanager
async def ca_client(server: CaServer) -> AsyncIterator[RunningCa]:
    """A ``RunningCa`` (sessions, admin client, bundle) for a started server."""
    admin = AdminClient(server.options.admin_socket)
    bundle_pem = await asyncio.to_thread(admin.call, "GET", "/v1/bundle", query={"format": "pem"})
    ctx = ssl.create_default_context(cadata=bundle_pem)
    ctx.check_hostname = False
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    running = RunningCa(
        server,
        server.options.data_dir,
        f"https://127.0.0.1:{server.port}",
        admin,
        bundle_pem.encode(),
        session,
    )
    try:
        yield running
    finally:
        for agent in running.agents:
            await agent.close()
        await session.close()
