"""The Store contract: what every backend must do, written once.

Use it from a backend's test module::

    class TestSqliteContract(StoreContract):
        @pytest.fixture
        async def open_store(self, ...):  # async callable: a new handle on the same data
            ...

``open_store`` must close every handle it opened at teardown (closing twice is allowed).
Nothing here sleeps: waits are on events, with deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from s2s.core.errors import Conflict, InvalidRequest, NotFound, StoreError
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.base import Store
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    IssuedKind,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Topic,
    UsedMark,
)

OpenStore = Callable[[], Awaitable[Store]]

T0 = dt.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
AGENT_A = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a")
AGENT_B = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/b")
WAKE_DEADLINE = 5.0  # seconds a waiter may take to notice a committed change


def sid(path: str) -> SpiffeId:
    return SpiffeId.parse(f"spiffe://example.org{path}")


def entry(
    eid: str, path: str = "/billing", *, parent: SpiffeId = AGENT_A, **kw: Any
) -> RegistrationEntry:
    selectors = parse_selectors(kw.pop("selectors", ["unix:uid:1001"]))
    return RegistrationEntry(
        id=eid, spiffe_id=sid(path), parent_id=parent, selectors=selectors, created_at=T0, **kw
    )


def agent(
    spiffe_id: SpiffeId = AGENT_A, *, serial: int = 1, hours: float = 1, **kw: Any
) -> AgentRecord:
    return AgentRecord(
        spiffe_id=spiffe_id,
        attestation_type="join_token",
        serial=serial,
        not_after=T0 + dt.timedelta(hours=hours),
        created_at=T0,
        updated_at=T0,
        **kw,
    )


def authority(
    aid: str,
    kind: AuthorityKind = AuthorityKind.X509_INTERMEDIATE,
    *,
    state: AuthorityState = AuthorityState.ACTIVE,
    start: float = 0,
    hours: float = 24,
    owner: str = "ca-1",
) -> AuthorityRecord:
    return AuthorityRecord(
        id=aid,
        kind=kind,
        state=state,
        public_der=b"\x30\x03der-" + aid.encode(),
        encrypted_key=b"sealed\x00\xff" + aid.encode(),
        not_before=T0 + dt.timedelta(hours=start),
        not_after=T0 + dt.timedelta(hours=start + hours),
        owner=owner,
        issuer_id="root-1" if kind == AuthorityKind.X509_INTERMEDIATE else "",
    )


KEY_A = hashlib.sha256(b"spki-a").digest()  # stand-ins for the SHA-256 of a key's SPKI
KEY_B = hashlib.sha256(b"spki-b").digest()


def token(tid: str, *, minutes: float = 10) -> tuple[bytes, JoinTokenRecord]:
    token_hash = hashlib.sha256(f"secret-{tid}".encode()).digest()
    expires = T0 + dt.timedelta(minutes=minutes)
    return token_hash, JoinTokenRecord(
        id=tid, token_hash=token_hash, expires_at=expires, created_at=T0
    )


def issued(
    serial: int,
    path: str = "/billing",
    *,
    agent_id: SpiffeId | None = AGENT_A,
    issuer: str = "int-1",
    minutes: float = 5,
    kind: IssuedKind = IssuedKind.X509_SVID,
) -> IssuedSerial:
    return IssuedSerial(
        serial=serial,
        kind=kind,
        spiffe_id=sid(path),
        issuer_id=issuer,
        issued_at=T0,
        not_after=T0 + dt.timedelta(minutes=minutes),
        agent_id=agent_id,
    )


def revocation(
    serial: int, *, minutes: float = 10, at: dt.datetime = T0, reason: str = ""
) -> RevocationRecord:
    return RevocationRecord.for_serial(
        serial, revoked_at=at, expires_at=T0 + dt.timedelta(minutes=minutes), reason=reason
    )


async def race(*calls: Awaitable[Any]) -> tuple[list[Any], list[BaseException]]:
    """Run calls concurrently; split results from exceptions."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


class StoreContract:
    """Tests every backend must pass. Subclasses provide the ``open_store`` fixture.

    ``LEFT_TO_LEASES``: a backend whose issued serials and used marks expire by themselves (etcd
    leases) sets it; its ``prune`` then leaves them, and the backend's own tests check the leases.
    """

    LEFT_TO_LEASES = False

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> Store:
        return await open_store()

    # -- settings and generic state --

    async def test_settings(self, store: Store) -> None:
        assert await store.get_setting("trust_domain") is None
        await store.set_setting("trust_domain", "example.org")
        await store.set_setting("x509_svid_ttl_cap", "300")
        await store.set_setting("x509_svid_ttl_cap", "600")
        assert await store.get_setting("x509_svid_ttl_cap") == "600"
        with pytest.raises(Conflict, match="trust_domain"):
            await store.set_setting("trust_domain", "evil.org", only_if_absent=True)
        await store.set_setting("created_at", T0.isoformat(), only_if_absent=True)
        with pytest.raises(InvalidRequest):
            await store.set_setting("", "x")
        with pytest.raises(InvalidRequest):
            await store.set_setting("k", 5)  # type: ignore[arg-type]
        assert dict(await store.list_settings()) == {
            "trust_domain": "example.org",
            "x509_svid_ttl_cap": "600",
            "created_at": T0.isoformat(),
        }

    async def test_cas_state(self, store: Store) -> None:
        assert await store.get_state("root_rotation") is None
        with pytest.raises(Conflict):
            await store.cas_state("root_rotation", "prepared", "active")
        await store.cas_state("root_rotation", None, '{"phase": "prepared"}')
        with pytest.raises(Conflict):
            await store.cas_state("root_rotation", None, '{"phase": "other"}')
        with pytest.raises(Conflict):
            await store.cas_state("root_rotation", '{"phase": "wrong"}', "x")
        assert await store.get_state("root_rotation") == '{"phase": "prepared"}'
        await store.cas_state("root_rotation", '{"phase": "prepared"}', '{"phase": "active"}')
        await store.cas_state("root_rotation", '{"phase": "active"}', None)
        assert await store.get_state("root_rotation") is None

    async def test_cas_state_race_has_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        wins, losses = await race(
            a.cas_state("k", None, "from-a"),
            b.cas_state("k", None, "from-b"),
            a.cas_state("k", None, "from-a2"),
        )
        assert len(wins) == 1
        assert all(isinstance(e, Conflict) for e in losses)
        assert len(losses) == 2
        assert await b.get_state("k") in {"from-a", "from-b", "from-a2"}

    # -- authorities --

    async def test_authority_round_trip_and_listing(self, store: Store) -> None:
        root = authority("root-1", AuthorityKind.X509_ROOT, start=-1, hours=24 * 365, owner="")
        int1 = authority("int-1", start=0)
        int2 = authority("int-2", start=1, owner="ca-2", state=AuthorityState.PREPARED)
        jwt = authority("kid-1", AuthorityKind.JWT, start=0.5)
        for record in (int2, jwt, root, int1):
            await store.create_authority(record)
        assert await store.get_authority("int-1") == int1
        assert await store.list_authorities() == (root, int1, jwt, int2)
        assert await store.list_authorities(kind=AuthorityKind.X509_INTERMEDIATE) == (int1, int2)
        assert await store.list_authorities(owner="ca-2") == (int2,)
        assert await store.list_authorities(kind=AuthorityKind.JWT, owner="ca-2") == ()
        with pytest.raises(Conflict, match="int-1"):
            await store.create_authority(dataclasses.replace(int1, owner="other"))
        with pytest.raises(NotFound, match="nope"):
            await store.get_authority("nope")

    async def test_authority_state_compare_and_swap(self, store: Store) -> None:
        await store.create_authority(authority("int-1", state=AuthorityState.PREPARED))
        before = await store.revision(Topic.AUTHORITIES)
        moved = await store.cas_authority_state(
            "int-1", AuthorityState.PREPARED, AuthorityState.ACTIVE
        )
        assert moved.state == AuthorityState.ACTIVE
        assert await store.get_authority("int-1") == moved
        assert await store.revision(Topic.AUTHORITIES) > before
        with pytest.raises(Conflict, match="active"):
            await store.cas_authority_state("int-1", AuthorityState.PREPARED, AuthorityState.OLD)
        assert (await store.get_authority("int-1")).state == AuthorityState.ACTIVE
        with pytest.raises(NotFound):
            await store.cas_authority_state("nope", AuthorityState.ACTIVE, AuthorityState.OLD)

    async def test_authority_state_race_has_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        await a.create_authority(authority("int-1", state=AuthorityState.OLD))
        wins, losses = await race(
            a.cas_authority_state("int-1", AuthorityState.OLD, AuthorityState.TAINTED),
            b.cas_authority_state("int-1", AuthorityState.OLD, AuthorityState.ACTIVE),
        )
        assert len(wins) == 1
        assert [type(e) for e in losses] == [Conflict]
        assert (await b.get_authority("int-1")).state == wins[0].state

    async def test_delete_authority(self, store: Store) -> None:
        await store.create_authority(authority("int-1"))
        await store.delete_authority("int-1")
        with pytest.raises(NotFound):
            await store.get_authority("int-1")
        with pytest.raises(NotFound):
            await store.delete_authority("int-1")

    # -- registration entries --

    async def test_create_and_get_entry(self, store: Store) -> None:
        e = entry("e1", dns_names=("billing.internal",), hint="h")
        stored = await store.create_entry(e)
        assert stored == dataclasses.replace(e, revision=1)
        assert await store.get_entry("e1") == stored
        with pytest.raises(NotFound, match="e2"):
            await store.get_entry("e2")

    async def test_entry_federates_with_round_trips(self, store: Store) -> None:
        tds = frozenset({TrustDomain.parse("b.test"), TrustDomain.parse("c.test")})
        stored = await store.create_entry(entry("e1", federates_with=tds))
        assert (await store.get_entry("e1")).federates_with == tds
        cleared = dataclasses.replace(stored, federates_with=frozenset())
        await store.update_entry(cleared, expected_revision=1)
        assert (await store.get_entry("e1")).federates_with == frozenset()

    async def test_entry_uniqueness(self, store: Store) -> None:
        await store.create_entry(entry("e1", selectors=["unix:uid:1", "unix:gid:2"]))
        with pytest.raises(Conflict, match="e1"):
            await store.create_entry(entry("e1", "/other"))
        with pytest.raises(Conflict, match="e1"):  # same key, selectors in another order
            await store.create_entry(entry("e2", selectors=["unix:gid:2", "unix:uid:1"]))
        await store.create_entry(entry("e3", selectors=["unix:uid:1"]))  # other selectors
        await store.create_entry(entry("e4", parent=AGENT_B, selectors=["unix:uid:1"]))
        await store.create_entry(entry("e5", "/other", selectors=["unix:uid:1"]))
        assert [e.id for e in await store.list_entries()] == ["e1", "e3", "e4", "e5"]

    async def test_update_entry_bumps_revision_and_keeps_created_at(self, store: Store) -> None:
        await store.create_entry(entry("e1"))
        changed = dataclasses.replace(
            entry("e1", selectors=["unix:uid:7"]), created_at=T0 + dt.timedelta(days=1)
        )
        stored = await store.update_entry(changed, expected_revision=1)
        assert stored.revision == 2
        assert stored.created_at == T0
        assert stored.selectors == parse_selectors(["unix:uid:7"])
        assert await store.get_entry("e1") == stored
        with pytest.raises(Conflict, match="revision 2"):
            await store.update_entry(changed, expected_revision=1)
        with pytest.raises(NotFound):
            await store.update_entry(entry("ghost"), expected_revision=1)

    async def test_update_entry_cannot_take_another_entrys_key(self, store: Store) -> None:
        await store.create_entry(entry("e1", selectors=["unix:uid:1"]))
        await store.create_entry(entry("e2", selectors=["unix:uid:2"]))
        with pytest.raises(Conflict, match="e1"):
            await store.update_entry(entry("e2", selectors=["unix:uid:1"]), expected_revision=1)
        assert (await store.get_entry("e2")).revision == 1

    async def test_concurrent_entry_updates_have_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        await a.create_entry(entry("e1"))
        wins, losses = await race(
            a.update_entry(entry("e1", hint="a"), expected_revision=1),
            b.update_entry(entry("e1", hint="b"), expected_revision=1),
        )
        assert len(wins) == 1
        assert [type(e) for e in losses] == [Conflict]
        assert await a.get_entry("e1") == wins[0]

    async def test_delete_entry(self, store: Store) -> None:
        created = await store.create_entry(entry("e1"))
        with pytest.raises(Conflict):
            await store.delete_entry("e1", expected_revision=5)
        assert await store.delete_entry("e1", expected_revision=1) == created
        with pytest.raises(NotFound):
            await store.get_entry("e1")
        with pytest.raises(NotFound):
            await store.delete_entry("e1")
        await store.create_entry(entry("e1"))  # its key is free again

    async def test_list_entries_filters(self, store: Store) -> None:
        e1 = await store.create_entry(entry("e1", "/a"))
        e2 = await store.create_entry(entry("e2", "/b", parent=AGENT_B))
        e3 = await store.create_entry(entry("e3", "/a", parent=AGENT_B))
        assert await store.list_entries(parent_id=AGENT_A) == (e1,)
        assert await store.list_entries(parent_id=AGENT_B) == (e2, e3)
        assert await store.list_entries(spiffe_id=sid("/a")) == (e1, e3)
        assert await store.list_entries(parent_id=AGENT_B, spiffe_id=sid("/a")) == (e3,)
        assert await store.list_entries(parent_id=sid("/s2s/agent/join_token/none")) == ()

    # -- agents --

    async def test_agent_lifecycle(self, store: Store) -> None:
        created = await store.create_agent(agent(next_serial=None))
        assert created.revision == 1
        assert await store.get_agent(AGENT_A) == created
        with pytest.raises(Conflict, match="already exists"):
            await store.create_agent(agent(serial=9))
        renewed = dataclasses.replace(
            created,
            serial=2**127 + 5,
            next_serial=2**159,
            bundle_sequence=3,
            banned=True,
            updated_at=T0 + dt.timedelta(minutes=30),
            created_at=T0 + dt.timedelta(days=9),
        )
        stored = await store.update_agent(renewed, expected_revision=1)
        assert stored == dataclasses.replace(renewed, revision=2, created_at=T0)
        assert await store.get_agent(AGENT_A) == stored
        with pytest.raises(Conflict, match="revision 2"):
            await store.update_agent(renewed, expected_revision=1)
        await store.create_agent(agent(AGENT_B))
        assert [a.spiffe_id for a in await store.list_agents()] == [AGENT_A, AGENT_B]
        assert await store.delete_agent(AGENT_A) == stored
        with pytest.raises(NotFound):
            await store.get_agent(AGENT_A)
        with pytest.raises(NotFound):
            await store.update_agent(renewed, expected_revision=2)
        with pytest.raises(NotFound):
            await store.delete_agent(AGENT_A)

    async def test_concurrent_agent_updates_have_one_winner(self, open_store: OpenStore) -> None:
        a, b = await open_store(), await open_store()
        created = await a.create_agent(agent())
        wins, losses = await race(
            a.update_agent(dataclasses.replace(created, banned=True), expected_revision=1),
            b.update_agent(dataclasses.replace(created, serial=77), expected_revision=1),
        )
        assert len(wins) == 1
        assert [type(e) for e in losses] == [Conflict]
        assert await b.get_agent(AGENT_A) == wins[0]

    # -- join tokens --

    async def test_join_token_first_use_marks_it_used_by_the_key(self, store: Store) -> None:
        token_hash, record = token("t1")
        await store.create_join_token(record)
        assert await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A) == record
        used = dataclasses.replace(record, used_by=KEY_A)
        # a used token is returned unchanged, naming the key that used it: the caller decides
        assert await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A) == used
        assert await store.consume_join_token(token_hash, now=T0, key_hash=KEY_B) == used

    async def test_unknown_join_token(self, store: Store) -> None:
        with pytest.raises(NotFound, match="unknown"):
            await store.consume_join_token(
                hashlib.sha256(b"never").digest(), now=T0, key_hash=KEY_A
            )

    @pytest.mark.parametrize("offset", [dt.timedelta(0), dt.timedelta(microseconds=1)])
    @pytest.mark.parametrize("used_first", [False, True])
    async def test_expired_join_token_fails_and_is_removed(
        self, store: Store, offset: dt.timedelta, used_first: bool
    ) -> None:
        token_hash, record = token("t1", minutes=10)
        await store.create_join_token(record)
        if used_first:
            await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A)
        with pytest.raises(NotFound, match="expired"):
            await store.consume_join_token(
                token_hash, now=record.expires_at + offset, key_hash=KEY_A
            )
        with pytest.raises(NotFound, match="unknown"):
            await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A)

    async def test_join_token_just_before_expiry_works(self, store: Store) -> None:
        token_hash, record = token("t1")
        await store.create_join_token(record)
        now = record.expires_at - dt.timedelta(microseconds=1)
        assert await store.consume_join_token(token_hash, now=now, key_hash=KEY_A) == record

    async def test_used_join_token_stays_until_pruned_at_expiry(self, store: Store) -> None:
        token_hash, record = token("t1", minutes=10)
        await store.create_join_token(record)
        await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A)
        assert await store.prune(record.expires_at - dt.timedelta(seconds=1)) == PruneResult()
        assert (await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A)).used_by == KEY_A
        assert await store.prune(record.expires_at) == PruneResult(join_tokens=1)
        with pytest.raises(NotFound, match="unknown"):
            await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A)

    async def test_consume_refuses_a_bad_key_hash(self, store: Store) -> None:
        token_hash, record = token("t1")
        await store.create_join_token(record)
        for bad in (b"", KEY_A[:31], KEY_A + b"x", "ab" * 32):
            with pytest.raises(InvalidRequest, match="SHA-256"):
                await store.consume_join_token(token_hash, now=T0, key_hash=bad)  # type: ignore[arg-type]
        assert await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A) == record

    async def test_duplicate_join_token(self, store: Store) -> None:
        _, record = token("t1")
        await store.create_join_token(record)
        with pytest.raises(Conflict):
            await store.create_join_token(dataclasses.replace(record, token_hash=b"x" * 32))
        with pytest.raises(Conflict):
            await store.create_join_token(dataclasses.replace(record, id="t2"))

    async def test_concurrent_consumes_have_exactly_one_winner(self, open_store: OpenStore) -> None:
        handles = [await open_store() for _ in range(3)]
        tokens = [token(f"t{i}") for i in range(5)]
        for _, record in tokens:
            await handles[0].create_join_token(record)
        keys = [hashlib.sha256(f"key-{i}".encode()).digest() for i in range(6)]
        for token_hash, record in tokens:
            calls = [
                h.consume_join_token(token_hash, now=T0, key_hash=keys[2 * i + j])
                for i, h in enumerate(handles)
                for j in range(2)
            ]
            seen = await asyncio.gather(*calls)
            first = [r for r in seen if r.used_by is None]
            assert first == [record]  # exactly one call saw it unused
            winner = keys[seen.index(record)]
            assert all(r.used_by == winner for r in seen if r.used_by is not None)

    async def test_consume_needs_an_aware_now(self, store: Store) -> None:
        token_hash, record = token("t1")
        await store.create_join_token(record)
        with pytest.raises(InvalidRequest, match="aware"):
            await store.consume_join_token(token_hash, now=dt.datetime(2030, 1, 1), key_hash=KEY_A)
        assert await store.consume_join_token(token_hash, now=T0, key_hash=KEY_A) == record

    # -- single-use marks --

    async def test_a_mark_is_claimed_once(self, store: Store) -> None:
        mark = UsedMark("assertion/abc", T0 + dt.timedelta(minutes=5))
        await store.claim_once(mark)
        with pytest.raises(Conflict, match="already used"):
            await store.claim_once(mark)
        with pytest.raises(Conflict):  # another expiry does not make it another mark
            await store.claim_once(UsedMark(mark.key, T0 + dt.timedelta(minutes=9)))
        await store.claim_once(UsedMark("assertion/abd", mark.expires_at))  # another key: fine

    async def test_concurrent_claims_have_exactly_one_winner(self, open_store: OpenStore) -> None:
        handles = [await open_store() for _ in range(3)]
        for i in range(5):
            mark = UsedMark(f"assertion/{i}", T0 + dt.timedelta(minutes=5))
            wins, losses = await race(*(h.claim_once(mark) for h in handles for _ in range(2)))
            assert wins == [None]
            assert len(losses) == 5
            assert all(isinstance(e, Conflict) for e in losses)

    async def test_prune_frees_expired_marks_only(self, store: Store) -> None:
        now = T0 + dt.timedelta(minutes=10)
        gone, kept = (UsedMark(k, T0 + dt.timedelta(minutes=m)) for k, m in (("g", 10), ("k", 11)))
        await store.claim_once(gone)
        await store.claim_once(kept)
        if self.LEFT_TO_LEASES:  # etcd drops ``gone`` with its lease, not prune
            assert await store.prune(now) == PruneResult()
            with pytest.raises(Conflict):
                await store.claim_once(kept)
            return
        assert await store.prune(now) == PruneResult(used_marks=1)
        await store.claim_once(gone)  # pruned: the key may be held again
        with pytest.raises(Conflict):
            await store.claim_once(kept)

    # -- revocations --

    async def test_add_revocation_is_idempotent(self, store: Store) -> None:
        r = revocation(0xABC, reason="key leaked")
        assert await store.add_revocation(r) is True
        rev = await store.revision(Topic.REVOCATIONS)
        assert await store.add_revocation(r) is False
        assert await store.add_revocation(dataclasses.replace(r, reason="")) is False
        assert await store.revision(Topic.REVOCATIONS) == rev
        assert await store.list_revocations() == (r,)
        assert await store.get_revocation(RevocationKind.SERIAL, "abc") == r

    async def test_add_revocation_merges_later_times_and_first_reason(self, store: Store) -> None:
        sid_rec = RevocationRecord.for_spiffe_id(
            sid("/billing"), revoked_at=T0, expires_at=T0 + dt.timedelta(minutes=5), reason="one"
        )
        await store.add_revocation(sid_rec)
        rev = await store.revision(Topic.REVOCATIONS)
        later = dataclasses.replace(
            sid_rec,
            revoked_at=T0 + dt.timedelta(minutes=1),
            expires_at=T0 + dt.timedelta(minutes=6),
            reason="two",
        )
        assert await store.add_revocation(later) is True
        assert await store.revision(Topic.REVOCATIONS) > rev
        assert await store.get_revocation(RevocationKind.SPIFFE_ID, str(sid("/billing"))) == (
            dataclasses.replace(later, reason="one")
        )
        assert await store.add_revocation(sid_rec) is False  # older instants change nothing

    async def test_list_and_get_revocations(self, store: Store) -> None:
        jti = RevocationRecord.for_jti("j-1", revoked_at=T0, expires_at=T0 + dt.timedelta(hours=1))
        s2, s1 = revocation(0xB), revocation(0xA)
        for r in (jti, s2, s1):
            await store.add_revocation(r)
        assert await store.list_revocations() == (jti, s1, s2)
        with pytest.raises(NotFound):
            await store.get_revocation(RevocationKind.SERIAL, "c")

    # -- issued serial index --

    async def test_issued_index(self, store: Store) -> None:
        big = issued(2**159 + 1, "/api", agent_id=AGENT_B, issuer="int-2")
        ten = issued(10)
        two = issued(2, "/api")
        agent_svid = issued(3, "/s2s/agent/join_token/a", agent_id=None, kind=IssuedKind.AGENT_SVID)
        await store.add_issued([big, ten])
        await store.add_issued([two, agent_svid])
        await store.add_issued([])
        assert await store.get_issued(10) == ten
        assert await store.list_issued() == (two, agent_svid, ten, big)
        assert await store.list_issued(spiffe_id=sid("/api")) == (two, big)
        assert await store.list_issued(agent_id=AGENT_A) == (two, ten)
        assert await store.list_issued(issuer_id="int-2") == (big,)
        assert await store.list_issued(spiffe_id=sid("/api"), agent_id=AGENT_A) == (two,)
        with pytest.raises(NotFound):
            await store.get_issued(11)

    async def test_issued_batch_is_all_or_nothing(self, store: Store) -> None:
        await store.add_issued([issued(5)])
        with pytest.raises(Conflict, match="serial 5"):
            await store.add_issued([issued(6), issued(7), issued(5, "/other")])
        assert await store.list_issued() == (issued(5),)

    # -- pruning --

    async def test_prune_removes_exactly_what_expired(self, store: Store) -> None:
        now = T0 + dt.timedelta(minutes=10)
        _, tok_gone = token("gone", minutes=10)  # expires exactly at now
        _, tok_kept = token("kept", minutes=11)
        await store.create_join_token(tok_gone)
        await store.create_join_token(tok_kept)
        await store.add_revocation(revocation(1, minutes=5))
        await store.add_revocation(revocation(2, minutes=20))
        await store.add_issued([issued(1, minutes=10), issued(2, minutes=10.5)])
        await store.create_agent(agent(AGENT_A, hours=0.1))
        await store.create_agent(agent(AGENT_B, hours=1))
        await store.create_authority(authority("old", start=-1, hours=1))
        await store.create_authority(authority("new"))
        await store.create_entry(entry("e1"))
        before = {t: await store.revision(t) for t in Topic}

        result = await store.prune(now)

        issued_gone = 0 if self.LEFT_TO_LEASES else 1  # etcd: issued/1 goes with its lease
        one_each = PruneResult(
            join_tokens=1, revocations=1, issued=issued_gone, agents=1, authorities=1
        )
        assert result == one_each
        assert result.total == 4 + issued_gone
        assert [r.value for r in await store.list_revocations()] == ["2"]
        assert [i.serial for i in await store.list_issued()] == (
            [1, 2] if issued_gone == 0 else [2]
        )
        assert [a.spiffe_id for a in await store.list_agents()] == [AGENT_B]
        assert [a.id for a in await store.list_authorities()] == ["new"]
        assert len(await store.list_entries()) == 1
        with pytest.raises(NotFound):
            await store.consume_join_token(tok_gone.token_hash, now=T0, key_hash=KEY_A)
        assert (
            await store.consume_join_token(tok_kept.token_hash, now=T0, key_hash=KEY_A) == tok_kept
        )
        for topic in (Topic.REVOCATIONS, Topic.AGENTS, Topic.AUTHORITIES):
            assert await store.revision(topic) > before[topic], topic
        assert await store.prune(now) == PruneResult()

    # -- revisions and change notification --

    async def test_each_write_bumps_its_topic(self, store: Store) -> None:
        writes: list[tuple[Topic, Callable[[], Awaitable[Any]]]] = [
            (Topic.ENTRIES, lambda: store.create_entry(entry("e1"))),
            (Topic.ENTRIES, lambda: store.update_entry(entry("e1", hint="x"), expected_revision=1)),
            (Topic.ENTRIES, lambda: store.delete_entry("e1")),
            (Topic.AGENTS, lambda: store.create_agent(agent())),
            (Topic.AGENTS, lambda: store.update_agent(agent(banned=True), expected_revision=1)),
            (Topic.AGENTS, lambda: store.delete_agent(AGENT_A)),
            (Topic.REVOCATIONS, lambda: store.add_revocation(revocation(1))),
            (Topic.AUTHORITIES, lambda: store.create_authority(authority("a1"))),
            (Topic.AUTHORITIES, lambda: store.delete_authority("a1")),
            (
                Topic.FEDERATED_BUNDLES,
                lambda: store.cas_state("s", None, "v", topic=Topic.FEDERATED_BUNDLES),
            ),
        ]
        for topic, write in writes:
            before = await store.revision(topic)
            await write()
            assert await store.revision(topic) > before, topic

    async def test_failed_writes_do_not_bump(self, store: Store) -> None:
        await store.create_entry(entry("e1"))
        await store.create_agent(agent())
        before = {t: await store.revision(t) for t in Topic}
        with pytest.raises(Conflict):
            await store.create_entry(entry("e1"))
        with pytest.raises(Conflict):
            await store.update_agent(agent(), expected_revision=7)
        with pytest.raises(NotFound):
            await store.delete_authority("nope")
        with pytest.raises(Conflict):
            await store.cas_state("s", "not this", "v", topic=Topic.FEDERATED_BUNDLES)
        await store.cas_state("plain", None, "v")  # no topic: nothing bumped
        assert {t: await store.revision(t) for t in Topic} == before

    async def test_wait_returns_at_once_when_already_newer(self, store: Store) -> None:
        await store.create_entry(entry("e1"))
        current = await store.revision(Topic.ENTRIES)
        got = await asyncio.wait_for(
            store.wait_for_change(Topic.ENTRIES, current - 1, timeout=60), WAKE_DEADLINE
        )
        assert got == current

    async def test_wait_returns_at_once_when_caller_is_ahead(self, store: Store) -> None:
        current = await store.revision(Topic.ENTRIES)
        got = await asyncio.wait_for(
            store.wait_for_change(Topic.ENTRIES, current + 1000, timeout=60), WAKE_DEADLINE
        )
        assert got == current

    @pytest.mark.parametrize("timeout", [0.0, 0.05])
    async def test_wait_times_out_without_change(self, store: Store, timeout: float) -> None:
        current = await store.revision(Topic.AGENTS)
        got = await asyncio.wait_for(
            store.wait_for_change(Topic.AGENTS, current, timeout=timeout), WAKE_DEADLINE
        )
        assert got == current

    async def test_write_wakes_waiters(self, open_store: OpenStore) -> None:
        store, other = await open_store(), await open_store()
        current = await store.revision(Topic.REVOCATIONS)
        waiters = [
            asyncio.create_task(s.wait_for_change(Topic.REVOCATIONS, current, timeout=60))
            for s in (store, store, other)
        ]
        await asyncio.sleep(0)  # let the waiters start (a yield, not a timed wait)
        await store.add_revocation(revocation(1))
        done = await asyncio.wait_for(asyncio.gather(*waiters), WAKE_DEADLINE)
        assert all(rev > current for rev in done)

    async def test_write_through_another_handle_wakes_a_waiter(self, open_store: OpenStore) -> None:
        store, other = await open_store(), await open_store()
        current = await store.revision(Topic.ENTRIES)
        waiter = asyncio.create_task(store.wait_for_change(Topic.ENTRIES, current, timeout=60))
        await asyncio.sleep(0)
        await other.create_entry(entry("e1"))
        assert await asyncio.wait_for(waiter, WAKE_DEADLINE) > current

    async def test_cancelled_waiter_leaves_no_trace(self, store: Store) -> None:
        current = await store.revision(Topic.ENTRIES)
        waiter = asyncio.create_task(store.wait_for_change(Topic.ENTRIES, current, timeout=60))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        second = asyncio.create_task(store.wait_for_change(Topic.ENTRIES, current, timeout=60))
        await asyncio.sleep(0)
        await store.create_entry(entry("e1"))
        assert await asyncio.wait_for(second, WAKE_DEADLINE) > current

    # -- durability --

    async def test_everything_survives_a_reopen(self, open_store: OpenStore) -> None:
        store = await open_store()
        await store.set_setting("trust_domain", "example.org")
        await store.cas_state("root_rotation", None, "prepared")
        await store.create_authority(authority("int-1"))
        e = await store.create_entry(entry("e1"))
        a = await store.create_agent(agent())
        token_hash, tok = token("t1")
        await store.create_join_token(tok)
        r = revocation(7)
        await store.add_revocation(r)
        await store.add_issued([issued(7)])
        revisions = {t: await store.revision(t) for t in Topic}
        await store.close()
        await store.close()  # idempotent

        again = await open_store()
        assert await again.get_setting("trust_domain") == "example.org"
        assert await again.get_state("root_rotation") == "prepared"
        assert await again.get_authority("int-1") == authority("int-1")
        assert await again.list_entries() == (e,)
        assert await again.list_agents() == (a,)
        assert await again.list_revocations() == (r,)
        assert await again.list_issued() == (issued(7),)
        assert await again.consume_join_token(token_hash, now=T0, key_hash=KEY_A) == tok
        for topic, rev in revisions.items():
            assert await again.revision(topic) >= rev

    async def test_closed_store_refuses_calls(self, open_store: OpenStore) -> None:
        store = await open_store()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.get_entry("e1")
        with pytest.raises(StoreError, match="closed"):
            await store.create_entry(entry("e1"))
