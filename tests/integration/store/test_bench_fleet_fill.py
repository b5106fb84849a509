"""The fleet benchmark's bulk fill of the registry on a real 3-member etcd: every dormant entry
is there with its uniqueness index (a duplicate create is refused, as for an entry made by
``create_entry``), and every revocation record is there, expiring with its lease."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.fleet_system import FleetSystem
from s2s.core.errors import Conflict
from s2s.core.registration import RegistrationEntry
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.etcd import EtcdStore


@pytest.fixture
async def system() -> AsyncIterator[FleetSystem]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        fleet = FleetSystem(Path(tmp), lambda _text: None)
        await fleet.start_etcd()
        fleet.td = "fill.example.org"
        try:
            yield fleet
        finally:
            await asyncio.to_thread(fleet.stop_etcd)


async def test_the_fill_writes_every_entry_with_its_index_and_every_revocation(
    system: FleetSystem,
) -> None:
    await system.fill_registry(120, revoked=130)  # past one transaction of each
    store = await EtcdStore.open(system.etcd.endpoints, trust_domain=system.td, timeout=30)
    try:
        entries = await store.list_entries()
        assert len(entries) == 120
        assert {e.id for e in entries} == {f"dormant-{i:06d}" for i in range(120)}
        assert all(e.revision == 1 for e in entries)
        revoked = await store.list_revocations()
        assert len(revoked) == 130
        assert all(r.expires_at > r.revoked_at for r in revoked)
        # The index is there: the same (SPIFFE ID, parent, selectors) under another id is
        # refused, as for an entry created one by one.
        twin = RegistrationEntry(
            id="another-id",
            spiffe_id=SpiffeId.parse(f"spiffe://{system.td}/dormant/7"),
            parent_id=SpiffeId.parse(f"spiffe://{system.td}/s2s/agent/fleet/dormant"),
            selectors=parse_selectors(["unix:uid:2000"]),
        )
        with pytest.raises(Conflict):
            await store.create_entry(twin)
        # ... while an entry that differs is accepted.
        fresh = RegistrationEntry(
            id="fresh-id",
            spiffe_id=SpiffeId.parse(f"spiffe://{system.td}/dormant/new"),
            parent_id=twin.parent_id,
            selectors=twin.selectors,
        )
        assert (await store.create_entry(fresh)).revision == 1
    finally:
        await store.close()
