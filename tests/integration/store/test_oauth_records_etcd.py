"""OAuth client records and the token service's keys on a real etcd (the store's state keys,
compare-and-swap): two CA replicas (two stores) see one client set and one key set."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.oauth_clients import ClientRegistry
from s2s.ca.oauth_keys import TokenKeyRing
from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict, NotFound
from s2s.core.oauth import secret_matches
from s2s.core.spiffe_id import TrustDomain
from s2s.store.etcd import EtcdStore
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)


async def test_clients_and_keys_are_shared_through_etcd(etcd: EtcdServer) -> None:
    td = f"t{uuid.uuid4().hex[:8]}.example"
    one = await EtcdStore.open(etcd.endpoint, trust_domain=td, timeout=3.0)
    two = await EtcdStore.open(etcd.endpoint, trust_domain=td, timeout=3.0)
    clock = FakeClock(dt.datetime.now(dt.UTC))
    kek = KeyEncryptionKey(b"\x07" * 32)
    try:
        trust = TrustDomain.parse(td)
        first = ClientRegistry(store=one, clock=clock, trust_domain=trust)
        second = ClientRegistry(store=two, clock=clock, trust_domain=trust)
        record, secret = await first.create(client_id="reports", scopes=["a"], audiences=["x"])
        assert secret is not None
        seen = await second.get("reports")
        assert seen == record
        assert secret_matches(secret, seen.secret_hashes)
        with pytest.raises(Conflict):
            await second.create(client_id="reports", scopes=["a"], audiences=["x"])
        await second.delete("reports")
        with pytest.raises(NotFound):
            await first.get("reports")

        ring_one = TokenKeyRing(store=one, kek=kek, clock=clock, ttl=dt.timedelta(hours=24))
        ring_two = TokenKeyRing(store=two, kek=kek, clock=clock, ttl=dt.timedelta(hours=24))
        await ring_one.start()
        await ring_two.start()
        assert ring_one.signer.kid == ring_two.signer.kid
        assert ring_one.jwks() == ring_two.jwks()
    finally:
        await one.close()
        await two.close()
