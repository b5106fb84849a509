"""Revocation by SPIFFE ID and by agent on a real etcd, where the issued serials are found through
the index by ID (``issued-ids/``, ``issued-agents/``): every certificate of the ID is revoked,
and none of an ID whose text merely starts the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ca_helpers import make_csr
from test_revocations import Rig, build_rig, crl_serials

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import CsrRequest
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import FakeClock
from s2s.core.revocation import RevocationKind
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.etcd import EtcdStore
from s2s.testing_etcd import EtcdServer

A = SpiffeId.parse("spiffe://example.org/a")
A_B = SpiffeId.parse("spiffe://example.org/a/b")


@pytest.fixture
async def rig(
    tmp_path: Path, config: CaConfig, kek: KeyEncryptionKey, clock: FakeClock
) -> AsyncIterator[Rig]:
    with EtcdServer(tmp_path / "etcd") as etcd:
        store = await EtcdStore.open(etcd.endpoint, trust_domain="example.org", poll_interval=0.05)
        try:
            await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
            yield await build_rig(config, store, kek, clock)
        finally:
            await store.close()


async def _agent_with_svids(rig: Rig, counts: dict[SpiffeId, int]) -> tuple[Any, set[int]]:
    """An attested agent that obtained ``counts[id]`` X509-SVIDs of each ID; (it, their serials)."""
    token = await rig.registry.generate_join_token()
    attested = await rig.attestor.attest_join_token(token.token, make_csr())
    serials = set()
    for spiffe_id, count in counts.items():
        entry = await rig.registry.create_entry(
            spiffe_id=spiffe_id, parent_id=token.agent_id, selectors=parse_selectors(["unix:uid:1"])
        )
        requests = [CsrRequest(entry.id, make_csr()) for _ in range(count)]
        for signed in await rig.issuer.sign_x509_svids(attested.agent, requests):
            assert signed.svid is not None
            serials.add(signed.svid.serial)
    return attested, serials


def _serials(result: Any) -> set[int]:
    return {int(r.value, 16) for r in result.records if r.kind is RevocationKind.SERIAL}


async def test_revoke_by_spiffe_id_on_etcd_revokes_every_svid_of_that_id_only(rig: Rig) -> None:
    _, of_a = await _agent_with_svids(rig, {A: 3})
    _, of_a_b = await _agent_with_svids(rig, {A_B: 2})
    minted = await rig.issuer.mint_x509_svid(A)  # admin mint: no agent
    result = await rig.service.revoke_spiffe_id(A)
    assert _serials(result) == of_a | {minted.serial}
    current = rig.live.current()
    assert all(current.is_serial_revoked_by_any_issuer(s) for s in of_a | {minted.serial})
    assert not any(current.is_serial_revoked_by_any_issuer(s) for s in of_a_b)
    assert of_a <= crl_serials(rig)
    assert not of_a_b & crl_serials(rig)


async def test_revoke_agent_on_etcd_revokes_its_svid_and_what_it_obtained_only(rig: Rig) -> None:
    agent, obtained = await _agent_with_svids(rig, {A: 2, A_B: 2})
    other, theirs = await _agent_with_svids(rig, {A: 2})  # another node serving the same ID
    result = await rig.service.revoke_agent(agent.agent.spiffe_id)
    assert _serials(result) == obtained | {agent.svid.serial}
    current = rig.live.current()
    assert not any(current.is_serial_revoked_by_any_issuer(s) for s in theirs)
    assert not current.is_serial_revoked_by_any_issuer(other.svid.serial)
