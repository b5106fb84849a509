"""Every malformed JSON body is a 400 with a reason, on the public, agent and admin APIs, never a
500: integers past Python's 4,300-digit conversion limit, NaN/Infinity, absurd durations.

Each refusal has an accepted twin that differs from it by the one bad value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from ca_harness import Agent, RunningCa, csr_pem, new_key

HUGE_INT = "1" * 5000  # past sys.get_int_max_str_digits() (4300)
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def admin(ca: RunningCa) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP session on the admin Unix socket (the CLI's client only sends valid JSON)."""
    connector = aiohttp.UnixConnector(path=str(ca.server.options.admin_socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def admin_post(session: aiohttp.ClientSession, path: str, data: str) -> tuple[int, Any]:
    async with session.post("http://admin" + path, data=data, headers=JSON) as resp:
        return resp.status, await resp.json(content_type=None)


def refused(status: int, body: Any) -> None:
    assert (status, body["error"]) == (400, "invalid_request"), body
    assert body["message"]
    assert len(body["message"]) < 400  # names the problem, does not echo the number


@pytest.mark.parametrize(
    "value",
    [HUGE_INT, "-" + HUGE_INT, "NaN", "Infinity", "-Infinity"],
    ids=["huge", "huge-negative", "nan", "inf", "-inf"],
)
async def test_public_attest_refuses_bad_numbers(ca: RunningCa, value: str) -> None:
    token = await ca.token()
    csr = csr_pem(new_key()).replace("\n", "\\n")
    bad = f'{{"join_token": "{token["token"]}", "csr": "{csr}", "x": {value}}}'
    refused(*await ca.public("POST", "/v1/agent/attest", data=bad, headers=JSON))
    good = f'{{"join_token": "{token["token"]}", "csr": "{csr}"}}'
    status, body = await ca.public("POST", "/v1/agent/attest", data=good, headers=JSON)
    assert status == 200, body  # the refusal did not burn the token


@pytest.mark.parametrize("value", [HUGE_INT, "NaN", "1e999999"], ids=["huge", "nan", "1e999999"])
async def test_agent_jwt_refuses_bad_ttl(ca: RunningCa, agent: Agent, value: str) -> None:
    entry = await ca.entry(agent)
    bad = f'{{"entry_id": "{entry["id"]}", "audience": ["a"], "ttl": {value}}}'
    refused(*await agent.call("POST", "/v1/agent/jwt", data=bad, headers=JSON))
    good = f'{{"entry_id": "{entry["id"]}", "audience": ["a"], "ttl": 60}}'
    status, body = await agent.call("POST", "/v1/agent/jwt", data=good, headers=JSON)
    assert status == 200, body


async def test_agent_jwt_refuses_a_ttl_that_overflows(ca: RunningCa, agent: Agent) -> None:
    entry = await ca.entry(agent)
    body = {"entry_id": entry["id"], "audience": ["a"], "ttl": 10**30}
    refused(*await agent.call("POST", "/v1/agent/jwt", json=body))


async def test_agent_x509_refuses_a_huge_integer(ca: RunningCa, agent: Agent) -> None:
    bad = f'{{"requests": [], "n": {HUGE_INT}}}'
    refused(*await agent.call("POST", "/v1/agent/x509", data=bad, headers=JSON))


@pytest.mark.parametrize("ttl", [HUGE_INT, str(10**30), "NaN"], ids=["huge", "overflow", "nan"])
async def test_admin_entry_create_refuses_bad_ttls(
    ca: RunningCa, agent: Agent, admin: aiohttp.ClientSession, ttl: str
) -> None:
    def body(value: str) -> str:
        return (
            f'{{"spiffe_id": "spiffe://example.org/w", "parent_id": "{agent.spiffe_id}", '
            f'"selectors": ["unix:uid:1000"], "x509_svid_ttl": {value}}}'
        )

    refused(*await admin_post(admin, "/v1/entries", body(ttl)))
    status, created = await admin_post(admin, "/v1/entries", body("60"))
    assert status == 201, created


@pytest.mark.parametrize("ttl", [HUGE_INT, str(10**30)], ids=["huge", "overflow"])
async def test_admin_token_refuses_bad_ttls(admin: aiohttp.ClientSession, ttl: str) -> None:
    refused(*await admin_post(admin, "/v1/tokens", f'{{"ttl": {ttl}}}'))
    status, body = await admin_post(admin, "/v1/tokens", '{"ttl": 60}')
    assert status == 201, body
