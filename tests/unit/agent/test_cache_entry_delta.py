"""The agent applies a delta answer to the list it holds: changed entries replace or join it,
removed ids leave it, and what did not change keeps its SVID (no re-issue)."""

from __future__ import annotations

import dataclasses

import pytest
from test_cache import UID, entry, issue

from s2s.agent.ca_client import CaClient
from s2s.agent.cache import SvidCache
from s2s.core.clock import FakeClock
from s2s.testing import TestAuthority


@pytest.fixture
def cache(authority: TestAuthority, fake_clock: FakeClock) -> SvidCache:
    client = CaClient(
        urls=("https://ca.invalid",), trust_domain=authority.trust_domain, clock=fake_clock
    )  # fmt: skip  (never called by these tests)
    return SvidCache(client=client, bundle=authority.bundle(), clock=fake_clock, rand=lambda: 0.5)


def held(cache: SvidCache) -> dict[str, str]:
    return {i.entry.id: i.entry.hint for i in cache._state.items}


def test_a_delta_changes_only_what_it_names(cache: SvidCache, authority: TestAuthority) -> None:
    cache.apply_entries([entry("a", "/a"), entry("b", "/b"), entry("c", "/c")], revision=4)
    issue(cache, authority)
    kept = {s.spiffe_id: s.serial for s in cache.svids_for(UID)}
    changed = dataclasses.replace(entry("b", "/b"), hint="new hint")
    cache.apply_entry_delta([changed, entry("d", "/d")], ["a"], revision=7)
    assert held(cache) == {"b": "new hint", "c": "", "d": ""}
    assert cache._state.revision == 7
    # c did not change and b only changed its hint: both keep their SVIDs; d is due.
    served = {s.spiffe_id: s.serial for s in cache.svids_for(UID)}
    assert {str(k) for k in served} == {"spiffe://example.org/b", "spiffe://example.org/c"}
    assert all(served[k] == kept[k] for k in served)
    assert [i.entry.id for i in cache._due(cache._clock.now())] == ["d"]


def test_an_empty_delta_keeps_everything(cache: SvidCache, authority: TestAuthority) -> None:
    cache.apply_entries([entry("a", "/a")], revision=4)
    issue(cache, authority)
    before = cache._state
    cache.apply_entry_delta([], [], revision=4)
    assert cache._state is before  # nothing changed, not even the revision
    cache.apply_entry_delta([], ["unknown"], revision=5)  # removing what we lack: harmless
    assert held(cache) == {"a": ""}
    assert cache._state.revision == 5
