"""Authority lifecycle (SPIRE's localauthority rules) on a real SQLite store and a fake clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from ca_helpers import make_csr
from cryptography import x509

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.lifecycle import AuthorityLifecycle, LifecycleKind
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.registry import Registry
from s2s.ca.revocations import RevocationService
from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict, InvalidRequest, NotFound
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import AuthorityKind, AuthorityState
from s2s.store.sqlite import SqliteStore

X509, JWT = LifecycleKind.X509, LifecycleKind.JWT
BILLING = SpiffeId.parse("spiffe://example.org/billing")


@dataclasses.dataclass
class Rig:
    store: Any
    clock: FakeClock
    authority: Authority
    issuer: Issuer
    live: LiveRevocations
    lifecycle: AuthorityLifecycle

    async def state(self, authority_id: str) -> AuthorityState:
        return (await self.store.get_authority(authority_id)).state


async def build_rig(config: CaConfig, store: Any, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    live = LiveRevocations(store=store)
    await live.refresh()
    registry = Registry(config=config, store=store, clock=clock, revocations=live)
    issuer = Issuer(config=config, authority=authority, registry=registry, store=store,
                    clock=clock, revocations=live)  # fmt: skip
    service = RevocationService(config=config, store=store, registry=registry, live=live,
                                clock=clock)  # fmt: skip
    lifecycle = AuthorityLifecycle(
        authority=authority,
        store=store,
        clock=clock,
        replica_name=config.replica_name,
        revocations=service,
    )
    return Rig(store, clock, authority, issuer, live, lifecycle)


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


def issuer_of(rig: Rig) -> str:
    svid = rig.issuer.sign_csr(make_csr(), spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    ski = svid.cert_chain[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return ski.value.digest.hex()


async def test_x509_prepare_activate_taint_revoke(rig: Rig) -> None:
    first = rig.authority.x509_signer.authority_id
    assert issuer_of(rig) == first
    prepared = await rig.lifecycle.prepare(X509)
    assert prepared.state is AuthorityState.PREPARED
    assert issuer_of(rig) == first  # prepared is not used yet
    activated = await rig.lifecycle.activate(X509, None)
    assert activated.id == prepared.id
    assert await rig.state(first) is AuthorityState.OLD
    assert rig.authority.x509_signer.authority_id == prepared.id
    assert issuer_of(rig) == prepared.id
    assert (await rig.lifecycle.tainted()).x509 == frozenset()
    await rig.lifecycle.taint(X509, first)
    tainted = await rig.lifecycle.tainted()
    assert tainted.x509 == {first}
    assert tainted.to_json() == {"x509": [first], "jwt": []}
    revoked = await rig.lifecycle.revoke(X509, None)  # this replica's only tainted one
    assert revoked.state is AuthorityState.REVOKED
    assert revoked.certificate is not None
    await rig.live.refresh()
    assert rig.live.current().is_serial_revoked_by_any_issuer(revoked.certificate.serial_number)
    assert issuer_of(rig) == prepared.id  # the active one keeps signing
    assert (await rig.lifecycle.tainted()).x509 == {first}  # revoked stays distrusted


async def test_jwt_key_lifecycle_and_the_bundle(rig: Rig) -> None:
    first = rig.authority.jwt_signer.kid
    prepared = await rig.lifecycle.prepare(JWT)
    assert rig.authority.bundle.jwt_authority(prepared.id) is not None  # published at once
    assert rig.authority.jwt_signer.kid == first
    await rig.lifecycle.activate(JWT, prepared.id)
    assert rig.authority.jwt_signer.kid == prepared.id
    await rig.lifecycle.taint(JWT, first)
    assert (await rig.lifecycle.tainted()).jwt == {first}
    assert rig.authority.bundle.jwt_authority(first) is not None  # tainted still verifies
    sequence = rig.authority.bundle.sequence
    await rig.lifecycle.revoke(JWT, first)
    assert rig.authority.bundle.jwt_authority(first) is None  # revoked leaves the bundle
    assert rig.authority.bundle.sequence > sequence


async def test_the_rules_refuse_every_other_move(rig: Rig) -> None:
    active = rig.authority.x509_signer.authority_id
    with pytest.raises(NotFound, match="no prepared"):
        await rig.lifecycle.activate(X509, None)
    with pytest.raises(Conflict, match="only prepared"):
        await rig.lifecycle.activate(X509, active)
    with pytest.raises(Conflict, match="cannot be tainted"):
        await rig.lifecycle.taint(X509, active)
    with pytest.raises(Conflict, match="only tainted"):
        await rig.lifecycle.revoke(X509, active)
    prepared = await rig.lifecycle.prepare(X509)
    with pytest.raises(Conflict, match="already prepared"):
        await rig.lifecycle.prepare(X509)
    with pytest.raises(Conflict, match="only old"):
        await rig.lifecycle.taint(X509, prepared.id)
    await rig.lifecycle.activate(X509, prepared.id)
    with pytest.raises(Conflict, match="only tainted"):
        await rig.lifecycle.revoke(X509, active)  # old, not tainted yet
    with pytest.raises(NotFound):
        await rig.lifecycle.taint(X509, "00" * 20)
    with pytest.raises(InvalidRequest, match="not a jwt"):
        await rig.lifecycle.taint(JWT, active)
    root = (await rig.store.list_authorities(kind=AuthorityKind.X509_ROOT))[0]
    with pytest.raises(InvalidRequest, match="not a x509"):
        await rig.lifecycle.taint(X509, root.id)
    await rig.lifecycle.taint(X509, active)
    with pytest.raises(Conflict, match="only old"):
        await rig.lifecycle.taint(X509, active)  # twice


async def test_an_expired_prepared_authority_cannot_be_activated(rig: Rig) -> None:
    prepared = await rig.lifecycle.prepare(JWT)
    rig.clock.advance(seconds=(prepared.not_after - rig.clock.now()).total_seconds() + 1)
    with pytest.raises(InvalidRequest, match="expired"):
        await rig.lifecycle.activate(JWT, prepared.id)


async def test_another_replica_installs_what_was_activated_for_it(
    rig: Rig, config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    other_config = dataclasses.replace(config, replica_name="ca-1")
    other = await build_rig(other_config, store, kek, clock)
    prepared = await other.lifecycle.prepare(X509)
    # Activated through replica ca-0's admin API: ca-1 follows on its next authority check.
    await rig.lifecycle.activate(X509, prepared.id)
    assert other.authority.x509_signer.authority_id != prepared.id
    assert await other.authority.rotate_if_due()
    assert other.authority.x509_signer.authority_id == prepared.id
    assert issuer_of(rig) != prepared.id  # ca-0 keeps its own intermediate


async def test_revoking_an_intermediate_needs_the_revocation_service(rig: Rig) -> None:
    bare = AuthorityLifecycle(authority=rig.authority, store=rig.store, clock=rig.clock,
                              replica_name="ca-0")  # fmt: skip
    first = rig.authority.x509_signer.authority_id
    await bare.prepare(X509)
    await bare.activate(X509, None)
    await bare.taint(X509, first)
    with pytest.raises(Exception, match="no revocation service"):
        await bare.revoke(X509, first)
    assert await rig.state(first) is AuthorityState.TAINTED  # nothing half done
