"""A join token attestation whose answer was lost after the token was used: the same key may
retry within the token's lifetime; anything else stays refused. Real CA services on a real
SQLite store and on a real etcd; the fault is the attestor's test seam failing one step after
the token is used, as a store error or a dropped answer would."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ca_helpers import Ca, build_ca, make_csr
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.attestation import AgentSvidResult
from s2s.ca.audit import AUDIT_LOGGER, AuditEvent
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import FakeClock
from s2s.core.errors import AttestationFailed, NotAuthorized, Revoked, Unavailable
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.spiffe_id import TrustDomain
from s2s.store.records import JoinTokenRecord
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdServer, etcd_store_opener

pytest_plugins = ("etcd_fixtures",)


@pytest.fixture(params=["sqlite", "etcd"])
async def rca(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Ca]:
    """Real CA services on a fresh trust domain, on SQLite or on the module's etcd."""
    td = TrustDomain.parse(f"t{uuid.uuid4().hex[:12]}.example")
    config = CaConfig(trust_domain=td, data_dir=tmp_path)
    kek = KeyEncryptionKey.create(config.kek_path)
    if request.param == "sqlite":
        store = await SqliteStore.open(config.store_path)
        try:
            await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
            yield await build_ca(config, store, kek, clock)
        finally:
            await store.close()
        return
    server: EtcdServer = request.getfixturevalue("etcd_server")
    async with etcd_store_opener(server.endpoint, trust_domain=str(td)) as opener:
        etcd = await opener()
        await Authority.initialize(config=config, store=etcd, kek=kek, clock=clock)
        yield await build_ca(config, etcd, kek, clock)  # type: ignore[arg-type]


def fail_once(ca: Ca, stage: str) -> list[str]:
    """Make the attestor's next ``stage`` step fail as a store outage would; returns the stages
    seen."""
    seen: list[str] = []

    async def hook(at: str) -> None:
        seen.append(at)
        if at == stage and seen.count(stage) == 1:
            raise Unavailable("the store did not answer (injected)")

    ca.attestor.fault_hook = hook
    return seen


async def lost_first_answer(ca: Ca, stage: str) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A token whose first attestation failed at ``stage`` after the token was used."""
    token = await ca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    fail_once(ca, stage)
    with pytest.raises(Unavailable, match="injected"):
        await ca.attestor.attest_join_token(token.token, make_csr(key))
    return token.token, key


def audit_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]


@pytest.mark.parametrize("stage", ["burnt", "registered"])
async def test_retry_with_the_same_key_gets_the_same_agent_id(
    rca: Ca, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = await rca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    seen = fail_once(rca, stage)
    with pytest.raises(Unavailable):
        await rca.attestor.attest_join_token(token.token, make_csr(key))
    lost = await rca.store.list_issued(spiffe_id=token.agent_id)
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        result = await rca.attestor.attest_join_token(token.token, make_csr(key))
    assert seen[-2:] == ["burnt", "registered"]
    assert result.svid.spiffe_id == token.agent_id
    assert result.svid.leaf.public_key() == key.public_key()
    assert result.svid.serial not in {i.serial for i in lost}  # a new SVID
    assert result.agent.serial == result.svid.serial
    assert result.agent.next_serial is None
    agent = await rca.registry.authorize_agent(token.agent_id, result.svid.serial)
    assert agent.serial == result.svid.serial
    for earlier in lost:  # the SVID of the lost answer is not the agent's current one
        with pytest.raises(NotAuthorized, match="not the current SVID"):
            await rca.registry.authorize_agent(token.agent_id, earlier.serial)
    assert audit_events(caplog) == [AuditEvent.AGENT_REATTESTED]
    assert len(await rca.registry.list_agents()) == 1


async def test_a_retry_can_be_retried_and_the_agent_renews(rca: Ca) -> None:
    token, key = await lost_first_answer(rca, "registered")
    first = await rca.attestor.attest_join_token(token, make_csr(key))
    second = await rca.attestor.attest_join_token(token, make_csr(key))  # lost again
    assert second.svid.spiffe_id == first.svid.spiffe_id
    agent = await rca.registry.authorize_agent(second.svid.spiffe_id, second.svid.serial)
    renewed = await rca.attestor.renew_agent(agent, make_csr())
    assert renewed.svid.spiffe_id == first.svid.spiffe_id


@pytest.mark.parametrize("stage", ["burnt", "registered"])
async def test_another_key_is_refused_and_audited(
    rca: Ca, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    token, key = await lost_first_answer(rca, stage)
    issued = await rca.store.list_issued()
    with (
        caplog.at_level(logging.INFO, logger=AUDIT_LOGGER),
        pytest.raises(AttestationFailed, match="already used by another key"),
    ):
        await rca.attestor.attest_join_token(token, make_csr())
    assert audit_events(caplog) == [AuditEvent.AGENT_REFUSED]
    refused = next(r for r in caplog.records if r.name == AUDIT_LOGGER)
    assert "another key" in refused.__dict__["reason"]
    assert token not in caplog.text
    assert await rca.store.list_issued() == issued  # nothing was signed
    # the refusal did not take the token from its key
    ok = await rca.attestor.attest_join_token(token, make_csr(key))
    assert ok.svid.leaf.public_key() == key.public_key()


async def test_an_expired_token_is_refused_even_to_its_key(rca: Ca) -> None:
    token, key = await lost_first_answer(rca, "burnt")
    rca.clock.advance(dt.timedelta(minutes=10))
    with pytest.raises(AttestationFailed, match="expired"):
        await rca.attestor.attest_join_token(token, make_csr(key))
    with pytest.raises(AttestationFailed, match="unknown"):
        await rca.attestor.attest_join_token(token, make_csr(key))


async def test_a_banned_agent_stays_refused(rca: Ca, caplog: pytest.LogCaptureFixture) -> None:
    token, key = await lost_first_answer(rca, "registered")
    agents = await rca.registry.list_agents()
    await rca.registry.ban_agent(agents[0].spiffe_id)
    issued = await rca.store.list_issued()
    with (
        caplog.at_level(logging.INFO, logger=AUDIT_LOGGER),
        pytest.raises(NotAuthorized, match="banned"),
    ):
        await rca.attestor.attest_join_token(token, make_csr(key))
    assert audit_events(caplog) == [AuditEvent.AGENT_REFUSED]
    assert await rca.store.list_issued() == issued
    assert (await rca.registry.get_agent(agents[0].spiffe_id)).banned


@pytest.mark.parametrize("stage", ["burnt", "registered"])
async def test_a_revoked_agent_id_stays_refused(rca: Ca, stage: str) -> None:
    token = await rca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    fail_once(rca, stage)
    with pytest.raises(Unavailable):
        await rca.attestor.attest_join_token(token.token, make_csr(key))
    now = rca.clock.now()
    record = RevocationRecord.for_spiffe_id(
        token.agent_id, revoked_at=now, expires_at=now + dt.timedelta(hours=2)
    )
    rca.revocations.replace(RevocationSet.of([record]))
    rca.clock.advance(dt.timedelta(seconds=5))  # a new SVID would postdate the revocation
    issued = await rca.store.list_issued()
    with pytest.raises(Revoked, match="revoked"):
        await rca.attestor.attest_join_token(token.token, make_csr(key))
    assert await rca.store.list_issued() == issued


async def test_a_token_used_successfully_is_refused_to_another_key(rca: Ca) -> None:
    token = await rca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    first = await rca.attestor.attest_join_token(token.token, make_csr(key))
    with pytest.raises(AttestationFailed, match="already used"):
        await rca.attestor.attest_join_token(token.token, make_csr())
    ed = ec.generate_private_key(ec.SECP384R1())  # another key type: refused all the same
    with pytest.raises(AttestationFailed, match="already used"):
        await rca.attestor.attest_join_token(token.token, make_csr(ed))
    # its own key may still repeat it (the answer might have been lost on the way back)
    again = await rca.attestor.attest_join_token(token.token, make_csr(key))
    assert again.svid.spiffe_id == first.svid.spiffe_id


async def test_a_racing_pair_with_two_keys_has_one_winner(rca: Ca) -> None:
    token = await rca.registry.generate_join_token()
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    results = await asyncio.gather(
        *(rca.attestor.attest_join_token(token.token, make_csr(k)) for k in keys),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, AgentSvidResult)]
    losses = [r for r in results if not isinstance(r, AgentSvidResult)]
    assert len(wins) == 1
    assert [type(e) for e in losses] == [AttestationFailed]
    winner = keys[results.index(wins[0])]
    loser = keys[1 - results.index(wins[0])]
    with pytest.raises(AttestationFailed):
        await rca.attestor.attest_join_token(token.token, make_csr(loser))
    assert (await rca.attestor.attest_join_token(token.token, make_csr(winner))).svid.spiffe_id
    assert len(await rca.registry.list_agents()) == 1


def test_a_token_record_written_before_used_by_reads_as_unused() -> None:
    old = {
        "id": "tok1",
        "token_hash": "ab" * 32,
        "expires_at": "2030-01-01T00:10:00+00:00",
        "created_at": "2030-01-01T00:00:00+00:00",
    }
    record = JoinTokenRecord.from_json(old)
    assert record.used_by is None
    assert record.to_json() == old  # an unused token keeps the old shape
    used = JoinTokenRecord.from_json({**old, "used_by": "cd" * 32})
    assert used.used_by == bytes.fromhex("cd" * 32)
    assert JoinTokenRecord.from_json(used.to_json()) == used
    for bad in ("zz" * 32, "cd" * 31, 7):
        with pytest.raises(Exception, match=r"used_by|SHA-256|hex|str"):
            JoinTokenRecord.from_json({**old, "used_by": bad})


async def test_an_evicted_agent_may_come_back_only_with_its_key_within_the_lifetime(
    rca: Ca,
) -> None:
    token = await rca.registry.generate_join_token()
    key = ec.generate_private_key(ec.SECP256R1())
    await rca.attestor.attest_join_token(token.token, make_csr(key))
    await rca.registry.evict_agent(token.agent_id)
    with pytest.raises(AttestationFailed, match="another key"):
        await rca.attestor.attest_join_token(token.token, make_csr())
    back = await rca.attestor.attest_join_token(token.token, make_csr(key))
    assert back.agent.spiffe_id == token.agent_id
    await rca.registry.evict_agent(token.agent_id)
    rca.clock.advance(dt.timedelta(minutes=10))
    with pytest.raises(AttestationFailed, match="expired"):
        await rca.attestor.attest_join_token(token.token, make_csr(key))
