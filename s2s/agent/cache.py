"""The SVID cache: what the Workload API serves (it implements ``IdentityProvider``).

Three loops keep it current (:meth:`SvidCache.run`):

* **entries** long-polls the CA for the entries parented by this agent and applies each answer
  at once: a new entry is scheduled for issuance, a changed one is re-issued (or just re-labelled
  when only selectors or hint changed), a deleted one disappears from every stream.
* **rotation** generates one key per entry locally (keys never leave the node), asks the CA for
  SVIDs in batches, and renews each at half-life with +-10% jitter. It also wakes at each expiry
  so that an SVID that could not be renewed leaves the streams the moment it expires.
* **bundle** re-reads the trust bundle periodically and whenever an issuance answer carries a
  sequence other than ours.

State is one immutable :class:`CacheState` that writers replace whole; readers take no lock.
The snapshot and the pure rules that move it on are in :mod:`s2s.agent.cache_state`.
When the CA is unreachable every loop backs off and retries while the cache keeps serving what it
holds until it expires; :meth:`health` then reports what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient, RetryDelays, sleep_backoff
from s2s.agent.ca_wire import AgentUnknown, EntriesResponse
from s2s.agent.cache_state import (
    CachedSvid,
    CacheState,
    carry_over,
    due_items,
    entry_order,
    event_times,
    missing_ids,
    renew_now,
    revoked_ids,
    serving,
    tainted_ids,
    trusted_bundles,
)
from s2s.agent.issuance import issued_item, merge_updates, new_key, request_svids
from s2s.agent.jwt_cache import JwtSvidCache
from s2s.agent.metrics import AgentMetrics
from s2s.agent.versioned import Versioned
from s2s.aio import wait_event, within
from s2s.core.backoff import early_answer_pause
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import Clock
from s2s.core.errors import S2SError, Unavailable
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationLookup, RevocationSet
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.log import F

__all__ = ["BATCH_SIZE", "SvidCache"]

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500  # the CA's MAX_BATCH
_EPOCH_RETRY: Final = timedelta(seconds=5)

UnknownHandler = Callable[[], Awaitable[None]]


class SvidCache(Versioned):
    """Follows this agent's entries and keeps a fresh SVID for each."""

    def __init__(
        self,
        *,
        client: CaClient,
        bundle: Bundle,
        clock: Clock,
        on_unknown: UnknownHandler | None = None,
        on_bundle: Callable[[Bundle], object] | None = None,
        metrics: AgentMetrics | None = None,
        rand: Callable[[], float] = random.random,
        keygen: Callable[[], ec.EllipticCurvePrivateKey] = new_key,
        entries_wait: float = 30.0,
        bundle_interval: float = 30.0,
        on_tainted: Callable[[frozenset[str]], Awaitable[object]] | None = None,
        revocations: RevocationLookup | None = None,
    ) -> None:
        """``revocations``: the agent's feed, consulted by ValidateJWTSVID (None: none)."""
        super().__init__()
        self._client = client
        self._clock = clock
        self._on_unknown = on_unknown
        self._on_bundle = on_bundle
        self._metrics = metrics or AgentMetrics()
        self._rand = rand
        self._keygen = keygen
        self._entries_wait = entries_wait
        self._bundle_interval = bundle_interval
        self._state = CacheState(bundles=BundleSet.of(bundle))
        self._wake_rotation = asyncio.Event()
        self._wake_bundle = asyncio.Event()
        self._jwt = JwtSvidCache(
            client=client,
            clock=clock,
            bundles=self,
            entry_for=self._entry_for,
            metrics=self._metrics,
            on_unknown=on_unknown,
            revocations=revocations,
        )
        self.synced = asyncio.Event()  # set after the first entries answer was applied
        self._crls: tuple[bytes, ...] = ()
        self._authorities_revision: int | None = None  # of the CA's last tainted list
        self._federated_revision: int | None = None  # of the CA's last federated bundles
        self._all_bundles: tuple[BundleSet | None, BundleSet | None, BundleSet] = (
            None,
            None,
            BundleSet(),
        )
        self._bundle_moved = asyncio.Event()  # re-poll at once to report the new sequence
        self._on_tainted = on_tainted  # the node: renew the agent SVID if a tainted CA signed it
        self._tainted_x509: frozenset[str] = frozenset()
        self._tainted_task: asyncio.Task[object] | None = None

    # -- IdentityProvider -------------------------------------------------------------------

    def svids_for(self, selectors: frozenset[Selector]) -> tuple[X509Svid, ...]:
        return serving(self._state.items, selectors, self._clock.now())

    def bundles(self) -> BundleSet:
        """Our bundle and every federated bundle this agent holds: one object until either
        changes, so the JWT validator's caches (keyed on the snapshot's identity) keep working."""
        state = self._state
        own, federated, merged = self._all_bundles
        if own is not state.bundles or federated is not state.federated:
            merged = trusted_bundles(state, None)
            self._all_bundles = (state.bundles, state.federated, merged)
        return merged

    def bundles_for(self, selectors: frozenset[Selector]) -> BundleSet:
        """Our bundle and the federated ones the caller's entries federate with."""
        return trusted_bundles(self._state, selectors)

    def current(self) -> BundleSet:
        """``BundleLookup`` for the JWT validators (a federated trust domain's JWT-SVIDs are
        checked with that trust domain's own keys only)."""
        return self.bundles()

    def crls(self) -> tuple[bytes, ...]:
        return self._crls

    def set_crls(self, crls: tuple[bytes, ...]) -> None:
        """Serve ``crls`` (the CA's DER CRLs) in the Workload API ``crl`` fields."""
        if crls != self._crls:
            self._crls = tuple(crls)
            self._replace(self._state)  # bumps the version: streams resend with the new CRLs

    def drop_revoked(self, revoked: RevocationSet) -> int:
        """Stop serving each SVID with a revoked certificate (leaf or CA); re-issue it at once.
        Cached JWT-SVIDs revoked by jti or SPIFFE ID are forgotten (minted afresh on demand).

        Serials only: the CA expands ID and agent revocations into serial records, and an ID
        record read against a backdated notBefore would also hit the fresh SVID.
        """
        self._jwt.drop_revoked(revoked)
        hit = revoked_ids(self._state.items, revoked)
        if hit:
            log.warning("agent.svids_revoked", extra={F.COUNT: len(hit)})
            items = tuple(
                CachedSvid(i.entry) if i.entry.id in hit else i for i in self._state.items
            )
            self._replace(dataclasses.replace(self._state, items=items))
            self._wake_rotation.set()
        return len(hit)

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: tuple[str, ...]) -> str:
        return await self._jwt.fetch(spiffe_id, audience)

    def validate_jwt(self, token: str, audience: str) -> tuple[SpiffeId, Mapping[str, Any]]:
        return self._jwt.validate(token, audience)

    def _entry_for(self, spiffe_id: SpiffeId) -> str | None:
        for item in self._state.items:
            if item.entry.spiffe_id == spiffe_id:
                return item.entry.id
        return None

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> CacheState:
        return self._state

    def set_bundle(self, bundle: Bundle) -> None:
        """Serve ``bundle`` for our trust domain (node callback after attestation/renewal)."""
        if self._state.bundles.get(bundle.trust_domain) != bundle:
            self._replace(
                dataclasses.replace(self._state, bundles=self._state.bundles.with_bundle(bundle))
            )
            self._bundle_moved.set()

    def health(self) -> tuple[bool, str]:
        """(healthy, why not): every entry has an unexpired SVID."""
        now = self._clock.now()
        if not self.synced.is_set():
            return False, "entries not synced with the CA yet"
        missing = missing_ids(self._state.items, now)
        if missing:
            return False, f"{len(missing)} entries have no valid SVID (e.g. {missing[0]})"
        return True, ""

    def _replace(self, state: CacheState) -> None:
        self._state = state
        self._bump()
        now = self._clock.now()
        held = [
            i.svid.not_after for i in state.items if i.svid is not None and i.svid.not_after > now
        ]
        self._metrics.svids_held.set(len(held))
        self._metrics.workload_svid_expiry.set(min(held).timestamp() if held else 0)
        self._metrics.entries.set(len(state.items))

    # -- loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the entries, rotation and bundle loops until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._entries_loop(), name="entries")
            group.create_task(self._rotation_loop(), name="rotation")
            group.create_task(self._expiry_loop(), name="expiry")
            group.create_task(self._bundle_loop(), name="bundle")

    async def _entries_loop(self) -> None:
        backoff = RetryDelays(rand=self._rand)
        loop = asyncio.get_running_loop()
        while True:
            wait = self._entries_wait if self.synced.is_set() else 0.0
            known = (self._state.revision, self._authorities_revision, self._federated_revision)
            sent = loop.time()
            try:
                answer = await self._poll_entries(wait)
            except S2SError as exc:
                await self._ca_failed("entries", exc, backoff)
                continue
            if answer is None:
                continue  # our bundle changed: poll again, reporting the new sequence
            backoff.reset()
            if not answer.delta:
                self.apply_entries(answer.entries, answer.revision)
            elif self._state.revision == known[0]:  # the list the delta was asked against
                self.apply_entry_delta(answer.entries, answer.removed, answer.revision)
            else:
                continue  # our list moved meanwhile: ask again
            self._follow_authorities(answer)
            self.apply_federated(answer.federated_bundles, answer.federated_revision)
            changed = (
                answer.revision,
                answer.authorities_revision,
                answer.federated_revision,
            ) != known
            pause = early_answer_pause(
                asked=wait, took=loop.time() - sent, changed=changed, rand=self._rand()
            )
            if pause:  # the CA answered without holding the poll: it is shedding long-polls
                await asyncio.sleep(pause)

    async def _poll_entries(self, wait: float) -> EntriesResponse | None:
        """One entries long-poll reporting our bundle sequence; None if the bundle changed
        meanwhile (the CA should hear the new sequence now, not after the poll)."""
        self._bundle_moved.clear()
        call = asyncio.ensure_future(
            self._client.entries(
                since=self._state.revision,
                wait=wait,
                bundle_sequence=self._own_bundle_sequence(),
                authorities=self._authorities_revision,
                federated=self._federated_revision,
                delta=self.synced.is_set(),
            )
        )
        moved = asyncio.ensure_future(self._bundle_moved.wait())
        try:
            await asyncio.wait({call, moved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
        return None if call.cancelled() else call.result()

    def _follow_authorities(self, answer: EntriesResponse) -> None:
        if answer.authorities_revision is not None:
            self._authorities_revision = answer.authorities_revision
        sequence = answer.bundle_sequence
        if sequence is not None and sequence != self._own_bundle_sequence():
            self._wake_bundle.set()
        self.apply_tainted(answer.tainted_x509, answer.tainted_jwt)
        if answer.tainted_x509 != self._tainted_x509 and self._on_tainted is not None:
            self._tainted_task = asyncio.ensure_future(self._on_tainted(answer.tainted_x509))
        self._tainted_x509 = answer.tainted_x509

    def apply_federated(self, bundles: BundleSet | None, revision: int | None) -> None:
        """Hold ``bundles`` as the federated bundles (None: the CA sent none; keep what we
        hold). A bundle that is gone from the answer is gone from every stream."""
        if revision is not None:
            self._federated_revision = revision
        if bundles is None:
            return
        own = self._client.trust_domain
        if own in bundles.trust_domains():
            log.warning("agent.federated_own_trust_domain", extra={F.TRUST_DOMAIN: str(own)})
            bundles = bundles.without(own)
        if bundles != self._state.federated:
            log.info("agent.federated_bundles", extra={F.COUNT: len(bundles)})
            self._replace(dataclasses.replace(self._state, federated=bundles))
            self._metrics.federated_bundles.set(len(bundles))

    def apply_tainted(self, x509_ids: frozenset[str], jwt_kids: frozenset[str]) -> int:
        """Re-issue at once every SVID whose chain holds a tainted intermediate (served until
        the new one arrives) and forget JWT-SVIDs signed by a tainted key; returns the count."""
        dropped = self._jwt.drop_signed_by(jwt_kids)
        now = self._clock.now()
        hit = tainted_ids(self._state.items, x509_ids, now)
        if hit:
            items = renew_now(self._state.items, hit, now)
            self._state = dataclasses.replace(self._state, items=items)  # same SVIDs served
            self._wake_rotation.set()
        if hit or dropped:
            log.warning("agent.tainted_reissue", extra={F.COUNT: len(hit) + dropped})
        return len(hit) + dropped

    def apply_entries(self, entries: Iterable[RegistrationEntry], revision: int) -> None:
        """Adopt the CA's entry list (as of ``revision``): keep, re-label, re-issue or drop."""
        old = self._state.by_id()
        ordered = sorted(entries, key=entry_order)
        items = tuple(carry_over(old.get(e.id), e) for e in ordered)
        dropped = set(old) - {e.id for e in ordered}
        changed = dropped or any(old.get(i.entry.id) is None or old[i.entry.id] != i for i in items)
        self.synced.set()
        if dropped:
            self._jwt.keep_only(i.entry.spiffe_id for i in items)
            log.info("agent.entries_removed", extra={F.COUNT: len(dropped)})
        if changed or revision != self._state.revision:
            self._replace(dataclasses.replace(self._state, items=items, revision=revision))
            self._wake_rotation.set()

    def apply_entry_delta(
        self, changed: Iterable[RegistrationEntry], removed: Iterable[str], revision: int
    ) -> None:
        """Apply what changed since the list we hold: ``changed`` entries replace or join it,
        ``removed`` ids leave it; then as :meth:`apply_entries`."""
        entries = {item.entry.id: item.entry for item in self._state.items}
        for entry_id in removed:
            entries.pop(entry_id, None)
        entries |= {entry.id: entry for entry in changed}
        self.apply_entries(entries.values(), revision)

    async def _rotation_loop(self) -> None:
        backoff = RetryDelays(rand=self._rand)
        while True:
            due = self._due(self._clock.now())
            if due:
                try:
                    await self.issue(due)
                    backoff.reset()
                except S2SError as exc:
                    await self._ca_failed(
                        "x509", exc, backoff, remaining=_remaining(due, self._clock.now())
                    )
                continue
            await self._sleep_until_next_event()

    def _due(self, now: datetime) -> list[CachedSvid]:
        """Items to (re)issue now (see :func:`~s2s.agent.cache_state.due_items`)."""
        return due_items(self._state.items, now)

    async def _sleep_until_next_event(self) -> None:
        now = self._clock.now()
        times = [t for item in self._state.items for t in event_times(item) if t > now]
        delay = (min(times) - now).total_seconds() if times else 60.0
        self._wake_rotation.clear()
        await wait_event(self._wake_rotation, min(max(delay, 0.0), 60.0))

    async def _expiry_loop(self) -> None:
        """Push a fresh state to the streams the moment a held SVID expires (even while the
        rotation loop is backing off from an unreachable CA)."""
        while True:
            now = self._clock.now()
            ends = [
                i.svid.not_after for i in self._state.items if i.svid and i.svid.not_after > now
            ]
            delay = (min(ends) - now).total_seconds() + 0.001 if ends else 60.0
            version = self._version
            try:
                await within(self.wait_for_update(version), min(delay, 60.0))
            except TimeoutError:
                if ends and self._clock.now() >= min(ends):
                    log.warning("agent.svid_expired", extra={F.COUNT: 1})
                    self._replace(self._state)

    async def issue(self, items: list[CachedSvid]) -> None:
        """Get SVIDs for ``items`` (new keys, batched CSRs) and store them."""
        for start in range(0, len(items), BATCH_SIZE):
            batch = items[start : start + BATCH_SIZE]
            keys, results, sequence = await request_svids(self._client, batch, self._keygen)
            self._store_results(batch, keys, results)
            if sequence is not None and sequence != self._own_bundle_sequence():
                self._wake_bundle.set()

    def _store_results(
        self, batch: list[CachedSvid], keys: list[ec.EllipticCurvePrivateKey], results: Any
    ) -> None:
        now = self._clock.now()
        updates: dict[str, CachedSvid] = {}
        issued = 0
        for item, key, result in zip(batch, keys, results, strict=True):
            svid = result.svid
            if svid is None or result.entry_id != item.entry.id:
                error = result.error or S2SError("not issued")
                log.warning(
                    "agent.svid_refused",
                    extra={F.ENTRY_ID: item.entry.id, F.ERROR: f"{error.code}: {error}"},
                )
                self._metrics.count_ca_error("x509", error.code)
                updates[item.entry.id] = dataclasses.replace(item, retry_at=now + _EPOCH_RETRY)
                continue
            done = issued_item(item, key, svid, now=now, rand=self._rand)
            if done is None:
                self._metrics.count_ca_error("x509", "mismatch")
                updates[item.entry.id] = dataclasses.replace(item, retry_at=now + _EPOCH_RETRY)
                continue
            updates[item.entry.id] = done
            issued += 1
        current = self._state
        self._replace(dataclasses.replace(current, items=merge_updates(current.items, updates)))
        self._metrics.count_rotation("x509", issued)
        if issued:
            log.info("agent.svids_issued", extra={F.COUNT: issued})

    async def _bundle_loop(self) -> None:
        backoff = RetryDelays(rand=self._rand)
        while True:
            self._wake_bundle.clear()
            await wait_event(self._wake_bundle, self._bundle_interval)
            while True:
                try:
                    bundle = await self._client.fetch_bundle()
                    break
                except S2SError as exc:
                    await self._ca_failed("bundle", exc, backoff)
            backoff.reset()
            if self._on_bundle is not None:
                self._on_bundle(bundle)  # the node persists it and calls set_bundle
            else:
                self.set_bundle(bundle)

    def _own_bundle_sequence(self) -> int | None:
        """The sequence of our trust domain's bundle (not a federated one's)."""
        bundle = self._state.bundles.get(self._client.trust_domain)
        return None if bundle is None else bundle.sequence

    async def _ca_failed(
        self, op: str, exc: S2SError, backoff: RetryDelays, *, remaining: float | None = None
    ) -> None:
        self._metrics.count_ca_error(op, exc.code)
        if isinstance(exc, AgentUnknown) and self._on_unknown is not None:
            await self._on_unknown()
            return
        if not isinstance(exc, Unavailable):
            log.error("agent.ca_refused", extra={F.LOOP: op, F.ERROR: f"{exc.code}: {exc}"})
        else:
            log.warning("agent.ca_unavailable", extra={F.LOOP: op, F.ERROR: str(exc)})
        await sleep_backoff(backoff, remaining=remaining)


def _remaining(items: list[CachedSvid], now: datetime) -> float | None:
    """Seconds until the first held SVID among ``items`` expires (None: none held yet)."""
    ends = [i.svid.not_after for i in items if i.svid is not None]
    return None if not ends else max(0.0, (min(ends) - now).total_seconds())
