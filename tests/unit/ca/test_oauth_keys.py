"""The token service's keys on a real SQLite store with a fake clock: created sealed, rotated on
the JWT-SVID keys' schedule (prepared and published at half life, active when a sixth remains),
an old key published until it expires, and replicas sharing one set."""

from __future__ import annotations

import datetime as dt
import json

import jwt
import pytest

from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.oauth_keys import KEYS_STATE, TokenKeyRing
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig
from s2s.store.sqlite import SqliteStore

TTL = dt.timedelta(hours=24)


def ring(store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> TokenKeyRing:
    return TokenKeyRing(store=store, kek=kek, clock=clock, ttl=TTL)


def kids(keys: TokenKeyRing) -> list[str]:
    return [k["kid"] for k in json.loads(keys.jwks())["keys"]]


async def test_rotation_publishes_before_signing_and_keeps_the_old_key(
    store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    keys = ring(store, kek, clock)
    await keys.start()
    first = keys.signer.kid
    assert kids(keys) == [first]
    raw = await store.get_state(KEYS_STATE)
    assert raw is not None
    assert "BEGIN" not in raw  # sealed, not PEM
    token = keys.signer.sign({"sub": "a"})
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": first, "typ": "at+jwt"}

    clock.advance(TTL / 2 + dt.timedelta(seconds=1))
    assert await keys.rotate_if_due()
    assert keys.signer.kid == first  # prepared, published, not yet signing
    assert len(kids(keys)) == 2
    assert not await keys.rotate_if_due()  # nothing more to do

    clock.advance(TTL / 3)
    assert await keys.rotate_if_due()
    second = keys.signer.kid
    assert second != first
    assert set(kids(keys)) == {first, second}  # the old key verifies its last tokens
    pub = keys.public_key(first)
    assert pub is not None
    assert jwt.decode(token, pub, algorithms=["ES256"])["sub"] == "a"

    clock.advance(TTL / 6)  # past the first key's not_after
    await keys.rotate_if_due()
    assert first not in kids(keys)
    assert keys.public_key(first) is None
    assert keys.signer.kid == second


async def test_replicas_share_one_key_set_and_a_wrong_kek_is_refused(
    store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock, config: CaConfig
) -> None:
    one, two = ring(store, kek, clock), ring(store, kek, clock)
    await one.start()
    await two.start()
    assert one.signer.kid == two.signer.kid
    other = KeyEncryptionKey(b"\x01" * 32)
    with pytest.raises(InvalidConfig, match="cannot decrypt"):
        await ring(store, other, clock).start()
