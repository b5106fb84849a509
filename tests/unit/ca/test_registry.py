"""The registry: entry policy, join tokens, agent records and authorization."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging

import pytest
from ca_helpers import Ca, build_ca

from s2s.ca.audit import AUDIT_LOGGER
from s2s.ca.registry import JoinTokenUse
from s2s.core.errors import AttestationFailed, Conflict, InvalidRequest, NotAuthorized, NotFound
from s2s.core.registration import RegistrationEntry
from s2s.core.reserved import (
    AGENT_PATH_PREFIX,
    CA_PATH_PREFIX,
    JOIN_TOKEN_AGENT_PATH_PREFIX,
    RESERVED_PATH,
)
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId

AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/abc")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/xyz")
BILLING = SpiffeId.parse("spiffe://example.org/billing")
SEL = parse_selectors(["unix:uid:1001"])
MIN = dt.timedelta(minutes=1)


async def create(ca: Ca, **kw: object) -> RegistrationEntry:
    args: dict[str, object] = {"spiffe_id": BILLING, "parent_id": AGENT, "selectors": SEL}
    args.update(kw)
    return await ca.registry.create_entry(**args)  # type: ignore[arg-type]


# -- entries ---------------------------------------------------------------------------------


async def test_create_entry_with_defaults_and_audit(
    ca: Ca, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        entry = await create(ca, dns_names=["billing.example.org"], hint="web")
    assert entry.revision == 1
    assert entry.x509_svid_ttl == entry.jwt_svid_ttl == 5 * MIN
    assert await ca.registry.get_entry(entry.id) == entry
    record = next(r for r in caplog.records if r.name == AUDIT_LOGGER)
    assert record.entry_id == entry.id  # type: ignore[attr-defined]
    assert record.action == "entry.create"  # type: ignore[attr-defined]
    assert record.spiffe_id == str(BILLING)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://other.org/billing", "not in trust domain example.org"),
        ("spiffe://example.org/s2s/agent/x", "reserved path"),
        ("spiffe://example.org/s2s", "reserved path"),
        ("spiffe://example.org/s2s/ca/ca-0", "reserved path"),
        (f"spiffe://example.org{JOIN_TOKEN_AGENT_PATH_PREFIX}a1", "reserved path"),
        (f"spiffe://example.org{AGENT_PATH_PREFIX}other/a1", "reserved path"),
        (f"spiffe://example.org{CA_PATH_PREFIX}ca-1", "reserved path"),
        (f"spiffe://example.org{RESERVED_PATH}/anything", "reserved path"),
        ("spiffe://example.org", "needs a path"),
    ],
)
async def test_create_entry_rejects_bad_spiffe_ids(ca: Ca, spiffe_id: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await create(ca, spiffe_id=SpiffeId.parse(spiffe_id))
    assert (await ca.registry.list_entries()).entries == ()


async def test_a_path_that_only_starts_with_s2s_is_allowed(ca: Ca) -> None:
    entry = await create(ca, spiffe_id=SpiffeId.parse("spiffe://example.org/s2sx/app"))
    assert entry.revision == 1


async def test_create_entry_rejects_foreign_parent_and_self_parent(ca: Ca) -> None:
    with pytest.raises(InvalidRequest, match="parent ID"):
        await create(ca, parent_id=SpiffeId.parse("spiffe://other.org/s2s/agent/x"))
    with pytest.raises(InvalidRequest, match="own parent"):
        await create(ca, parent_id=BILLING)


@pytest.mark.parametrize("field", ["x509_svid_ttl", "jwt_svid_ttl"])
async def test_ttl_above_cap_is_refused_at_cap_is_accepted(ca: Ca, field: str) -> None:
    with pytest.raises(InvalidRequest, match="above the cap of 300s"):
        await create(ca, **{field: 5 * MIN + dt.timedelta(seconds=1)})
    entry = await create(ca, **{field: 5 * MIN})
    assert getattr(entry, field) == 5 * MIN


async def test_raised_cap_allows_longer_ttls(ca: Ca) -> None:
    config = dataclasses.replace(ca.config, max_svid_ttl=dt.timedelta(hours=1))
    raised = await build_ca(config, ca.store, ca.kek, ca.clock)
    entry = await create(raised, x509_svid_ttl=dt.timedelta(minutes=30))
    assert entry.x509_svid_ttl == dt.timedelta(minutes=30)


async def test_create_entry_rejects_bad_values(ca: Ca) -> None:
    with pytest.raises(InvalidRequest, match="DNS name"):
        await create(ca, dns_names=["not a name"])
    with pytest.raises(InvalidRequest, match="selector"):
        await create(ca, selectors=frozenset())
    with pytest.raises(InvalidRequest, match="positive"):
        await create(ca, x509_svid_ttl=dt.timedelta(0))


async def test_duplicate_entry_conflicts(ca: Ca) -> None:
    await create(ca)
    with pytest.raises(Conflict):
        await create(ca)


async def test_update_entry_bumps_revision_and_checks_revision(ca: Ca) -> None:
    entry = await create(ca)
    updated = await ca.registry.update_entry(
        entry.id, expected_revision=1, selectors=parse_selectors(["unix:uid:2000"]), hint="h"
    )
    assert updated.revision == 2
    assert updated.hint == "h"
    assert updated.spiffe_id == BILLING
    with pytest.raises(Conflict, match="revision 2"):
        await ca.registry.update_entry(entry.id, expected_revision=1, hint="x")


async def test_update_entry_is_checked_and_leaves_store_unchanged(ca: Ca) -> None:
    entry = await create(ca)
    with pytest.raises(InvalidRequest, match="reserved"):
        await ca.registry.update_entry(
            entry.id, spiffe_id=SpiffeId.parse("spiffe://example.org/s2s/x")
        )
    with pytest.raises(InvalidRequest, match="above the cap"):
        await ca.registry.update_entry(entry.id, jwt_svid_ttl=dt.timedelta(hours=1))
    assert await ca.registry.get_entry(entry.id) == entry


async def test_unknown_entry_ids(ca: Ca) -> None:
    with pytest.raises(NotFound):
        await ca.registry.get_entry("nope")
    with pytest.raises(NotFound):
        await ca.registry.update_entry("nope", hint="x")
    with pytest.raises(NotFound):
        await ca.registry.delete_entry("nope")


async def test_delete_entry(ca: Ca) -> None:
    entry = await create(ca)
    await ca.registry.delete_entry(entry.id)
    with pytest.raises(NotFound):
        await ca.registry.get_entry(entry.id)


async def test_entries_for_agent_only_its_own_with_revision(ca: Ca) -> None:
    mine = await create(ca)
    await create(ca, parent_id=OTHER_AGENT)
    snap = await ca.registry.entries_for_agent(AGENT)
    assert snap.entries == (mine,)
    await create(ca, spiffe_id=SpiffeId.parse("spiffe://example.org/api"))
    assert (await ca.registry.entries_for_agent(AGENT)).revision > snap.revision


async def test_wait_for_entries_wakes_on_change_and_times_out(ca: Ca) -> None:
    rev = (await ca.registry.list_entries()).revision
    assert await ca.registry.wait_for_entries(rev, 0.05) == rev  # nothing changed
    waiter = asyncio.create_task(ca.registry.wait_for_entries(rev, 10))
    await asyncio.sleep(0)
    await create(ca)
    assert await asyncio.wait_for(waiter, 5) > rev


KEY_A = hashlib.sha256(b"spki-a").digest()
KEY_B = hashlib.sha256(b"spki-b").digest()


# -- join tokens -----------------------------------------------------------------------------


async def test_join_token_grants_its_agent_id_once(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    assert token.agent_id.path.startswith(JOIN_TOKEN_AGENT_PATH_PREFIX)
    assert token.expires_at == ca.clock.now() + dt.timedelta(minutes=10)
    first = await ca.registry.consume_join_token(token.token, key_hash=KEY_A)
    assert first == JoinTokenUse(token.agent_id, retry=False)
    with pytest.raises(AttestationFailed, match="already used by another key"):
        await ca.registry.consume_join_token(token.token, key_hash=KEY_B)


async def test_join_token_retry_by_the_same_key(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    await ca.registry.consume_join_token(token.token, key_hash=KEY_A)
    ca.clock.advance(dt.timedelta(minutes=9, seconds=59))
    again = await ca.registry.consume_join_token(token.token, key_hash=KEY_A)
    assert again == JoinTokenUse(token.agent_id, retry=True)
    ca.clock.advance(dt.timedelta(seconds=1))  # the token's own expiry ends the retries
    with pytest.raises(AttestationFailed, match="expired"):
        await ca.registry.consume_join_token(token.token, key_hash=KEY_A)


async def test_expired_join_token_is_refused(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    ca.clock.advance(dt.timedelta(minutes=10))
    with pytest.raises(AttestationFailed, match="expired"):
        await ca.registry.consume_join_token(token.token, key_hash=KEY_A)


async def test_custom_ttl_and_bad_ttls(ca: Ca) -> None:
    token = await ca.registry.generate_join_token(ttl=dt.timedelta(hours=1))
    ca.clock.advance(dt.timedelta(minutes=59))
    use = await ca.registry.consume_join_token(token.token, key_hash=KEY_A)
    assert use.agent_id == token.agent_id
    for bad in (dt.timedelta(0), dt.timedelta(days=8)):
        with pytest.raises(InvalidRequest):
            await ca.registry.generate_join_token(ttl=bad)


@pytest.mark.parametrize("bad", ["", "x" * 300, "unknown-token"])
async def test_unknown_or_malformed_join_token(ca: Ca, bad: str) -> None:
    with pytest.raises(AttestationFailed):
        await ca.registry.consume_join_token(bad, key_hash=KEY_A)


async def test_concurrent_consumers_one_wins(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    keys = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    results = await asyncio.gather(
        *(ca.registry.consume_join_token(token.token, key_hash=k) for k in keys),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, JoinTokenUse)]
    assert wins == [JoinTokenUse(token.agent_id, retry=False)]
    assert all(isinstance(r, AttestationFailed) for r in results if r not in wins)


async def test_join_token_is_not_stored_in_clear(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    await ca.store.close()
    data = b"".join(p.read_bytes() for p in ca.config.data_dir.glob("s2s.db*"))
    assert token.token.encode() not in data


# -- agents ----------------------------------------------------------------------------------


async def register(ca: Ca, serial: int = 0x1001) -> None:
    await ca.registry.register_agent(
        AGENT, serial=serial, not_after=ca.clock.now() + dt.timedelta(hours=1)
    )


async def test_authorize_current_serial(ca: Ca) -> None:
    await register(ca)
    record = await ca.registry.authorize_agent(AGENT, 0x1001)
    assert record.spiffe_id == AGENT
    assert not record.banned


async def test_authorize_refuses_other_serial_and_unknown_agent(ca: Ca) -> None:
    await register(ca)
    with pytest.raises(NotAuthorized, match="not the current SVID"):
        await ca.registry.authorize_agent(AGENT, 0x2002)
    with pytest.raises(NotAuthorized, match="not attested"):
        await ca.registry.authorize_agent(OTHER_AGENT, 0x1001)


async def test_next_serial_is_promoted_on_first_use(ca: Ca) -> None:
    await register(ca)
    record = await ca.registry.authorize_agent(AGENT, 0x1001)
    staged = await ca.registry.stage_agent_serial(
        record, next_serial=0x2002, not_after=ca.clock.now() + dt.timedelta(hours=1)
    )
    assert (staged.serial, staged.next_serial) == (0x1001, 0x2002)
    assert (await ca.registry.authorize_agent(AGENT, 0x1001)).serial == 0x1001  # old still ok
    promoted = await ca.registry.authorize_agent(AGENT, 0x2002)
    assert (promoted.serial, promoted.next_serial) == (0x2002, None)
    with pytest.raises(NotAuthorized):
        await ca.registry.authorize_agent(AGENT, 0x1001)  # the old SVID is retired


async def test_evicted_agent_is_refused(ca: Ca) -> None:
    await register(ca)
    await ca.registry.evict_agent(AGENT)
    with pytest.raises(NotAuthorized, match="evicted"):
        await ca.registry.authorize_agent(AGENT, 0x1001)
    with pytest.raises(NotFound):
        await ca.registry.evict_agent(AGENT)


async def test_banned_agent_is_refused_and_cannot_reregister(ca: Ca) -> None:
    await register(ca)
    banned = await ca.registry.ban_agent(AGENT)
    assert banned.banned
    with pytest.raises(NotAuthorized, match="banned"):
        await ca.registry.authorize_agent(AGENT, 0x1001)
    with pytest.raises(NotAuthorized, match="banned"):
        await register(ca, serial=0x3003)
    assert [a.spiffe_id for a in await ca.registry.list_agents()] == [AGENT]
    with pytest.raises(NotFound):
        await ca.registry.ban_agent(OTHER_AGENT)


async def test_restart_keeps_entries_and_agents(ca: Ca) -> None:
    entry = await create(ca)
    await register(ca)
    again = await build_ca(ca.config, ca.store, ca.kek, ca.clock)
    assert (await again.registry.list_entries()).entries == (entry,)
    assert (await again.registry.authorize_agent(AGENT, 0x1001)).spiffe_id == AGENT


async def test_admin_changes_are_audited_without_secrets(
    ca: Ca, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        token = await ca.registry.generate_join_token()
        agent_id = (await ca.registry.consume_join_token(token.token, key_hash=KEY_A)).agent_id
        await ca.registry.register_agent(
            agent_id, serial=7, not_after=ca.clock.now() + dt.timedelta(hours=1)
        )
        await ca.registry.ban_agent(agent_id)
        await ca.registry.evict_agent(agent_id)
        entry = await create(ca)
        await ca.registry.update_entry(entry.id, hint="x")
        await ca.registry.delete_entry(entry.id)
    audit = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    actions = [r.action for r in audit]  # type: ignore[attr-defined]
    assert actions == [
        "token.generate",
        "agent.ban",
        "agent.evict",
        "entry.create",
        "entry.update",
        "entry.delete",
    ]
    assert audit[0].agent_id == str(token.agent_id)  # type: ignore[attr-defined]
    assert token.token not in caplog.text
    assert all(token.token not in str(vars(r)) for r in caplog.records)
