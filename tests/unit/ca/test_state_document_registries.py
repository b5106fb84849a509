"""The registries on StateDocument read documents as the earlier code stored them (literal texts
below, written before the helper existed) and write them back in the same form: OAuth clients in
their stored order, relationships sorted by trust domain. A malformed stored record is
Unavailable (the store's fault), not the caller's InvalidRequest."""

from __future__ import annotations

import dataclasses
import json

import pytest

from s2s.ca.federated_bundles import FederatedBundles
from s2s.ca.federation import RELATIONSHIPS_STATE, FederationRelationships
from s2s.ca.oauth_clients import CLIENTS_STATE, ClientRegistry
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable
from s2s.core.spiffe_id import TrustDomain
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore

TD = TrustDomain.parse("example.org")
B = TrustDomain.parse("b.test")


def _client(client_id: str, auth: str, hashes: list[str], spiffe_id: str | None) -> str:
    return (
        f'{{"audiences": ["x"], "auth": "{auth}", "client_id": "{client_id}", '
        f'"created_at": "2026-01-01T00:00:00+00:00", "scopes": ["b"], '
        f'"secret_hashes": {json.dumps(hashes)}, "secrets": {len(hashes)}, '
        f'"spiffe_id": {json.dumps(spiffe_id)}, "updated_at": "2026-01-01T00:00:00+00:00"}}'
    )


ZETA = _client("zeta", "secret", ["sha256:" + "0f" * 32], None)
ALPHA = _client("alpha", "secret", ["sha256:" + "56" * 32], None)
SVID = _client("spiffe://example.org/w", "svid", [], "spiffe://example.org/w")
RELATIONSHIP = (
    '{"bundle_endpoint_url": "https://b.test/b2", "created_at": "2026-01-01T00:00:10+00:00", '
    '"endpoint_spiffe_id": null, "profile": "https_web", "status": {"failures": 2, '
    '"last_attempt_at": null, "last_error": null, "last_success_at": null, '
    '"next_refresh_at": "2026-01-01T00:00:15+00:00"}, "trust_domain": "b.test", '
    '"updated_at": "2026-01-01T00:00:15+00:00"}'
)


async def test_stored_oauth_clients_read_and_write_as_before(
    store: SqliteStore, clock: FakeClock
) -> None:
    await store.cas_state(CLIENTS_STATE, None, f'{{"clients": [{ZETA}, {ALPHA}, {SVID}]}}')
    registry = ClientRegistry(store=store, clock=clock, trust_domain=TD)
    assert [c.client_id for c in await registry.list()] == [
        "alpha",
        "spiffe://example.org/w",
        "zeta",
    ]
    assert (await registry.get("zeta")).secret_hashes == ("sha256:" + "0f" * 32,)
    before = await store.revision(Topic.OAUTH_CLIENTS)
    await registry.delete("alpha")
    # the others keep their stored order and their text, to the byte
    assert await store.get_state(CLIENTS_STATE) == f'{{"clients": [{ZETA}, {SVID}]}}'
    assert await store.revision(Topic.OAUTH_CLIENTS) != before


async def test_a_malformed_stored_client_is_unavailable(
    store: SqliteStore, clock: FakeClock
) -> None:
    await store.cas_state(CLIENTS_STATE, None, '{"clients": [{"client_id": 1}]}')
    registry = ClientRegistry(store=store, clock=clock, trust_domain=TD)
    with pytest.raises(Unavailable, match="stored OAuth clients are unreadable"):
        await registry.list()
    with pytest.raises(Unavailable):
        await registry.create(client_id="new", scopes=["a"], audiences=["x"])
    await store.cas_state(  # twin: a well-formed document reads again
        CLIENTS_STATE, '{"clients": [{"client_id": 1}]}', f'{{"clients": [{ZETA}]}}'
    )
    assert [c.client_id for c in await registry.list()] == ["zeta"]


async def test_stored_relationships_read_and_write_as_before(
    store: SqliteStore, clock: FakeClock
) -> None:
    stored = f'{{"relationships": [{RELATIONSHIP}]}}'
    await store.cas_state(RELATIONSHIPS_STATE, None, stored)
    bundles = FederatedBundles(store=store, clock=clock, trust_domain=TD)
    relationships = FederationRelationships(
        store=store, clock=clock, trust_domain=TD, bundles=bundles
    )
    woken: list[None] = []
    relationships.subscribe(lambda: woken.append(None))
    current = await relationships.get(B)
    assert current.bundle_endpoint_url == "https://b.test/b2"
    assert current.status.failures == 2
    # a status for a relationship changed since: nothing written, no listener woken
    stale = dataclasses.replace(current, updated_at=clock.now())
    await relationships.record_status(stale, current.status)
    assert await store.get_state(RELATIONSHIPS_STATE) == stored
    assert woken == []
    await relationships.request_refresh(B)  # twin: a change is written and announced once
    written = json.loads(await store.get_state(RELATIONSHIPS_STATE) or "")
    assert written["relationships"][0]["status"]["next_refresh_at"] == clock.now().isoformat()
    assert woken == [None]
