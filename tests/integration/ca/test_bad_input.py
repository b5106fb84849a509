"""Every bad input of issue 3 gets a JSON error with the right status, and nothing half-written.

Each rejection sits next to the accepted twin it differs from by one thing.
"""

from __future__ import annotations

import json
import ssl
import warnings
from pathlib import Path

import aiohttp
import pytest
from ca_harness import (
    TRUST_DOMAIN,
    Agent,
    RunningCa,
    ca_client,
    csr_pem,
    load_chain,
    new_key,
    start_ca,
    stop_ca,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from s2s.core.clock import FakeClock
from s2s.core.errors import S2SError
from s2s.core.x509svid import check_x509_svid
from s2s.testing import TestAuthority


def tampered_csr(key: object) -> str:
    """A CSR whose signature no longer matches its content (one signature byte flipped)."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem(key).encode()).public_bytes(
        serialization.Encoding.DER
    ))  # fmt: skip
    der[-5] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def weak_rsa_csr(exponent: int = 65537, bits: int = 1024) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def sign(agent: Agent, entry_id: str, csr: str) -> tuple[int, dict]:
    status, body = await agent.call(
        "POST", "/v1/agent/x509", json={"requests": [{"entry_id": entry_id, "csr": csr}]}
    )
    assert status == 200, body
    return body["results"][0].get("status", 200), body["results"][0]


# ---- HTTP-level: JSON, size, content type ---------------------------------------------------


async def test_well_formed_attest_request_is_accepted(ca: RunningCa) -> None:
    token = await ca.token()
    body = {"join_token": token["token"], "csr": csr_pem(new_key())}
    status, answer = await ca.public("POST", "/v1/agent/attest", json=body)
    assert status == 200, answer


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_request"),
        (b"[1, 2]", "application/json", 400, "invalid_request"),
        (b"\xff\xfe", "application/json", 400, "invalid_request"),
        (b"[" * 60_000, "application/json", 400, "invalid_request"),  # nesting bomb
        (b'{"join_token": "x", "csr": "y"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"join_token": "x", "csr": "y"}', "application/x-www-form-urlencoded", 415,
         "unsupported_media_type"),
        (b'{"pad": "' + b"a" * 70_000 + b'"}', "application/json", 413, "too_large"),
        (b'{"csr": "y"}', "application/json", 400, "invalid_request"),
        (b'{"join_token": 7, "csr": "y"}', "application/json", 400, "invalid_request"),
    ],
)  # fmt: skip
async def test_malformed_bodies_are_json_errors(
    ca: RunningCa, data: bytes, content_type: str, status: int, code: str
) -> None:
    got, body = await ca.public(
        "POST", "/v1/agent/attest", data=data, headers={"Content-Type": content_type}
    )
    assert (got, body["error"]) == (status, code)
    assert body["message"]


async def test_repeated_field_names_are_refused(ca: RunningCa) -> None:
    token = await ca.token()
    csr = json.dumps(csr_pem(new_key()))
    good = f'{{"join_token": "{token["token"]}", "csr": {csr}}}'
    doubled = f'{{"join_token": "other", "join_token": "{token["token"]}", "csr": {csr}}}'
    headers = {"Content-Type": "application/json"}
    status, body = await ca.public("POST", "/v1/agent/attest", data=doubled, headers=headers)
    assert (status, body["error"]) == (400, "invalid_request")
    assert "repeats" in body["message"]
    assert (await ca.public("POST", "/v1/agent/attest", data=good, headers=headers))[0] == 200


async def test_oversized_batch_body_is_refused(ca: RunningCa, agent: Agent) -> None:
    huge = {"requests": [{"entry_id": "x", "csr": "a" * 2_000_000}]}
    status, body = await agent.call("POST", "/v1/agent/x509", json=huge)
    assert (status, body["error"]) == (413, "too_large")


@pytest.mark.parametrize("query", ["since=abc", "wait=-1", "wait=nan", "since=1.5"])
async def test_bad_long_poll_parameters(ca: RunningCa, agent: Agent, query: str) -> None:
    status, body = await agent.call("GET", f"/v1/agent/entries?{query}")
    assert (status, body["error"]) == (400, "invalid_request")


# ---- join tokens --------------------------------------------------------------------------


async def test_join_token_is_single_use(ca: RunningCa) -> None:
    token = await ca.token()
    first = {"join_token": token["token"], "csr": csr_pem(new_key())}
    assert (await ca.public("POST", "/v1/agent/attest", json=first))[0] == 200
    other = {"join_token": token["token"], "csr": csr_pem(new_key())}
    status, body = await ca.public("POST", "/v1/agent/attest", json=other)
    assert (status, body["error"]) == (401, "attestation_failed")
    # the first key may repeat it (its answer may have been lost), and only that key
    assert (await ca.public("POST", "/v1/agent/attest", json=first))[0] == 200


async def test_unknown_join_token_is_refused(ca: RunningCa) -> None:
    body = {"join_token": "not-a-token-the-ca-made", "csr": csr_pem(new_key())}
    status, answer = await ca.public("POST", "/v1/agent/attest", json=body)
    assert (status, answer["error"]) == (401, "attestation_failed")


async def test_expired_join_token_is_refused(data_dir: Path, fake_clock: FakeClock) -> None:
    server, task, stop = await start_ca(data_dir, clock=fake_clock)
    try:
        async with ca_client(server) as ca:
            stale = await ca.token()
            fake_clock.advance(seconds=660)  # join tokens live 10 minutes by default
            fresh = await ca.token()
            for token, status in ((stale, 401), (fresh, 200)):
                body = {"join_token": token["token"], "csr": csr_pem(new_key())}
                got, answer = await ca.public("POST", "/v1/agent/attest", json=body)
                assert got == status, answer
    finally:
        await stop_ca(server, task, stop)


@pytest.mark.parametrize("bad", ["tampered", "weak", "rsa-e3", "garbage", "two-blocks"])
async def test_bad_csr_at_attest_does_not_burn_the_token(ca: RunningCa, bad: str) -> None:
    token = await ca.token()
    csr = {
        "tampered": lambda: tampered_csr(new_key()),
        "weak": weak_rsa_csr,
        "rsa-e3": lambda: weak_rsa_csr(3, 2048),
        "garbage": lambda: (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        ),
        "two-blocks": lambda: csr_pem(new_key()) + csr_pem(new_key()),
    }[bad]()
    status, body = await ca.public(
        "POST", "/v1/agent/attest", json={"join_token": token["token"], "csr": csr}
    )
    assert (status, body["error"]) == (400, "invalid_request"), body
    good = {"join_token": token["token"], "csr": csr_pem(new_key())}
    assert (await ca.public("POST", "/v1/agent/attest", json=good))[0] == 200


# ---- batch signing ------------------------------------------------------------------------


async def test_identity_comes_from_the_entry_not_the_csr(ca: RunningCa, agent: Agent) -> None:
    entry = await ca.entry(agent, "/billing")
    claimed = csr_pem(new_key(), uri=f"spiffe://{TRUST_DOMAIN}/admin")
    status, result = await sign(agent, entry["id"], claimed)
    assert status == 200
    assert str(check_x509_svid(load_chain(result["svid_chain"]))) == entry["spiffe_id"]


@pytest.mark.parametrize(
    ("csr", "status", "code"),
    [
        (lambda: tampered_csr(new_key()), 400, "invalid_request"),
        (weak_rsa_csr, 400, "invalid_request"),
        (lambda: weak_rsa_csr(3, 2048), 400, "invalid_request"),
    ],
)
async def test_bad_csr_in_a_batch_fails_only_its_item(
    ca: RunningCa, agent: Agent, csr: object, status: int, code: str
) -> None:
    entry = await ca.entry(agent)
    requests = [
        {"entry_id": entry["id"], "csr": csr()},  # type: ignore[operator]
        {"entry_id": entry["id"], "csr": csr_pem(new_key())},
    ]
    got, body = await agent.call("POST", "/v1/agent/x509", json={"requests": requests})
    assert got == 200
    bad, good = body["results"]
    assert (bad["status"], bad["error"]) == (status, code)
    assert "svid_chain" not in bad
    assert "svid_chain" in good


async def test_unknown_entry_and_other_agents_entry(ca: RunningCa, agent: Agent) -> None:
    other = await ca.attest()
    theirs = await ca.entry(other, "/theirs")
    mine = await ca.entry(agent, "/mine")
    assert (await sign(agent, mine["id"], csr_pem(new_key())))[0] == 200
    status, result = await sign(agent, theirs["id"], csr_pem(new_key()))
    assert (status, result["error"]) == (403, "not_authorized")
    status, result = await sign(agent, "no-such-entry", csr_pem(new_key()))
    assert (status, result["error"]) == (404, "not_found")


@pytest.mark.parametrize("requests", [[], "not-a-list", [{"entry_id": "e"}], ["x"]])
async def test_malformed_batches(ca: RunningCa, agent: Agent, requests: object) -> None:
    status, body = await agent.call("POST", "/v1/agent/x509", json={"requests": requests})
    assert (status, body["error"]) == (400, "invalid_request")


async def test_batch_above_the_limit(ca: RunningCa, agent: Agent) -> None:
    entry = await ca.entry(agent)
    csr = csr_pem(new_key())
    requests = [{"entry_id": entry["id"], "csr": csr}] * 501
    status, body = await agent.call("POST", "/v1/agent/x509", json={"requests": requests})
    assert (status, body["error"]) == (400, "invalid_request")


# ---- JWT-SVIDs ----------------------------------------------------------------------------


async def test_jwt_rejections(ca: RunningCa, agent: Agent) -> None:
    entry = await ca.entry(agent)
    other = await ca.attest()
    theirs = await ca.entry(other, "/theirs")
    ok = {"entry_id": entry["id"], "audience": ["a"]}
    assert (await agent.call("POST", "/v1/agent/jwt", json=ok))[0] == 200
    cases = [
        ({**ok, "entry_id": theirs["id"]}, 403, "not_authorized"),
        ({**ok, "entry_id": "nope"}, 404, "not_found"),
        ({**ok, "ttl": 3600}, 400, "invalid_request"),
        ({**ok, "audience": []}, 400, "invalid_request"),
        ({**ok, "audience": "a"}, 400, "invalid_request"),
        ({**ok, "audience": [""]}, 400, "invalid_request"),
    ]
    for body, status, code in cases:
        got, answer = await agent.call("POST", "/v1/agent/jwt", json=body)
        assert (got, answer["error"]) == (status, code), body


# ---- admin: entries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"spiffe_id": "spiffe://other.org/billing"}, "trust domain"),
        ({"spiffe_id": f"spiffe://{TRUST_DOMAIN}/s2s/agent/x"}, "/s2s"),
        ({"spiffe_id": f"spiffe://{TRUST_DOMAIN}"}, ""),
        ({"spiffe_id": "not an id"}, ""),
        ({"x509_svid_ttl": 3600}, "cap"),
        ({"jwt_svid_ttl": 301}, "cap"),
        ({"selectors": []}, ""),
        ({"selectors": ["nocolon"]}, ""),
        ({"selectors": ["unix:uid:abc"]}, "decimal number"),
        ({"selectors": ["unix:uid:-5"]}, "decimal number"),
        ({"selectors": ["unix:uid:1000", "unix:path:relative/bin"]}, "absolute"),
        ({"selectors": ["unix:sha256:xyz"]}, "hexadecimal"),
        ({"selectors": ["unix:foo:bar"]}, "unix:uid"),
        ({"selectors": ["k8s:ns:default"]}, "no attestor"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_entry_create_rejections(
    ca: RunningCa, agent: Agent, change: dict, fragment: str
) -> None:
    good = {
        "spiffe_id": f"spiffe://{TRUST_DOMAIN}/billing",
        "parent_id": agent.spiffe_id,
        "selectors": ["unix:uid:1000"],
    }
    with pytest.raises(S2SError) as caught:
        await ca.admin_call("POST", "/v1/entries", {**good, **change})
    assert caught.value.code in {"invalid_request", "invalid_spiffe_id", "invalid_selector"}
    assert fragment.lower() in str(caught.value).lower()
    listed = await ca.admin_call("GET", "/v1/entries")
    assert listed["entries"] == []  # nothing half-written
    assert (await ca.admin_call("POST", "/v1/entries", good))["spiffe_id"] == good["spiffe_id"]


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [("unix:uid:abc", "decimal number"), ("unix:path:./bin", "absolute"), ("x:y:z", "type 'x'")],
)
async def test_entry_update_refuses_selectors_no_attestor_produces(
    ca: RunningCa, agent: Agent, selector: str, fragment: str
) -> None:
    entry = await ca.entry(agent)
    with pytest.raises(S2SError) as caught:
        await ca.admin_call("PATCH", f"/v1/entries/{entry['id']}", {"selectors": [selector]})
    assert (caught.value.code, fragment in str(caught.value)) == ("invalid_selector", True)
    shown = await ca.admin_call("GET", f"/v1/entries/{entry['id']}")
    assert shown["selectors"] == ["unix:uid:1000"]  # unchanged
    good = ["unix:uid:1001", "unix:path:/usr/bin/app", "unix:sha256:" + "ab" * 32]
    updated = await ca.admin_call("PATCH", f"/v1/entries/{entry['id']}", {"selectors": good})
    assert updated["selectors"] == sorted(good)


# ---- callers without a usable agent SVID ---------------------------------------------------


async def test_agent_endpoints_need_a_client_certificate(ca: RunningCa) -> None:
    status, body = await ca.public("GET", "/v1/agent/entries")
    assert (status, body["error"]) == (403, "not_authorized")


async def test_workload_svid_is_not_an_agent(ca: RunningCa, agent: Agent) -> None:
    minted = await ca.admin_call(
        "POST", "/v1/x509/mint", {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/w"}
    )
    ctx = ca.client_ssl(minted["chain_pem"].encode(), minted["key_pem"].encode())
    connector = aiohttp.TCPConnector(ssl=ctx)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(ca.url + "/v1/agent/entries") as resp,
    ):
        assert resp.status == 403
        assert (await resp.json())["error"] == "not_authorized"


async def test_foreign_client_certificate_fails_the_handshake(ca: RunningCa) -> None:
    foreign = TestAuthority(TRUST_DOMAIN)
    svid = foreign.issue_x509_svid(f"spiffe://{TRUST_DOMAIN}/s2s/agent/join_token/fake")
    ctx = ca.client_ssl(svid.chain_pem(), svid.key_pem())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            async with session.get(ca.url + "/v1/agent/entries") as resp:
                await resp.read()


@pytest.mark.parametrize("action", ["evict", "ban"])
async def test_evicted_and_banned_agents_get_403(ca: RunningCa, agent: Agent, action: str) -> None:
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    await ca.admin_call("POST", f"/v1/agents/{action}", {"spiffe_id": agent.spiffe_id})
    for method, path, body in [
        ("GET", "/v1/agent/entries", None),
        ("POST", "/v1/agent/renew", {"csr": csr_pem(agent.key)}),
        ("POST", "/v1/agent/jwt", {"entry_id": "x", "audience": ["a"]}),
    ]:
        status, answer = await agent.call(method, path, json=body)
        assert (status, answer["error"]) == (403, "not_authorized"), path
