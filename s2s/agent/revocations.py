"""The agent follows revocations: revoked SVIDs leave its streams at once, CRLs reach workloads.

Revocation fan-out: one watcher per node, not one per service. The agent follows a revocation feed
(the CA long-poll by default, :class:`~s2s.verifier.feeds_ca.CaRevocationFeed` over the agent's
own mTLS :class:`CaClient`; or etcd, :class:`~s2s.verifier.feeds_etcd.EtcdRevocationFeed`, when
configured). On every new set it drops each SVID whose leaf or CA certificate is revoked, so the
rotation loop re-issues it at once, and it re-fetches the CA's signed CRLs (DER, one per issuing
CA) for the Workload API ``crl`` fields, so a verifier whose source is the agent takes
revocations from there. Only a set with a newly revoked serial wakes a CRL fetch (a revoked JWT id
or SPIFFE ID changes no CRL; the serials of a SPIFFE ID's certificates follow its record). CRLs
are also re-fetched every ``crl_interval`` seconds (the CA regenerates them before their
nextUpdate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from cryptography import x509

from s2s.agent.ca_client import CaClient, RetryDelays, sleep_backoff
from s2s.agent.cache import SvidCache
from s2s.aio import wait_event
from s2s.core.errors import S2SError
from s2s.core.revocation import RevocationKind, RevocationSet
from s2s.log import F
from s2s.verifier.feeds import RevocationFeed

__all__ = ["RevocationFollower"]

log = logging.getLogger(__name__)

CRL_RETRY_START = 0.05
CRL_RETRIES = 7


class RevocationFollower:
    """Runs ``feed`` and applies each new set to ``cache``; keeps the cache's CRLs current."""

    def __init__(
        self,
        *,
        feed: RevocationFeed,
        cache: SvidCache,
        client: CaClient,
        crl_interval: float = 300.0,
        backoff: RetryDelays | None = None,
    ) -> None:
        self.feed = feed
        self.cache = cache
        self.client = client
        self.crl_interval = crl_interval
        self._backoff = backoff or RetryDelays()
        self._crl_wake = asyncio.Event()
        self._listed: frozenset[int] = frozenset()  # revoked serials in the feed's last set
        self._wanted: frozenset[int] = frozenset()  # new ones the CRLs are still to list
        self.crl_fetches = 0

    async def run(self) -> None:
        """The feed and the CRL loop, until cancelled."""
        unsubscribe = self.feed.subscribe(self._changed)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.feed.run(), name="revocations-feed")
                group.create_task(self._crl_loop(), name="revocations-crl")
        finally:
            unsubscribe()

    def _changed(self, revoked: RevocationSet) -> None:
        serials = frozenset(
            int(r.value, 16) for r in revoked.records() if r.kind is RevocationKind.SERIAL
        )
        new = serials - self._listed
        self._wanted = (self._wanted | new) & serials
        self._listed = serials
        dropped = self.cache.drop_revoked(revoked)
        if dropped:
            log.warning("agent.revoked_svids_replaced", extra={F.COUNT: dropped})
        if new:  # a JWT id, a SPIFFE ID or an expired record changes no CRL the agent needs now
            self._crl_wake.set()

    async def _crl_loop(self) -> None:
        expect_change = False
        while True:
            self._crl_wake.clear()
            await self._refresh_crls(expect_change=expect_change)
            expect_change = await wait_event(self._crl_wake, self.crl_interval)

    async def _refresh_crls(self, *, expect_change: bool) -> None:
        """Fetch the CRLs; after a revocation, ask again a few times (50 ms doubling, ~3 s in
        all) until they list each serial newly revoked in the feed: the CA rebuilds them just
        after the record is stored, so a fetch right after the feed saw the record can still get
        the previous ones. (That the bytes changed does not tell: CRLs are also re-signed for a
        new intermediate or by another replica, without the new record.)"""
        delay = CRL_RETRY_START
        asked = self._wanted
        listed: frozenset[int] = frozenset()
        for attempt in range(CRL_RETRIES):
            crls = await self._fetch_crls()
            self.cache.set_crls(crls)
            listed = listed_serials(crls)
            if not expect_change or self._wanted <= listed:
                break
            if attempt + 1 < CRL_RETRIES:
                await asyncio.sleep(delay)
                delay *= 2
        # Listed, or given up on (a serial of an issuer the CA no longer signs CRLs for); what
        # the feed added meanwhile is still asked for.
        self._wanted = self._wanted - asked - listed

    async def _fetch_crls(self) -> tuple[bytes, ...]:
        while True:
            try:
                crls = await self.client.fetch_crls()
            except S2SError as exc:
                log.warning("agent.crl_fetch_failed", extra={F.ERROR: f"{exc.code}: {exc}"})
                await sleep_backoff(self._backoff)
                continue
            self._backoff.reset()
            self.crl_fetches += 1
            return crls


def listed_serials(crls: Iterable[bytes]) -> frozenset[int]:
    """The serials the DER CRLs ``crls`` list (a CRL that does not parse lists none)."""
    out: set[int] = set()
    for der in crls:
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError:
            continue
        out.update(entry.serial_number for entry in crl)
    return frozenset(out)
