"""The README's JWT-SVID setup enforces revocations: a real CA, a real agent, and a service that
validates tokens itself with ``JwtValidator(JwtSource(), audience=...)``.

The validator takes the agent's revocations from ``JwtSource.revocations`` (the agent's
``s2s.agent.v1.Revocations`` stream on the Workload API socket). A token revoked by ``jti``
(``s2s-ca revoke --jti``) or by SPIFFE ID (the CA's revocation service) is refused with reason
``revoked`` within a deadline; twins: another token still validates, a token minted after the ID
revocation validates, and when the agent's stream dies the validator keeps its last set until
``max_staleness`` and then fails closed with ``revocations-stale``.
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
from s2s.core.errors import InvalidToken
from s2s.verifier import JwtSource, JwtValidator
from s2s.verifier.revocation_choice import no_revocation_check

MY_UID = f"unix:uid:{os.getuid()}"
AUD = "billing"
DEADLINE = 2.0  # seconds from `s2s-ca revoke` returning to the validator's refusal
STALE_AFTER = 3.0  # the verifier's max_staleness in the dead-stream test
# The agent beats every 0.2 s and long-polls the CA for 1 s, so a live stream confirms the set
# well within STALE_AFTER.
QUICK = AgentTuning(
    entries_wait=1.0, bundle_interval=5.0, backoff_initial=0.05, backoff_cap=0.5,
    health_interval=0.1, first_sync_timeout=5.0, revocations_heartbeat=0.2,
)  # fmt: skip

pytestmark = pytest.mark.timeout(60)


async def s2s_ca(*args: str) -> str:
    """Run the ``s2s-ca`` CLI in a subprocess (the CA runs in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "s2s.cli.ca", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, (process.returncode, out, err)
    return out.decode()


async def refused_within(
    validator: JwtValidator, token: str, reason: str, timeout: float = DEADLINE
) -> float:
    """Poll ``validator`` until it refuses ``token`` for ``reason``; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            validator.validate(token)
        except InvalidToken as exc:
            if exc.reason != reason:
                raise AssertionError(f"refused for {exc.reason}, not {reason}: {exc}") from exc
            return loop.time() - started
        if loop.time() - started > timeout:
            raise AssertionError(f"the token is still accepted {timeout}s later (want {reason})")
        await asyncio.sleep(0.01)


async def test_readme_setup_refuses_a_jti_revoked_with_the_cli(harness: Any) -> None:
    config, billing, api = await two_ids(harness)
    agent = (await harness.start_agent(config)).agent
    async with JwtSource(socket=str(agent.config.socket)) as jwts:
        validator = JwtValidator(jwts, audience=AUD)  # the README's setup, nothing more
        old = (await jwts.fetch_jwt_svid(AUD, billing)).token
        other = (await jwts.fetch_jwt_svid(AUD, api)).token
        assert validator.validate(old).spiffe_id == billing  # twin: valid until revoked
        admin = harness.ca.server.options.admin_socket
        done = json.loads(await s2s_ca("--socket", str(admin), "revoke", "--jti", jti_of(old),
                                       "--json"))  # fmt: skip
        assert done["target"] == "jti"
        took = await refused_within(validator, old, "revoked")
        print(f"jti refused {took * 1000:.0f} ms after `s2s-ca revoke` returned")
        assert validator.validate(other).spiffe_id == api  # twin: another jti is still valid
        fresh = (await jwts.fetch_jwt_svid(AUD, billing)).token  # the agent re-mints at once
        assert fresh != old
        assert validator.validate(fresh).spiffe_id == billing


async def test_readme_setup_refuses_tokens_issued_before_a_spiffe_id_revocation(
    harness: Any,
) -> None:
    config, billing, api = await two_ids(harness)
    agent = (await harness.start_agent(config)).agent
    async with JwtSource(socket=str(agent.config.socket)) as jwts:
        validator = JwtValidator(jwts, audience=AUD)
        old = (await jwts.fetch_jwt_svid(AUD, billing)).token
        other = (await jwts.fetch_jwt_svid(AUD, api)).token
        assert validator.validate(old).spiffe_id == billing
        result = await harness.ca.server.revocations.revoke_spiffe_id(billing)
        revoked_at = result.records[0].revoked_at
        took = await refused_within(validator, old, "revoked")
        print(f"SPIFFE ID refused {took * 1000:.0f} ms after the revocation was stored")
        assert validator.validate(other).spiffe_id == api  # twin: another ID
        # iat is in whole seconds: a token for the ID minted from the next second on is valid.
        await harness.wait_until(
            lambda: agent.clock.now() >= revoked_at + timedelta(seconds=1), what="a new second"
        )
        fresh = (await jwts.fetch_jwt_svid(AUD, billing)).token
        assert fresh != old
        assert validator.validate(fresh).spiffe_id == billing  # twin: minted after revocation


async def test_a_dead_agent_stream_fails_closed_past_max_staleness(harness: Any) -> None:
    config, billing, _ = await two_ids(harness)
    async with running(config, QUICK) as (_agent, stop_agent):
        jwts = JwtSource(socket=str(config.socket), revocations_max_staleness=STALE_AFTER)
        async with jwts:
            validator = JwtValidator(jwts, audience=AUD)
            token = (await jwts.fetch_jwt_svid(AUD, billing)).token
            # Twin: a live stream keeps the set confirmed (heartbeats), past the limit too.
            beats = jwts.revocations.messages
            await harness.wait_until(
                lambda: jwts.revocations.messages >= beats + 3, what="three heartbeats"
            )
            assert jwts.revocations.status() == "ok"
            assert validator.validate(token).spiffe_id == billing
            loop = asyncio.get_running_loop()
            stop_agent.set()  # the agent goes away with its stream
            stopped = loop.time()
            await harness.wait_until(
                lambda: jwts.revocations.reconnects > 0, what="the stream to break"
            )
            assert validator.validate(token).spiffe_id == billing  # the last set still answers
            took = await refused_within(validator, token, "revocations-stale", STALE_AFTER + 5)
            assert loop.time() - stopped > STALE_AFTER - 1.0  # not before the limit (minus age)
            assert jwts.revocations.status() == "stale"
            print(f"stale {took:.1f}s after the stream broke (limit {STALE_AFTER}s)")


async def test_an_explicit_opt_out_is_still_possible_and_wins(harness: Any) -> None:
    config, billing, _ = await two_ids(harness)
    agent = (await harness.start_agent(config)).agent
    async with JwtSource(socket=str(agent.config.socket)) as jwts:
        validator = JwtValidator(jwts, audience=AUD, revocations=no_revocation_check())
        token = (await jwts.fetch_jwt_svid(AUD, billing)).token
        revoked = await harness.ca.server.revocations.revoke_spiffe_id(billing)
        default = JwtValidator(jwts, audience=AUD)
        await refused_within(default, token, "revoked")
        assert validator.validate(token).spiffe_id == billing  # the caller chose not to check
        await harness.wait_until(
            lambda: agent.clock.now() >= revoked.records[0].revoked_at + timedelta(seconds=1),
            what="a new second",
        )
        fresh = (await jwts.fetch_jwt_svid(AUD, billing)).token  # the agent has re-issued
        assert default.validate(fresh).spiffe_id == billing
