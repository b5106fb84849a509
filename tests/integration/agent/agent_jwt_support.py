"""Helpers shared by the agent's JWT revocation tests."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from s2s.agent.config import AgentConfig

MY_UID = f"unix:uid:{os.getuid()}"


def jti_of(token: str) -> str:
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    jti = claims["jti"]
    assert isinstance(jti, str)
    assert jti
    return jti


async def two_ids(harness: Any) -> tuple[AgentConfig, Any, Any]:
    """An agent config and entries for /billing and /api, both for this process's uid."""
    token, agent_id = await harness.ca.join_token()
    billing = await harness.ca.entry(agent_id, "/billing", [MY_UID])
    api = await harness.ca.entry(agent_id, "/api", [MY_UID])
    return harness.config(token=token), billing.spiffe_id, api.spiffe_id
