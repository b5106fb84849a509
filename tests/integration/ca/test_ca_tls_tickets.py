"""The CA's HTTPS listener issues no TLS session tickets: the agent API refuses a resumed session
(it carries no verified chain to check), so a ticket is work on every handshake, on both sides,
that can never be used."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from ca_harness import Agent, RunningCa, key_pem

from s2s.testing import TestAuthority
from s2s.verifier.memcert import load_cert_chain_from_memory

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n"


def fetch(port: int, context: ssl.SSLContext) -> tuple[bytes, ssl.SSLSession | None]:
    """One request on a fresh connection, read to the end (TLS 1.3 tickets come after the
    handshake, before the answer); the answer and the client's session."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(REQUEST)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer, tls.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_no_session_ticket_reaches_an_agent(
    ca: RunningCa, agent: Agent, version: ssl.TLSVersion
) -> None:
    context = ca.client_ssl(agent.chain_pem.encode(), key_pem(agent.key))
    context.minimum_version = context.maximum_version = version
    answer, session = await asyncio.to_thread(fetch, ca.server.port, context)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert session is not None
    assert not session.has_ticket


async def test_a_ticket_would_be_seen() -> None:
    """Twin: the same client code against a server context that issues tickets (the stdlib's
    default) sees one, so the check above can fail."""
    authority = TestAuthority()
    svid = authority.issue_x509_svid("spiffe://example.org/server")
    issuing = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain_from_memory(issuing, svid.chain_pem(), svid.key_pem())
    client = ssl.create_default_context(cadata=authority.bundle_pem().decode())
    client.check_hostname = False
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_one() -> None:
            conn, _ = listener.accept()
            with issuing.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        port = listener.getsockname()[1]
        (answer, session), _ = await asyncio.gather(
            asyncio.to_thread(fetch, port, client), asyncio.to_thread(serve_one)
        )
    assert answer.startswith(b"HTTP/1.1 200")
    assert session is not None
    assert session.has_ticket
