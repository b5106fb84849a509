"""ValidateJWTSVID follows the agent's revocation feed: a real CA, a real agent, our Workload API
client. A JWT-SVID revoked by jti (``s2s-ca revoke --jti`` through the admin socket) or by SPIFFE
ID (the CA's revocation service) is refused with reason ``revoked`` within a deadline, while
tokens for other IDs, and for the same ID issued after the revocation, still validate. When the
agent's feed goes stale (the CA is down past the staleness limit) every ValidateJWTSVID fails
closed with UNAVAILABLE, and validates again once the feed is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta
from typing import Any

import pytest
from agent_jwt_support import jti_of, running, two_ids

from s2s.agent.app import AgentTuning
from s2s.core.errors import InvalidToken, Unavailable
from s2s.verifier.workload_client import WorkloadApiClient

MY_UID = f"unix:uid:{os.getuid()}"
AUD = "payments"
DEADLINE = 5.0  # seconds from the revocation to the agent's refusal
STALE_AFTER = 3.0  # the agent's feed staleness limit in the fail-closed test
# tests/integration/conftest.py's FAST, with a short staleness limit (the feed long-polls for
# half of it, so it is confirmed fresh every ~1.5 s while the CA answers)
FAST_STALE = AgentTuning(
    entries_wait=2.0, bundle_interval=5.0, backoff_initial=0.05, backoff_cap=0.5,
    health_interval=0.1, first_sync_timeout=5.0, revocations_max_staleness=STALE_AFTER,
)  # fmt: skip

pytestmark = pytest.mark.timeout(60)


async def refused_within(
    client: WorkloadApiClient, token: str, expected: type[Exception], timeout: float = DEADLINE
) -> Any:
    """Poll ValidateJWTSVID until it raises ``expected`` (within ``timeout``); return the error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await client.validate_jwt_svid(token, AUD)
        except expected as exc:
            return exc
        if loop.time() > deadline:
            raise AssertionError(f"ValidateJWTSVID still accepts the token after {timeout}s")
        await asyncio.sleep(0.02)


async def s2s_ca(*args: str) -> str:
    """Run the ``s2s-ca`` CLI in a subprocess (the CA runs in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "s2s.cli.ca", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, (process.returncode, out, err)
    return out.decode()


async def test_a_jwt_svid_revoked_by_jti_is_refused_by_the_agent(harness: Any) -> None:
    config, billing, api = await two_ids(harness)
    agent = (await harness.start_agent(config)).agent
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        old = (await client.fetch_jwt_svid(AUD, billing)).token
        assert (await client.validate_jwt_svid(old, AUD))[0] == billing  # twin: valid until now
        admin = harness.ca.server.options.admin_socket
        done = json.loads(await s2s_ca("--socket", str(admin), "revoke", "--jti", jti_of(old),
                                       "--json"))  # fmt: skip
        assert done["target"] == "jti"
        error = await refused_within(client, old, InvalidToken)
        assert error.reason == "revoked"
        # The agent dropped the revoked token from its cache: the next one is fresh and valid.
        fresh = (await client.fetch_jwt_svid(AUD, billing)).token
        assert fresh != old
        assert (await client.validate_jwt_svid(fresh, AUD))[0] == billing
        other = (await client.fetch_jwt_svid(AUD, api)).token
        assert (await client.validate_jwt_svid(other, AUD))[0] == api
        with pytest.raises(InvalidToken) as again:  # still refused, not a one-off
            await client.validate_jwt_svid(old, AUD)
        assert again.value.reason == "revoked"


async def test_jwt_svids_issued_before_a_spiffe_id_revocation_are_refused(harness: Any) -> None:
    config, billing, api = await two_ids(harness)
    agent = (await harness.start_agent(config)).agent
    async with WorkloadApiClient(str(agent.config.socket)) as client:
        old = (await client.fetch_jwt_svid(AUD, billing)).token
        other = (await client.fetch_jwt_svid(AUD, api)).token
        assert (await client.validate_jwt_svid(old, AUD))[0] == billing
        result = await harness.ca.server.revocations.revoke_spiffe_id(billing)
        revoked_at = result.records[0].revoked_at
        error = await refused_within(client, old, InvalidToken)
        assert error.reason == "revoked"
        assert (await client.validate_jwt_svid(other, AUD))[0] == api  # another ID: valid
        # iat is in whole seconds: a token for the ID minted from the next second on is valid.
        await harness.wait_until(
            lambda: agent.clock.now() >= revoked_at + timedelta(seconds=1), what="a new second"
        )
        fresh = (await client.fetch_jwt_svid(AUD, billing)).token
        assert fresh != old
        assert (await client.validate_jwt_svid(fresh, AUD))[0] == billing


async def test_a_stale_feed_makes_validation_fail_closed_with_unavailable(harness: Any) -> None:
    config, billing, _ = await two_ids(harness)
    async with (
        running(config, FAST_STALE) as (agent, _stop),
        WorkloadApiClient(str(config.socket)) as client,
    ):
        token = (await client.fetch_jwt_svid(AUD, billing)).token
        assert (await client.validate_jwt_svid(token, AUD))[0] == billing  # twin: fresh feed
        await harness.ca.stop()
        error = await refused_within(client, token, Unavailable, timeout=STALE_AFTER + 5)
        assert not isinstance(error, InvalidToken)  # not the token's fault: retry
        assert "UNAVAILABLE" in str(error)
        assert "revocations" in str(error)
        calls = agent.metrics.registry.get_sample_value(
            "s2s_agent_workload_api_calls_total",
            {"method": "ValidateJWTSVID", "code": "UNAVAILABLE"},
        )
        assert calls is not None
        assert calls >= 1
        await harness.ca.start()  # same port: the feed catches up and validation resumes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                assert (await client.validate_jwt_svid(token, AUD))[0] == billing
                break
            except Unavailable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
