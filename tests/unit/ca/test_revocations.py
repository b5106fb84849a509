"""The CA's revocation service: by serial, SPIFFE ID, jti and agent, on a real SQLite store (and
on a real etcd that dies mid-test)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from ca_helpers import make_csr
from cryptography import x509

from s2s.ca.attestation import AgentAttestor
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.crl import CrlPublisher
from s2s.ca.issuance import CsrRequest, Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.registry import Registry
from s2s.ca.revocation_targets import parse_serial
from s2s.ca.revocations import RevocationService
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import (
    InvalidRequest,
    InvalidToken,
    NotAuthorized,
    NotFound,
    Revoked,
    StoreError,
)
from s2s.core.revocation import RevocationKind, RevocationRecord, StaticRevocations
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.etcd import EtcdStore
from s2s.store.records import AuthorityKind, AuthorityState
from s2s.store.sqlite import SqliteStore
from s2s.testing_etcd import EtcdServer
from s2s.verifier.jwt import JwtValidator

BILLING = SpiffeId.parse("spiffe://example.org/billing")
API = SpiffeId.parse("spiffe://example.org/api")
SEC = dt.timedelta(seconds=1)


@dataclasses.dataclass
class Rig:
    config: CaConfig
    store: Any
    clock: FakeClock
    authority: Authority
    registry: Registry
    issuer: Issuer
    attestor: AgentAttestor
    live: LiveRevocations
    crls: CrlPublisher
    service: RevocationService


async def build_rig(config: CaConfig, store: Any, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    """Wired as app.py wires them: one LiveRevocations for registry, issuer and CRLs."""
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    live = LiveRevocations(store=store)
    await live.refresh()
    registry = Registry(config=config, store=store, clock=clock, revocations=live)
    issuer = Issuer(config=config, authority=authority, registry=registry, store=store,
                    clock=clock, revocations=live)  # fmt: skip
    attestor = AgentAttestor(authority=authority, registry=registry, issuer=issuer)
    crls = CrlPublisher(config=config, store=store, kek=kek, clock=clock, revocations=live)
    await crls.refresh()
    service = RevocationService(config=config, store=store, registry=registry, live=live,
                                clock=clock, on_change=crls.refresh)  # fmt: skip
    return Rig(config, store, clock, authority, registry, issuer, attestor, live, crls, service)


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


async def attested_agent(rig: Rig) -> tuple[Any, Any]:
    token = await rig.registry.generate_join_token()
    attested = await rig.attestor.attest_join_token(token.token, make_csr())
    entry = await rig.registry.create_entry(
        spiffe_id=BILLING, parent_id=token.agent_id, selectors=parse_selectors(["unix:uid:1"])
    )
    return attested, entry


def crl_serials(rig: Rig) -> set[int]:
    return {r.serial_number for c in rig.crls.current.crls for r in x509.load_der_x509_crl(c.der)}


# -- by serial --------------------------------------------------------------------------------


async def test_revoke_serial_is_durable_live_and_in_the_crl(rig: Rig, config: CaConfig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING)
    other = await rig.issuer.mint_x509_svid(BILLING)
    result = await rig.service.revoke_serial(svid.serial, reason="keyCompromise")
    assert (result.already_revoked, result.changed) == (False, 1)
    (record,) = result.records
    assert record.expires_at == svid.not_after + rig.service.skew
    assert rig.live.current().is_serial_revoked_by_any_issuer(svid.serial)
    assert not rig.live.current().is_serial_revoked_by_any_issuer(other.serial)
    assert svid.serial in crl_serials(rig)
    assert other.serial not in crl_serials(rig)
    async with await SqliteStore.open(config.store_path, create=False) as reopened:
        stored = await reopened.get_revocation(RevocationKind.SERIAL, format(svid.serial, "x"))
    assert stored.reason == "keyCompromise"


async def test_revoking_a_serial_twice_is_idempotent(rig: Rig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING)
    first = await rig.service.revoke_serial(svid.serial)
    rig.clock.advance(seconds=5)
    again = await rig.service.revoke("serial", format(svid.serial, "X"))
    assert (again.already_revoked, again.changed) == (True, 0)
    assert again.records[0].revoked_at == first.records[0].revoked_at  # the first instant stays
    assert len(rig.live.current()) == 1


async def test_unknown_serial_is_not_found_with_a_clear_message(rig: Rig) -> None:
    with pytest.raises(NotFound, match="was not issued by this CA"):
        await rig.service.revoke_serial(0xDEADBEEF)
    assert len(rig.live.current()) == 0


async def test_an_expired_serial_is_not_found_though_its_record_lingers(rig: Rig) -> None:
    """The index record outlives the certificate until pruned (on etcd until its lease ends):
    past notAfter plus the skew a revocation would be born expired, so the answer is NotFound."""
    svid = await rig.issuer.mint_x509_svid(BILLING)
    other = await rig.issuer.mint_x509_svid(BILLING)
    rig.clock.set(other.not_after + rig.service.skew - SEC)  # one second before: revocable
    assert (await rig.service.revoke_serial(other.serial)).changed == 1
    rig.clock.set(svid.not_after + rig.service.skew)
    assert (await rig.store.get_issued(svid.serial)).serial == svid.serial  # not pruned
    with pytest.raises(NotFound, match="or it has expired"):
        await rig.service.revoke_serial(svid.serial)
    assert not rig.live.current().is_serial_revoked_by_any_issuer(svid.serial)


@pytest.mark.parametrize("text", ["", "xyz", "0", "12 34", "1" * 41, "-5"])
def test_bad_serial_text_is_invalid(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_serial(text)


def test_serial_text_forms() -> None:
    assert parse_serial("0xAB:CD") == parse_serial("abcd") == 0xABCD


async def test_revoking_the_root_is_refused(rig: Rig) -> None:
    with pytest.raises(InvalidRequest, match="rotate-root"):
        await rig.service.revoke_serial(rig.authority.root.serial_number)


async def test_revoking_the_intermediate_retires_it_and_lists_it_on_the_root_crl(
    rig: Rig,
) -> None:
    signer = rig.authority.x509_signer
    leaf = await rig.issuer.mint_x509_svid(BILLING)
    await rig.service.revoke_serial(signer.certificate.serial_number)
    record = await rig.store.get_authority(signer.authority_id)
    assert record.state is AuthorityState.REVOKED
    root_crl = next(c for c in rig.crls.current.crls if c.kind is AuthorityKind.X509_ROOT)
    listed = {r.serial_number for r in x509.load_der_x509_crl(root_crl.der)}
    assert listed == {signer.certificate.serial_number}
    assert leaf.serial not in listed
    assert await rig.authority.rotate_if_due()  # the authority loop's next step
    assert rig.authority.x509_signer.authority_id != signer.authority_id
    fresh = await rig.issuer.mint_x509_svid(BILLING)
    assert fresh.cert_chain[1] != signer.certificate


# -- by SPIFFE ID -------------------------------------------------------------------------------


async def test_revoke_spiffe_id_expands_to_every_unexpired_serial(rig: Rig) -> None:
    old = await rig.issuer.mint_x509_svid(BILLING, ttl=dt.timedelta(seconds=10))
    rig.clock.advance(seconds=20)  # old has expired: no record for it
    a = await rig.issuer.mint_x509_svid(BILLING)
    b = await rig.issuer.mint_x509_svid(BILLING)
    api = await rig.issuer.mint_x509_svid(API)
    token = await rig.issuer.mint_jwt_svid_for(BILLING, ["aud"])
    rig.clock.advance(seconds=1)
    result = await rig.service.revoke_spiffe_id(BILLING, reason="decommissioned")
    main, *serials = result.records
    assert main.kind is RevocationKind.SPIFFE_ID
    assert main.revoked_at == rig.clock.now()
    assert {int(r.value, 16) for r in serials} == {a.serial, b.serial}
    assert main.expires_at >= max(a.not_after, token.expires_at) + rig.service.skew
    current = rig.live.current()
    assert current.is_spiffe_id_revoked(BILLING, token.issued_at)  # JWT iat is not backdated
    assert not current.is_serial_revoked_by_any_issuer(api.serial)
    assert not current.is_serial_revoked_by_any_issuer(old.serial)
    assert {a.serial, b.serial} <= crl_serials(rig)
    rig.clock.advance(seconds=1)
    fresh = await rig.issuer.mint_x509_svid(BILLING)  # issued after: valid, not listed
    assert not rig.live.current().is_serial_revoked_by_any_issuer(fresh.serial)
    assert not rig.live.current().is_spiffe_id_revoked(BILLING, rig.clock.now())


async def test_revoking_an_id_twice_says_so_and_covers_newer_credentials(rig: Rig) -> None:
    first = await rig.issuer.mint_x509_svid(BILLING)
    await rig.service.revoke_spiffe_id(BILLING)
    rig.clock.advance(seconds=2)
    second = await rig.issuer.mint_x509_svid(BILLING)
    rig.clock.advance(seconds=1)
    again = await rig.service.revoke_spiffe_id(BILLING)
    assert again.already_revoked
    assert {int(r.value, 16) for r in again.records[1:]} == {first.serial, second.serial}
    assert again.changed == 2  # the ID record moved on and the new serial; the old one stays


async def test_unknown_or_foreign_ids_are_refused(rig: Rig) -> None:
    with pytest.raises(NotFound, match="knows nothing of"):
        await rig.service.revoke_spiffe_id(SpiffeId.parse("spiffe://example.org/nobody"))
    with pytest.raises(InvalidRequest, match="not in trust domain"):
        await rig.service.revoke_spiffe_id(SpiffeId.parse("spiffe://other.org/billing"))
    with pytest.raises(InvalidRequest):
        await rig.service.revoke("spiffe_id", "not-an-id")
    with pytest.raises(InvalidRequest, match="cannot revoke by"):
        await rig.service.revoke("entry", "x")
    assert len(rig.live.current()) == 0


async def test_an_id_with_only_an_entry_can_be_revoked(rig: Rig) -> None:
    await attested_agent(rig)  # BILLING has an entry but no SVID yet
    result = await rig.service.revoke_spiffe_id(BILLING)
    assert [r.kind for r in result.records] == [RevocationKind.SPIFFE_ID]


# -- by jti ---------------------------------------------------------------------------------------


async def test_revoke_jti_lives_for_the_longest_jwt_lifetime(rig: Rig) -> None:
    token = await rig.issuer.mint_jwt_svid_for(BILLING, ["aud"])
    result = await rig.service.revoke_jti(token.jti)
    (record,) = result.records
    assert record.expires_at >= token.expires_at + rig.service.skew
    assert rig.live.current().is_jti_revoked(token.jti)
    again = await rig.service.revoke_jti(token.jti)
    assert again.already_revoked
    assert again.changed == 0
    with pytest.raises(InvalidRequest):
        await rig.service.revoke_jti("x" * 300)


# -- by agent -------------------------------------------------------------------------------------


async def test_revoke_agent_bans_it_and_revokes_what_it_obtained(rig: Rig) -> None:
    attested, entry = await attested_agent(rig)
    agent = attested.agent
    (issued,) = await rig.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    assert issued.svid is not None
    unrelated = await rig.issuer.mint_x509_svid(BILLING)  # admin mint, not the agent's
    result = await rig.service.revoke_agent(agent.spiffe_id, reason="node lost")
    assert result.banned
    assert not result.already_revoked
    serials = {int(r.value, 16) for r in result.records if r.kind is RevocationKind.SERIAL}
    assert serials == {attested.svid.serial, issued.svid.serial}
    assert not rig.live.current().is_serial_revoked_by_any_issuer(unrelated.serial)
    with pytest.raises(NotAuthorized, match="banned"):
        await rig.registry.authorize_agent(agent.spiffe_id, agent.serial)
    with pytest.raises((NotAuthorized, Revoked)):
        await rig.attestor.renew_agent(agent, make_csr())
    with pytest.raises(Revoked):
        await rig.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    again = await rig.service.revoke_agent(agent.spiffe_id)
    assert again.already_revoked


async def test_revoking_an_agent_svid_by_serial_refuses_its_renewal(rig: Rig) -> None:
    attested, _ = await attested_agent(rig)
    await rig.service.revoke_serial(attested.svid.serial)
    with pytest.raises(Revoked):
        await rig.registry.authorize_agent(attested.agent.spiffe_id, attested.svid.serial)


async def test_agent_revocation_refuses_non_agents_and_unknown_agents(rig: Rig) -> None:
    with pytest.raises(InvalidRequest, match="not an agent ID"):
        await rig.service.revoke_agent(BILLING)
    with pytest.raises(NotFound, match="no agent"):
        await rig.service.revoke_agent(
            SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/ghost")
        )


# -- durability and the live set ----------------------------------------------------------------


class FailingWrites:
    """A real store whose revocation writes fail, as a lost disk or etcd would make them."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def add_revocation(self, record: RevocationRecord) -> bool:
        raise StoreError("the store is down")


async def test_a_store_failure_reports_nothing_done(rig: Rig, config: CaConfig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING)
    failing = RevocationService(
        config=config, store=FailingWrites(rig.store), registry=rig.registry, live=rig.live,
        clock=rig.clock,
    )  # fmt: skip
    with pytest.raises(StoreError):
        await failing.revoke_serial(svid.serial)
    with pytest.raises(StoreError):
        await failing.revoke_spiffe_id(BILLING)
    assert len(await rig.service.list_records()) == 0
    assert not rig.live.current().is_serial_revoked_by_any_issuer(svid.serial)


async def test_live_set_follows_another_handle(rig: Rig, config: CaConfig) -> None:
    version = rig.live.current().version
    waiter = asyncio.create_task(rig.live.wait(version, timeout=10))
    async with await SqliteStore.open(config.store_path, create=False) as other:
        now = rig.clock.now()
        await other.add_revocation(
            RevocationRecord.for_jti("j1", revoked_at=now, expires_at=now + 60 * SEC)
        )
    current = await asyncio.wait_for(waiter, 10)
    assert current.is_jti_revoked("j1")
    assert current.version != version


async def test_wait_times_out_with_the_same_set(rig: Rig) -> None:
    before = rig.live.current()
    assert await rig.live.wait(before.version, timeout=0.05) is before


async def test_on_etcd_a_revoke_while_etcd_is_down_fails_loudly_then_one_after_is_durable(
    tmp_path: Path, config: CaConfig, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    with EtcdServer(tmp_path / "etcd") as etcd:
        store = await EtcdStore.open(etcd.endpoint, trust_domain="example.org", timeout=2.0,
                                     poll_interval=0.05)  # fmt: skip
        try:
            await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
            rig = await build_rig(config, store, kek, clock)
            svid = await rig.issuer.mint_x509_svid(BILLING)
            etcd.kill()
            with pytest.raises(StoreError):
                await rig.service.revoke_serial(svid.serial)
            etcd.start()
            result = await rig.service.revoke_serial(svid.serial)
            assert not result.already_revoked  # the failed call had written nothing
            assert svid.serial in crl_serials(rig)
            async with await EtcdStore.open(etcd.endpoint, trust_domain="example.org") as other:
                stored = await other.get_revocation(RevocationKind.SERIAL, result.value)
            assert stored == result.records[0]
        finally:
            await store.close()


async def test_revoking_an_agent_revokes_the_jwt_svids_it_obtained_and_no_others(rig: Rig) -> None:
    """JWT-SVIDs are not indexed: each carries the agent it was minted for (the s2s_agent
    claim), and the agent's ID revocation covers every token minted for it before that instant.
    The same workload ID obtained through another agent, or minted later, is not touched."""
    attested, entry = await attested_agent(rig)
    other, other_entry = await attested_agent(rig)  # another node serving the same ID
    mine = await rig.issuer.mint_jwt_svid(attested.agent, entry.id, ["billing"])
    theirs = await rig.issuer.mint_jwt_svid(other.agent, other_entry.id, ["billing"])
    assert mine.spiffe_id == theirs.spiffe_id == BILLING
    validator = JwtValidator(
        BundleSet.of(rig.authority.bundle), "billing", revocations=StaticRevocations(),
        clock=rig.clock,
    )  # fmt: skip
    assert validator.validate(mine.token).claims.agent == attested.agent.spiffe_id
    rig.clock.advance(seconds=2)
    await rig.service.revoke_agent(attested.agent.spiffe_id)
    checked = JwtValidator(
        BundleSet.of(rig.authority.bundle), "billing", revocations=rig.live, clock=rig.clock
    )
    with pytest.raises(InvalidToken, match="agent") as refused:
        checked.validate(mine.token)
    assert refused.value.reason == "revoked"
    assert checked.validate(theirs.token).spiffe_id == BILLING  # another agent's: accepted
    admin = await rig.issuer.mint_jwt_svid_for(BILLING, ["billing"])  # no agent claim
    assert checked.validate(admin.token).spiffe_id == BILLING
