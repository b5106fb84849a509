"""The agent's first attestation answer is lost after the CA used the join token: the agent
retries with the same token and the same key and gets its identity by itself. A real CA on
127.0.0.1; the fault is the CA attestor's test seam (the CA answers 503 as for a store error, or
drops the connection without an answer)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient
from s2s.agent.issuance import new_key
from s2s.agent.node import NodeAttestor
from s2s.core.clock import SystemClock
from s2s.core.errors import AttestationFailed, Unavailable


def lose_first(harness: Any, stage: str, how: str) -> list[str]:
    """The CA's first attestation fails at ``stage``: a 503 (``how="503"``) or a connection
    closed without an answer (``how="drop"``: the handler is cancelled, as when a replica dies
    mid-request)."""
    seen: list[str] = []

    async def hook(at: str) -> None:
        seen.append(at)
        if at == stage and seen.count(stage) == 1:
            if how == "503":
                raise Unavailable("the store did not answer (injected)")
            raise asyncio.CancelledError

    harness.ca.server.attestor.fault_hook = hook
    return seen


@pytest.mark.parametrize(("stage", "how"), [("burnt", "503"), ("registered", "drop")])
async def test_node_retries_with_its_key_and_gets_the_token_agent_id(
    harness: Any, make_node: Any, stage: str, how: str
) -> None:
    token, agent_id = await harness.ca.join_token()
    seen = lose_first(harness, stage, how)
    node = make_node(harness.config(token=token))
    identity = await node.start()
    assert identity.svid.spiffe_id == agent_id
    assert node.attestations == 1
    assert seen.count(stage) == 2  # the first answer was lost, the retry went through


async def test_agent_restarted_with_the_token_after_a_lost_answer_is_refused(
    harness: Any, make_node: Any
) -> None:
    token, _ = await harness.ca.join_token()
    seen = lose_first(harness, "burnt", "503")
    first = make_node(harness.config(token=token))
    attempt = asyncio.create_task(first.start())
    await harness.wait_until(lambda: seen, what="the first attestation to reach the CA")
    attempt.cancel()  # the agent stops before its retry; its key was only in memory
    with pytest.raises(asyncio.CancelledError):
        await attempt
    again = make_node(harness.config(token=token, data_dir=harness.tmp_path / "again"))
    with pytest.raises(AttestationFailed, match=r"another key.*restarted.*new token"):
        await again.start()


@pytest.mark.parametrize(("stage", "how"), [("burnt", "503"), ("registered", "drop")])
async def test_the_real_agent_recovers_by_itself(harness: Any, stage: str, how: str) -> None:
    token, agent_id = await harness.ca.join_token()
    seen = lose_first(harness, stage, how)
    running = await harness.start_agent(harness.config(token=token))
    assert running.agent.node.identity.svid.spiffe_id == agent_id
    assert seen.count(stage) == 2


async def test_retries_of_a_token_reuse_one_key_whatever_the_token_text(harness: Any) -> None:
    made: list[ec.EllipticCurvePrivateKey] = []

    def keygen() -> ec.EllipticCurvePrivateKey:
        made.append(new_key())
        return made[-1]

    config = harness.config(token="tök-ünicode")  # not ASCII: compared as bytes
    clock = SystemClock()
    client = CaClient(urls=config.ca_urls, trust_domain=config.trust_domain, clock=clock)
    node = NodeAttestor(config=config, client=client, clock=clock, keygen=keygen)
    await harness.ca.stop()  # every try fails as unreachable, as a lost answer would
    try:
        for _ in range(3):
            with pytest.raises(Unavailable):
                await node.attest()
    finally:
        await client.close()
    assert len(made) == 1
