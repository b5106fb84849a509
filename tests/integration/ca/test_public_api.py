"""Public endpoints of a running CA: bundle, JWKS, health, metrics, and its own HTTPS identity."""

from __future__ import annotations

import json
import ssl

import aiohttp
import pytest
from ca_harness import TRUST_DOMAIN, RunningCa, served_leaf

from s2s.core.bundle import Bundle
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import check_x509_svid
from s2s.testing import TestAuthority

TD = TrustDomain.parse(TRUST_DOMAIN)


async def test_bundle_is_a_spiffe_bundle_with_the_root_and_a_jwt_key(ca: RunningCa) -> None:
    status, body = await ca.public("GET", "/v1/bundle")
    assert status == 200
    bundle = Bundle.decode(TD, json.dumps(body))
    assert len(bundle.x509_authorities) == 1
    assert bundle.x509_authorities[0].subject == bundle.x509_authorities[0].issuer  # the root
    assert len(bundle.jwt_authorities) >= 1
    assert bundle.sequence >= 1
    assert bundle.x509_pem() == ca.bundle_pem


async def test_jwks_holds_only_jwt_keys(ca: RunningCa) -> None:
    status, body = await ca.public("GET", "/.well-known/jwks.json")
    assert status == 200
    assert body["keys"]
    # use "sig" with alg: what generic JOSE libraries accept (the bundle keeps "jwt-svid")
    assert all(k["use"] == "sig" and k["alg"] == "ES256" and k["kid"] for k in body["keys"])
    assert not any("x5c" in k for k in body["keys"])


async def test_health_and_readiness(ca: RunningCa) -> None:
    assert await ca.public("GET", "/healthz") == (200, {"status": "ok"})
    status, body = await ca.public("GET", "/readyz")
    assert (status, body["ready"]) == (200, True)


async def test_metrics_exposes_issuance_errors_authorities_entries_agents(ca: RunningCa) -> None:
    await ca.attest()
    await ca.public("GET", "/no/such/path")
    await ca.server.refresh_gauges()
    status, text = await ca.public("GET", "/metrics")
    assert status == 200
    assert 's2s_ca_svids_issued_total{kind="agent"} 1.0' in text
    assert 's2s_ca_issue_seconds_count{kind="agent"} 1.0' in text
    assert 's2s_ca_request_errors_total{reason="not_found"} 1.0' in text
    assert "s2s_ca_authority_not_after_timestamp_seconds{authority_id=" in text
    assert 's2s_ca_agents{state="active"} 1.0' in text
    assert "s2s_ca_registration_entries 0.0" in text


async def test_server_certificate_is_the_ca_svid(ca: RunningCa) -> None:
    leaf = await served_leaf(ca)
    chain = [leaf, ca.server.authority.x509_signer.certificate]
    assert str(check_x509_svid(chain)) == f"spiffe://{TRUST_DOMAIN}/s2s/ca/ca-0"


async def test_server_is_rejected_by_a_client_trusting_a_foreign_root(ca: RunningCa) -> None:
    foreign = TestAuthority(TRUST_DOMAIN)
    ctx = ssl.create_default_context(cadata=foreign.bundle_pem().decode())
    ctx.check_hostname = False
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(ca.url + "/healthz")


async def test_unknown_path_and_wrong_method_are_json_errors(ca: RunningCa) -> None:
    status, body = await ca.public("GET", "/v2/nothing")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await ca.public("POST", "/v1/bundle", json={})
    assert (status, body["error"]) == (405, "method_not_allowed")
