"""A CA URL, trust bundle or trust domain that is wrong ends the agent's first attestation with
the cause and the fix; a CA that is away is retried until it is back.

Real servers on 127.0.0.1: the test CA, a second CA of another trust domain, a plain HTTP server
and an HTTPS server with an ordinary certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s2s.agent.node import NodeAttestor
from s2s.core.errors import NotACa, TrustBundleMismatch, TrustDomainMismatch
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority


async def _start(node: NodeAttestor) -> Any:
    return await asyncio.wait_for(node.start(), 20)


async def test_a_bundle_of_another_root_names_the_bundle_and_how_to_re_export_it(
    harness: Any, make_node: Any, authority: TestAuthority
) -> None:
    token, agent_id = await harness.ca.join_token()
    stale = harness.tmp_path / "stale.pem"
    stale.write_bytes(authority.bundle_pem())  # example.org, but not this CA's root
    node = make_node(harness.config(token=token, trust_bundle=stale))
    with pytest.raises(TrustBundleMismatch) as info:
        await _start(node)
    message = str(info.value)
    assert "does not chain to the agent's trust bundle" in message
    assert f"--trust-bundle {stale}" in message
    assert "s2s-ca bundle show --format pem" in message
    # Twin: the CA's own bundle attests, with the same token (it was never sent).
    good = make_node(harness.config(token=token, data_dir=harness.tmp_path / "good"))
    assert (await _start(good)).svid.spiffe_id == agent_id


async def test_a_ca_of_another_trust_domain_is_named_the_right_way_round(
    harness: Any, make_node: Any, foreign_ca: Any
) -> None:
    other = foreign_ca
    token, _ = await harness.ca.join_token()
    # The agent's bundle is example.org's; its CA URL leads to the CA of other.org.
    node = make_node(harness.config(token=token, ca_urls=(other.url,)))
    with pytest.raises(TrustDomainMismatch) as info:
        await _start(node)
    assert (
        f"the CA at {other.url} is the CA of trust domain other.org, but this agent is "
        "configured for trust domain example.org"
    ) in str(info.value)
    # The other way: configured for other.org, pointed at example.org's CA with its root.
    bundle_path = harness.tmp_path / "example.pem"
    bundle_path.write_bytes(harness.ca.bundle_pem())
    node = make_node(
        harness.config(
            token=token,
            trust_domain=TrustDomain("other.org"),
            trust_bundle=bundle_path,
            data_dir=harness.tmp_path / "other-agent",
        )
    )
    with pytest.raises(TrustDomainMismatch) as info:
        await _start(node)
    assert (
        f"the CA at {harness.ca.url} is the CA of trust domain example.org, but this agent "
        "is configured for trust domain other.org"
    ) in str(info.value)


async def _empty_json(_request: web.Request) -> web.Response:
    return web.json_response({})


async def test_a_plain_http_port_is_not_a_ca(harness: Any, make_node: Any) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _empty_json)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        node = make_node(harness.config(token="t", ca_urls=(url,)))
        with pytest.raises(NotACa, match=r"does not speak TLS.*check --ca-url"):
            await _start(node)
    finally:
        await runner.cleanup()


def _ordinary_tls_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intranet.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("intranet.example")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "web.pem", tmp_path / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


async def test_another_https_server_is_not_a_ca_and_never_sees_the_token(
    harness: Any, make_node: Any
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = _ordinary_tls_context(harness.tmp_path)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        node = make_node(harness.config(token="secret", ca_urls=(url,)))
        with pytest.raises(NotACa, match=r"certificate for intranet\.example.*check --ca-url"):
            await _start(node)
        assert seen == []
    finally:
        await runner.cleanup()


async def test_a_ca_url_with_a_path_is_not_the_agent_api(harness: Any, make_node: Any) -> None:
    token, agent_id = await harness.ca.join_token()
    node = make_node(harness.config(token=token, ca_urls=(harness.ca.url + "/s2s",)))
    with pytest.raises(NotACa, match=r"answered HTTP 404.*not the base URL"):
        await _start(node)
    # Twin: the base URL attests with the same token (a 404 spends no token).
    good = make_node(harness.config(token=token, data_dir=harness.tmp_path / "good"))
    assert (await _start(good)).svid.spiffe_id == agent_id


async def test_a_ca_that_is_away_is_retried_until_it_is_back(
    harness: Any, make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token, agent_id = await harness.ca.join_token()
    config = harness.config(token=token)
    await harness.ca.stop()  # nothing listens at the CA URL: an outage, not a misconfiguration
    node = make_node(config)
    task = asyncio.create_task(node.start())

    def retries() -> int:
        return sum(1 for r in caplog.records if r.getMessage() == "agent.ca_unavailable")

    await harness.wait_until(lambda: retries() >= 3, what="three failed attestation attempts")
    assert not task.done()
    await harness.ca.start()
    identity = await asyncio.wait_for(task, 20)
    assert identity.svid.spiffe_id == agent_id


async def test_the_agent_cli_exits_with_the_code_and_the_fix(
    harness: Any, authority: TestAuthority
) -> None:
    token, _ = await harness.ca.join_token()
    stale = harness.tmp_path / "stale.pem"
    stale.write_bytes(authority.bundle_pem())

    async def run(trust_domain: str, bundle: Path, name: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from s2s.cli.agent import main; main()", "run",
            "--trust-domain", trust_domain, "--ca-url", harness.ca.url,
            "--trust-bundle", str(bundle), "--data-dir", str(harness.tmp_path / name),
            "--socket", str(harness.socket_dir / f"{name}.sock"), "--log-format", "text",
            "--join-token", token,
            env={k: v for k, v in os.environ.items() if not k.startswith("S2S_")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, stderr.decode()

    code, stderr = await run("example.org", stale, "a")
    assert code == 7, stderr
    assert "re-export the bundle with 's2s-ca bundle show --format pem'" in stderr
    assert "Traceback" not in stderr
    good = harness.tmp_path / "good.pem"
    good.write_bytes(harness.ca.bundle_pem())
    code, stderr = await run("other.org", good, "b")
    assert code == 8, stderr
    assert "is the CA of trust domain example.org" in stderr
    assert "Traceback" not in stderr
