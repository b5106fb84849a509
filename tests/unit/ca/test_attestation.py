"""Agent attestation with join tokens and agent SVID renewal."""

from __future__ import annotations

import datetime as dt

import pytest
from ca_helpers import Ca, build_ca, make_csr
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.keys import KeyEncryptionKey
from s2s.core.errors import (
    AttestationFailed,
    Conflict,
    InvalidRequest,
    NotAuthorized,
    Revoked,
)
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.x509svid import check_x509_svid
from s2s.store.sqlite import SqliteStore


async def test_attest_issues_agent_svid_and_bundle(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    result = await ca.attestor.attest_join_token(token.token, make_csr(key))
    svid = result.svid
    assert svid.spiffe_id == token.agent_id
    assert check_x509_svid(svid.cert_chain) == token.agent_id
    assert svid.leaf.public_key() == key.public_key()
    assert svid.private_key is None  # the key never left the agent
    assert svid.not_after - ca.clock.now() == dt.timedelta(hours=1)
    svid.leaf.verify_directly_issued_by(svid.cert_chain[1])
    svid.cert_chain[1].verify_directly_issued_by(result.bundle.x509_authorities[0])
    assert result.agent.serial == svid.serial
    assert (await ca.store.get_issued(svid.serial)).spiffe_id == token.agent_id
    assert (await ca.registry.authorize_agent(token.agent_id, svid.serial)).serial == svid.serial


async def test_csr_uri_san_is_ignored(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    csr = make_csr(uri="spiffe://example.org/s2s/ca/ca-0")
    result = await ca.attestor.attest_join_token(token.token, csr)
    assert result.svid.spiffe_id == token.agent_id


async def test_reused_join_token_is_refused(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    await ca.attestor.attest_join_token(token.token, make_csr())
    with pytest.raises(AttestationFailed, match="already used"):
        await ca.attestor.attest_join_token(token.token, make_csr())


async def test_expired_join_token_is_refused(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    ca.clock.advance(dt.timedelta(minutes=10, seconds=1))
    with pytest.raises(AttestationFailed, match="expired"):
        await ca.attestor.attest_join_token(token.token, make_csr())
    assert await ca.registry.list_agents() == ()


async def test_bad_csr_does_not_burn_the_token(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    with pytest.raises(InvalidRequest, match="signature"):
        await ca.attestor.attest_join_token(token.token, make_csr(tamper=True))
    with pytest.raises(InvalidRequest, match="unsupported key"):
        await ca.attestor.attest_join_token(
            token.token, make_csr(ec.generate_private_key(ec.SECP192R1()))
        )
    result = await ca.attestor.attest_join_token(token.token, make_csr())
    assert result.svid.spiffe_id == token.agent_id


async def test_renewal_stages_then_promotes_the_new_serial(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    first = await ca.attestor.attest_join_token(token.token, make_csr())
    agent = await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    ca.clock.advance(dt.timedelta(minutes=30))
    renewed = await ca.attestor.renew_agent(agent, make_csr())
    assert renewed.svid.serial != first.svid.serial
    assert renewed.agent.next_serial == renewed.svid.serial
    assert renewed.svid.not_after - ca.clock.now() == dt.timedelta(hours=1)
    # until the new SVID is used, the old one still works (a lost response does not lock out)
    await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    await ca.registry.authorize_agent(token.agent_id, renewed.svid.serial)
    with pytest.raises(NotAuthorized):
        await ca.registry.authorize_agent(token.agent_id, first.svid.serial)


async def test_banned_agent_cannot_renew(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    first = await ca.attestor.attest_join_token(token.token, make_csr())
    await ca.registry.ban_agent(token.agent_id)
    with pytest.raises(NotAuthorized, match="banned"):
        await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    stale = first.agent  # a record fetched before the ban cannot be used to sneak a renewal
    with pytest.raises(Conflict, match="revision"):
        await ca.attestor.renew_agent(stale, make_csr())


async def test_restart_keeps_agents_and_keys(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    first = await ca.attestor.attest_join_token(token.token, make_csr())
    await ca.store.close()
    store = await SqliteStore.open(ca.config.store_path, create=False)
    try:
        again = await build_ca(
            ca.config, store, KeyEncryptionKey.load(ca.config.kek_path), ca.clock
        )
        agent = await again.registry.authorize_agent(token.agent_id, first.svid.serial)
        renewed = await again.attestor.renew_agent(agent, make_csr())
        assert renewed.svid.cert_chain[1] == first.svid.cert_chain[1]  # same intermediate
        assert renewed.bundle == first.bundle
    finally:
        await store.close()


async def test_revoked_agent_svid_is_refused_and_not_renewed(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    first = await ca.attestor.attest_join_token(token.token, make_csr())
    agent = await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    now = ca.clock.now()
    record = RevocationRecord.for_serial(
        first.svid.serial, revoked_at=now, expires_at=first.svid.not_after
    )
    ca.revocations.replace(RevocationSet.of([record]))
    with pytest.raises(Revoked):
        await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    with pytest.raises(Revoked):
        await ca.attestor.renew_agent(agent, make_csr())
    assert (await ca.registry.get_agent(token.agent_id)).next_serial is None


async def test_agent_revoked_by_id_only_for_svids_issued_before(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    first = await ca.attestor.attest_join_token(token.token, make_csr())
    agent = await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    ca.clock.advance(dt.timedelta(seconds=10))
    now = ca.clock.now()
    record = RevocationRecord.for_spiffe_id(
        token.agent_id, revoked_at=now, expires_at=now + dt.timedelta(hours=1)
    )
    ca.revocations.replace(RevocationSet.of([record]))
    with pytest.raises(Revoked):
        await ca.registry.authorize_agent(token.agent_id, first.svid.serial)
    with pytest.raises(Revoked):
        await ca.attestor.renew_agent(agent, make_csr())
