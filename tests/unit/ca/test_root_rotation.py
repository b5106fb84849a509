"""Root rotation state machine on a real SQLite store with a fake clock: the happy path, an agent
that never picks up the new bundle, a crash between any two steps, two replicas."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from ca_helpers import make_csr
from cryptography import x509

from s2s.ca.agent_sync import AgentSync
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.lifecycle import AuthorityLifecycle
from s2s.ca.registry import Registry
from s2s.ca.root_rotation import STATE_KEY, Phase, RootRotation, RotationState
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import AgentRecord, AuthorityKind, AuthorityState
from s2s.store.sqlite import SqliteStore

BILLING = SpiffeId.parse("spiffe://example.org/billing")


@dataclasses.dataclass
class Rig:
    store: Any
    clock: FakeClock
    authority: Authority
    issuer: Issuer
    sync: AgentSync
    rotation: RootRotation

    async def root_state(self, root_id: str) -> AuthorityState:
        return (await self.store.get_authority(root_id)).state

    def bundle_root_ids(self) -> set[str]:
        return {_ski(c) for c in self.authority.bundle.x509_authorities}

    def leaf_root(self) -> str:
        svid = self.issuer.sign_csr(make_csr(), spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
        aki = svid.cert_chain[1].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert aki.value.key_identifier is not None
        return aki.value.key_identifier.hex()

    async def agent(self, name: str, *, hours: float = 1) -> AgentRecord:
        now = self.clock.now()
        record = AgentRecord(
            spiffe_id=SpiffeId.parse(f"spiffe://example.org/s2s/agent/join_token/{name}"),
            attestation_type="join_token",
            serial=int.from_bytes(name.encode(), "big"),
            not_after=now + dt.timedelta(hours=hours),
            created_at=now,
            updated_at=now,
        )
        created: AgentRecord = await self.store.create_agent(record)
        return created

    async def report(self, agent: AgentRecord, sequence: int | None = None) -> None:
        current = await self.store.get_agent(agent.spiffe_id)
        seq = self.authority.bundle.sequence if sequence is None else sequence
        await self.sync.report_bundle_sequence(current, seq)


def _ski(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


async def build_rig(config: CaConfig, store: Any, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    registry = Registry(config=config, store=store, clock=clock)
    issuer = Issuer(config=config, authority=authority, registry=registry, store=store, clock=clock)
    lifecycle = AuthorityLifecycle(
        authority=authority, store=store, clock=clock, replica_name=config.replica_name
    )
    sync = AgentSync(store=store, authority=authority, registry=registry, lifecycle=lifecycle)
    rotation = RootRotation(config=config, store=store, authority=authority, clock=clock)
    return Rig(store, clock, authority, issuer, sync, rotation)


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


async def test_rotation_end_to_end(rig: Rig) -> None:
    old_root = rig.authority.root
    old_id = _ski(old_root)
    agent = await rig.agent("a1")
    await rig.report(agent)
    assert (await rig.rotation.status()).phase == "idle"

    prepared = await rig.rotation.step()
    assert prepared.changed
    assert prepared.state is not None
    assert prepared.state.phase is Phase.PREPARED
    new_id = prepared.state.new_root
    assert rig.bundle_root_ids() == {old_id, new_id}  # joined the bundle ...
    assert prepared.state.target_sequence == rig.authority.bundle.sequence  # ... sequence bumped
    assert rig.leaf_root() == old_id  # nothing chains to the new root yet

    waiting = await rig.rotation.step()
    assert not waiting.changed
    assert waiting.waiting_for == "agents"
    assert [a for a, _ in waiting.lagging_agents] == [str(agent.spiffe_id)]
    await rig.report(agent)

    activated = await rig.rotation.step()
    assert activated.changed
    assert activated.state is not None
    assert activated.state.phase is Phase.ACTIVATED
    assert await rig.root_state(new_id) is AuthorityState.ACTIVE
    assert await rig.root_state(old_id) is AuthorityState.OLD
    assert rig.leaf_root() == new_id  # this replica switched to an intermediate under the new root
    assert rig.bundle_root_ids() == {old_id, new_id}  # both stay trusted meanwhile

    hold = await rig.rotation.step()
    assert not hold.changed
    assert hold.waiting_for == "lifetime"
    assert hold.retire_at == rig.clock.now() + rig.rotation.hold
    rig.clock.advance(seconds=rig.rotation.hold.total_seconds() - 1)
    assert (await rig.rotation.step()).waiting_for == "lifetime"
    rig.clock.advance(seconds=1)
    done = await rig.rotation.step()
    assert done.done
    assert done.changed
    assert rig.bundle_root_ids() == {new_id}  # the old root left the bundle
    assert await rig.root_state(old_id) is AuthorityState.REVOKED
    again = await rig.rotation.step()  # a plain re-run after done starts nothing
    assert not again.changed
    assert again.done
    assert "--new" in again.message


async def test_an_agent_that_never_picks_up_the_bundle_holds_the_rotation(rig: Rig) -> None:
    good, stuck = await rig.agent("good"), await rig.agent("stuck")
    banned = await rig.agent("banned")
    await rig.store.update_agent(
        dataclasses.replace(banned, banned=True), expected_revision=banned.revision
    )
    await rig.agent("expired", hours=0.1)
    await rig.rotation.step()
    await rig.report(good)
    await rig.report(stuck, 0)
    for _ in range(3):
        rig.clock.advance(seconds=600)  # the "expired" agent's SVID runs out: it stops counting
        progress = await rig.rotation.step()
        assert progress.waiting_for == "agents"
        assert [a for a, _ in progress.lagging_agents] == [str(stuck.spiffe_id)]
        assert str(stuck.spiffe_id) in progress.message
        assert "holds 0" in progress.message
        status = await rig.rotation.status()
        assert status.lagging_agents == progress.lagging_agents
    assert rig.leaf_root() == _ski(rig.authority.root)
    await rig.report(stuck)
    assert (await rig.rotation.step()).state.phase is Phase.ACTIVATED  # type: ignore[union-attr]


class Crash(Exception):
    pass


class CrashingStore:
    """Delegates to the real store; raises Crash before the n-th write (and keeps counting)."""

    WRITES = frozenset({"cas_state", "create_authority", "cas_authority_state"})

    def __init__(self, inner: Any, crash_at: int) -> None:
        self._inner = inner
        self.crash_at = crash_at
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self.WRITES:
            return attr

        async def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self.crash_at:
                raise Crash(name)
            return await attr(*args, **kwargs)

        return write


async def drive(rotation: RootRotation, rig: Rig, agent: AgentRecord) -> None:
    """Run to the end as an operator would: step, report, advance time."""
    for _ in range(20):
        progress = await rotation.step()
        if progress.done:
            return
        if progress.waiting_for == "agents":
            await rig.report(agent)
        if progress.waiting_for == "lifetime":
            rig.clock.advance(seconds=rotation.hold.total_seconds())
    raise AssertionError("the rotation did not finish")


@pytest.mark.parametrize("crash_at", range(1, 16))
async def test_a_crash_between_any_two_writes_resumes_safely(
    rig: Rig, config: CaConfig, kek: KeyEncryptionKey, crash_at: int
) -> None:
    old_id = _ski(rig.authority.root)
    agent = await rig.agent("a1")
    await rig.report(agent)
    crashing = CrashingStore(rig.store, crash_at)
    authority = Authority(config=config, store=crashing, kek=kek, clock=rig.clock)  # type: ignore[arg-type]
    await authority.start()
    rotation = RootRotation(config=config, store=crashing, authority=authority, clock=rig.clock)  # type: ignore[arg-type]
    rig.authority = authority
    try:
        await drive(rotation, rig, agent)
        crashed = False
    except Crash:
        crashed = True
    assert crashed or crash_at > crashing.writes  # every write of a full run is a crash point
    # A new process (fresh objects on the real store) resumes and finishes.
    resumed_authority = Authority(config=config, store=rig.store, kek=kek, clock=rig.clock)
    await resumed_authority.start()
    rig.authority = resumed_authority
    resumed = RootRotation(
        config=config, store=rig.store, authority=resumed_authority, clock=rig.clock
    )
    await drive(resumed, rig, agent)
    roots = await rig.store.list_authorities(kind=AuthorityKind.X509_ROOT)
    states = sorted(r.state.value for r in roots)
    assert states == ["active", "revoked"], (crashed, crashing.writes, states)  # one new root only
    assert await rig.root_state(old_id) is AuthorityState.REVOKED
    assert rig.bundle_root_ids() == {r.id for r in roots if r.state is AuthorityState.ACTIVE}
    signer = resumed_authority.x509_signer.certificate
    aki = signer.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    assert aki.key_identifier.hex() != old_id  # signing under the new root


async def test_retire_waits_for_every_replica_to_leave_the_old_root(
    rig: Rig, config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey
) -> None:
    other = await build_rig(dataclasses.replace(config, replica_name="ca-1"), store, kek, rig.clock)
    await rig.rotation.step()
    await rig.rotation.step()  # no agents: activates at once
    progress = await rig.rotation.step()
    assert progress.waiting_for == "replicas"
    assert progress.lagging_replicas == ("ca-1",)
    rig.clock.advance(seconds=rig.rotation.hold.total_seconds() * 2)
    assert (await rig.rotation.step()).waiting_for == "replicas"  # time alone is not enough
    await other.authority.rotate_if_due()  # ca-1's next authority check
    assert other.leaf_root() == _ski(other.authority.root) != progress.state.old_root  # type: ignore[union-attr]
    assert (await rig.rotation.step()).waiting_for == "lifetime"  # the hold starts now
    rig.clock.advance(seconds=rig.rotation.hold.total_seconds())
    assert (await rig.rotation.step()).done


async def test_a_corrupt_state_is_a_clear_error(rig: Rig) -> None:
    await rig.store.cas_state(STATE_KEY, None, '{"phase": "sideways"}')
    with pytest.raises(InvalidConfig, match="corrupt"):
        await rig.rotation.step()
    with pytest.raises(InvalidConfig, match="corrupt"):
        RotationState.decode("not json")


async def test_new_starts_another_rotation_after_done(rig: Rig) -> None:
    agent = await rig.agent("a1")
    await drive(rig.rotation, rig, agent)
    first_new = (await rig.rotation.status()).state.new_root  # type: ignore[union-attr]
    again = await rig.rotation.step(new=True)
    assert again.changed
    assert again.state is not None
    assert again.state.old_root == first_new


async def test_hold_is_explained_from_the_settings(rig: Rig, config: CaConfig) -> None:
    assert rig.rotation.hold == dt.timedelta(hours=1, seconds=30)
    assert rig.rotation.hold_reason.startswith("1h0m30s = ")
    assert "(agent_svid_ttl = 1h0m0s)" in rig.rotation.hold_reason
    longer = dataclasses.replace(
        config, server_svid_ttl=dt.timedelta(hours=2), backdate=dt.timedelta(seconds=10)
    )
    rotation = RootRotation(
        config=longer, store=rig.store, authority=rig.authority, clock=rig.clock
    )
    assert rotation.hold == dt.timedelta(hours=2, seconds=10)
    assert "(server_svid_ttl = 2h0m0s)" in rotation.hold_reason
    assert "backdate = 10s" in rotation.hold_reason
