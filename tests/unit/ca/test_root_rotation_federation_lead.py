"""Root rotation with a bundle endpoint: activation waits ``federation_lead`` (three refresh hints)
after prepare, so federated trust domains fetch the new root before anything chains to it; with
no lead (no endpoint) it activates as soon as the agents hold the new bundle."""

from __future__ import annotations

import datetime as dt

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.root_rotation import Phase, RootRotation
from s2s.core.clock import FakeClock
from s2s.store.sqlite import SqliteStore

LEAD = dt.timedelta(seconds=90)


async def _rotation(
    config: CaConfig,
    store: SqliteStore,
    kek: KeyEncryptionKey,
    clock: FakeClock,
    lead: dt.timedelta,
) -> RootRotation:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    return RootRotation(
        config=config, store=store, authority=authority, clock=clock, federation_lead=lead
    )


async def test_activation_waits_for_the_federation_lead(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    rotation = await _rotation(config, store, kek, clock, LEAD)
    prepared = await rotation.step()
    assert prepared.state is not None
    assert prepared.state.phase is Phase.PREPARED
    clock.advance(LEAD - dt.timedelta(seconds=1))
    waiting = await rotation.step()
    assert not waiting.changed
    assert waiting.waiting_for == "federation"
    assert "activation not before" in waiting.message
    assert (await rotation.status()).waiting_for == "federation"
    clock.advance(dt.timedelta(seconds=1))
    activated = await rotation.step()
    assert activated.changed
    assert activated.state is not None
    assert activated.state.phase is Phase.ACTIVATED


async def test_without_an_endpoint_there_is_no_lead(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    rotation = await _rotation(config, store, kek, clock, dt.timedelta(0))
    await rotation.step()
    activated = await rotation.step()  # no live agents, no lead: at once
    assert activated.state is not None
    assert activated.state.phase is Phase.ACTIVATED
