"""The agent API checks every certificate of the chain an agent presents against revocations, not
only its leaf: revoking the intermediate that signed an agent SVID cuts that agent off.
"""

from __future__ import annotations

from ca_harness import Agent, RunningCa, csr_pem, load_chain, new_key


async def revoke_serial(ca: RunningCa, serial: int) -> None:
    await ca.admin_call("POST", "/v1/revocations", {"serial": format(serial, "x")})


async def test_an_agent_whose_intermediate_is_revoked_is_refused(
    ca: RunningCa, agent: Agent
) -> None:
    leaf, intermediate = load_chain(agent.chain_pem)[:2]
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    await revoke_serial(ca, intermediate.serial_number)
    for method, path, body in [
        ("GET", "/v1/agent/entries", None),
        ("POST", "/v1/agent/x509", {"requests": [{"entry_id": "x", "csr": "y"}]}),
        ("POST", "/v1/agent/jwt", {"entry_id": "x", "audience": ["a"]}),
    ]:
        status, answer = await agent.call(method, path, json=body)
        assert (status, answer["error"]) == (403, "revoked"), (path, answer)
        assert format(intermediate.serial_number, "x") in answer["message"]
    # The leaf itself is not revoked: only its issuer is.
    revoked = await ca.admin_call("GET", "/v1/revocations")
    assert format(leaf.serial_number, "x") not in {r["value"] for r in revoked["records"]}


async def test_renewal_through_a_revoked_intermediate_is_refused(
    ca: RunningCa, agent: Agent
) -> None:
    intermediate = load_chain(agent.chain_pem)[1]
    await revoke_serial(ca, intermediate.serial_number)
    status, answer = await agent.call("POST", "/v1/agent/renew", json={"csr": csr_pem(new_key())})
    assert (status, answer["error"]) == (403, "revoked"), answer


async def test_an_agent_under_the_new_intermediate_is_served(ca: RunningCa, agent: Agent) -> None:
    """Twin: after the revocation the CA signs with a fresh intermediate; an agent attested
    under it works, and so did the old one until its intermediate was revoked."""
    old = load_chain(agent.chain_pem)[1]
    await revoke_serial(ca, old.serial_number)
    fresh = await ca.attest()
    assert load_chain(fresh.chain_pem)[1].serial_number != old.serial_number
    status, answer = await fresh.call("GET", "/v1/agent/entries")
    assert status == 200, answer


async def test_revoking_an_unrelated_serial_leaves_the_agent_alone(
    ca: RunningCa, agent: Agent
) -> None:
    other = await ca.attest()
    await revoke_serial(ca, load_chain(other.chain_pem)[0].serial_number)
    assert (await agent.call("GET", "/v1/agent/entries"))[0] == 200
    status, answer = await other.call("GET", "/v1/agent/entries")
    assert (status, answer["error"]) == (403, "revoked")
