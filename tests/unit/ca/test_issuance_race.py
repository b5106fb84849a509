"""Issuance racing an ID or agent revocation: a certificate signed while its ID (or the agent
that asked for it) is being revoked is always covered, by a serial record or by being withdrawn.

Each race is forced, not hoped for: a store wrapper runs the revocation (or parks it) at the
exact point between signing and indexing, or between the revocation's listing and its write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from ca_helpers import make_csr

from s2s.ca.attestation import AgentAttestor
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import CsrRequest, Issuer, X509SvidResult
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.registry import Registry
from s2s.ca.revocations import RevocationService
from s2s.core.clock import FakeClock
from s2s.core.errors import Revoked
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.store.records import IssuedSerial
from s2s.store.sqlite import SqliteStore

BILLING = SpiffeId.parse("spiffe://example.org/billing")
API = SpiffeId.parse("spiffe://example.org/api")
SEC = dt.timedelta(seconds=1)


class RacingStore:
    """The real store, with hooks: ``before_index`` runs inside ``add_issued`` before the serials
    are written; ``after_listing`` runs inside ``list_issued`` after the listing was read."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.before_index: Callable[[], Awaitable[None]] | None = None
        self.after_listing: Callable[[], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def add_issued(self, items: Sequence[IssuedSerial]) -> Any:
        hook, self.before_index = self.before_index, None
        if hook is not None:
            await hook()
        return await self._inner.add_issued(items)

    async def list_issued(self, **kwargs: Any) -> Any:
        listed = await self._inner.list_issued(**kwargs)
        hook, self.after_listing = self.after_listing, None
        if hook is not None:
            await hook()
        return listed


class Rig:
    def __init__(self, store: RacingStore, clock: FakeClock, **services: Any) -> None:
        self.store, self.clock = store, clock
        self.registry: Registry = services["registry"]
        self.issuer: Issuer = services["issuer"]
        self.attestor: AgentAttestor = services["attestor"]
        self.live: LiveRevocations = services["live"]
        self.service: RevocationService = services["service"]


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    """Wired as app.py wires them (one LiveRevocations for registry, issuer and service)."""
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    racing: Any = RacingStore(store)
    authority = Authority(config=config, store=racing, kek=kek, clock=clock)
    await authority.start()
    live = LiveRevocations(store=racing)
    await live.refresh()
    args: dict[str, Any] = {"config": config, "store": racing, "clock": clock, "revocations": live}
    registry = Registry(**args)
    issuer = Issuer(authority=authority, registry=registry, **args)
    attestor = AgentAttestor(authority=authority, registry=registry, issuer=issuer)
    service = RevocationService(config=config, store=racing, registry=registry, live=live,
                                clock=clock)  # fmt: skip
    return Rig(racing, clock, registry=registry, issuer=issuer, attestor=attestor, live=live,
               service=service)  # fmt: skip


async def agent_and_entries(rig: Rig) -> tuple[Any, Any, Any]:
    token = await rig.registry.generate_join_token()
    agent = (await rig.attestor.attest_join_token(token.token, make_csr())).agent
    billing, api = [
        await rig.registry.create_entry(
            spiffe_id=sid, parent_id=agent.spiffe_id, selectors=parse_selectors([f"unix:uid:{u}"])
        )
        for sid, u in ((BILLING, 1), (API, 2))
    ]
    return agent, billing, api


async def covered(rig: Rig, result: X509SvidResult) -> bool:
    """True when the SVID of ``result`` cannot be used: withdrawn, or its serial revoked."""
    if result.svid is None:
        return isinstance(result.error, Revoked)
    revoked = await rig.live.refresh()
    return revoked.is_serial_revoked_by_any_issuer(result.svid.serial)


async def test_revocation_between_signing_and_indexing_withdraws_the_svid(rig: Rig) -> None:
    agent, billing, api = await agent_and_entries(rig)

    async def revoke_billing() -> None:
        rig.clock.advance(seconds=1)  # the revocation comes after the batch started
        await rig.service.revoke_spiffe_id(BILLING)

    rig.store.before_index = revoke_billing
    got = await rig.issuer.sign_x509_svids(
        agent, [CsrRequest(billing.id, make_csr()), CsrRequest(api.id, make_csr())]
    )
    assert await covered(rig, got[0]), got[0]
    assert isinstance(got[0].error, Revoked)
    assert "while its SVID was being issued" in str(got[0].error)
    assert got[1].svid is not None  # twin: the other ID in the batch is unaffected
    assert not await covered(rig, got[1])
    # And a fresh batch after the revocation is issued normally (issued after revoked_at).
    rig.clock.advance(seconds=1)
    (fresh,) = await rig.issuer.sign_x509_svids(agent, [CsrRequest(billing.id, make_csr())])
    assert fresh.svid is not None


async def test_revocation_listing_before_indexing_and_writing_after_covers_the_svid(
    rig: Rig,
) -> None:
    """The revocation lists the index (without the new serial), the issuer indexes and re-reads
    (no record yet) and returns the SVID, then the revocation writes: it must list again."""
    agent, billing, _ = await agent_and_entries(rig)
    listed, resume = asyncio.Event(), asyncio.Event()

    async def park_after_listing() -> None:
        listed.set()
        await resume.wait()

    async def start_revocation() -> None:
        rig.clock.advance(seconds=1)
        rig.store.after_listing = park_after_listing
        revocations.append(asyncio.create_task(rig.service.revoke_spiffe_id(BILLING)))
        await asyncio.wait_for(listed.wait(), 5)

    revocations: list[asyncio.Task[Any]] = []
    rig.store.before_index = start_revocation
    (result,) = await rig.issuer.sign_x509_svids(agent, [CsrRequest(billing.id, make_csr())])
    resume.set()
    await asyncio.wait_for(revocations[0], 5)
    assert await covered(rig, result), result


async def test_agent_revoked_between_signing_and_indexing_gets_nothing(rig: Rig) -> None:
    agent, billing, api = await agent_and_entries(rig)

    async def revoke_agent() -> None:
        rig.clock.advance(seconds=1)
        await rig.service.revoke_agent(agent.spiffe_id)

    rig.store.before_index = revoke_agent
    with pytest.raises(Revoked):
        await rig.issuer.sign_x509_svids(
            agent, [CsrRequest(billing.id, make_csr()), CsrRequest(api.id, make_csr())]
        )


async def test_agent_renewal_racing_its_revocation_is_refused(rig: Rig) -> None:
    agent, _, _ = await agent_and_entries(rig)

    async def revoke_agent() -> None:
        rig.clock.advance(seconds=1)
        await rig.service.revoke_agent(agent.spiffe_id)

    rig.store.before_index = revoke_agent
    with pytest.raises(Revoked):
        await rig.attestor.renew_agent(agent, make_csr())


async def test_admin_mint_racing_its_revocation_is_refused(rig: Rig) -> None:
    await agent_and_entries(rig)

    async def revoke_billing() -> None:
        rig.clock.advance(seconds=1)
        await rig.service.revoke_spiffe_id(BILLING)

    rig.store.before_index = revoke_billing
    with pytest.raises(Revoked, match="while its SVID was being issued"):
        await rig.issuer.mint_x509_svid(BILLING)
    rig.clock.advance(seconds=1)
    assert (await rig.issuer.mint_x509_svid(BILLING)).spiffe_id == BILLING  # twin: after it


async def test_without_a_race_nothing_is_withdrawn(rig: Rig) -> None:
    agent, billing, api = await agent_and_entries(rig)
    rig.clock.advance(seconds=1)
    await rig.service.revoke_spiffe_id(API)  # an unrelated, earlier revocation
    rig.clock.advance(seconds=1)
    got = await rig.issuer.sign_x509_svids(
        agent, [CsrRequest(billing.id, make_csr()), CsrRequest(api.id, make_csr())]
    )
    assert all(r.svid is not None for r in got), got  # API's record predates this issuance
    assert not any([await covered(rig, r) for r in got])
