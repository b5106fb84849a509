"""A revocation feed that long-polls the CA (``GET /v1/revocations?since=<rev>&wait=<s>``).

For a CA on its embedded (SQLite) store, where there is no etcd to watch. Each answer carries the
whole current set and the store revision it reflects (``{"revision": N, "records": [...]}``); the
CA holds a request while ``N == since`` for up to ``wait`` seconds. A poller may ask for deltas
(``&delta=1``, as :class:`HttpsRevocationPoller` does): the CA then answers only what changed
since the feed's revision when it still knows (``{"delta": true, "base": since, ...}``), and the
feed derives its new set from the last one in O(changes); a delta from another base is refused
(the set is kept, the whole set asked for next), and so is a delta that names another store
epoch than the set held (``"epoch"``: revisions of two stores can be equal, so a CA moved to
another store could otherwise answer a delta against the wrong base). Every answer, changed or not,
proves the set complete as of the instant the request was sent, so ``last_update`` moves on at
least every ``wait`` seconds while the CA is reachable (``wait`` is kept below half the staleness
limit). Failures are retried with capped exponential backoff and jitter; the last set is kept and
ages until ``current()`` fails closed.

The transport is a :class:`RevocationPoller`. :class:`HttpsRevocationPoller` is the verifier's:
HTTPS to the CA URLs in turn, presenting the verifier's own SVID, the CA's chain verified to our
bundle and its SPIFFE ID required to be ``spiffe://<td>/s2s/ca/<replica>`` (the peer check of
:mod:`s2s.verifier.tls`) before any byte is sent. The agent plugs its own CA client in instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from s2s.core.backoff import Backoff, early_answer_pause
from s2s.core.clock import Clock
from s2s.core.errors import InvalidRequest, S2SError, Unavailable
from s2s.core.reserved import is_ca_id
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.verifier.authorize import authorize_if
from s2s.verifier.feeds import DEFAULT_MAX_STALENESS, RevocationFeed
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.tls import SpiffeSSLContext, client_context
from s2s.verifier.x509context import X509SourceLike

__all__ = [
    "CaRevocationFeed",
    "HttpsRevocationPoller",
    "RevocationPage",
    "RevocationPoller",
    "parse_revocation_page",
]

log = logging.getLogger(__name__)

MAX_WAIT = 60.0  # the CA caps a long-poll at 60 s
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # ~300k records
BIG = 1024 * 1024  # answers above this are decoded in a thread
BIG_SET = 5000  # records; above this, parsing and building run in a thread
_EPOCH = re.compile(r"([0-9a-f]{1,64})?")  # the store's epoch; absent from older CAs


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(256 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class RevocationPage:
    """One answer of the CA: the whole set at store ``revision``; or, when ``delta``, what
    changed from revision ``base`` to ``revision``: ``records`` put in (replacing a record of the
    same key) and the records of ``removed`` gone. ``epoch`` names the store the revisions are
    of: a delta applies only to a set of the same epoch."""

    revision: int
    records: tuple[RevocationRecord, ...]
    delta: bool = False
    base: int = -1
    removed: tuple[tuple[RevocationKind, str, str], ...] = ()
    epoch: str = ""  # the CA store's epoch ("" from a CA that names none)


class RevocationPoller(Protocol):
    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        """The CA's set; held up to ``wait`` s while its revision equals ``since``.
        Raises :class:`Unavailable` (or another S2SError) when there is no answer to use."""
        ...


def parse_revocation_page(data: object) -> RevocationPage:
    """``{"revision": int >= 0, "records": [RevocationRecord JSON]}``, or a delta ``{"delta":
    true, "base": int >= 0, "revision": int >= 0, "added": [RevocationRecord JSON], "removed":
    [{"kind", "value", "issuer"?}]}``, either with an optional ``"epoch"`` (the store's id);
    InvalidRequest if bad."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("the revocations answer is not a JSON object")
    revision = _revision(data, "revision")
    epoch = _epoch(data)
    if "delta" in data:
        if data["delta"] is not True:
            raise InvalidRequest("the revocations answer has a delta field that is not true")
        added, removed = data.get("added"), data.get("removed")
        if not isinstance(added, list) or not isinstance(removed, list):
            raise InvalidRequest("the revocations delta has no added and removed lists")
        return RevocationPage(
            revision,
            tuple(RevocationRecord.from_json(r) for r in added),
            delta=True,
            base=_revision(data, "base"),
            removed=tuple(_removed_key(k) for k in removed),
            epoch=epoch,
        )
    records = data.get("records")
    if not isinstance(records, list):
        raise InvalidRequest("the revocations answer has no records list")
    return RevocationPage(
        revision, tuple(RevocationRecord.from_json(r) for r in records), epoch=epoch
    )


def _epoch(data: Mapping[str, Any]) -> str:
    value = data.get("epoch", "")
    if not isinstance(value, str) or _EPOCH.fullmatch(value) is None:
        raise InvalidRequest("the revocations answer has an epoch that is not 1 to 64 hex digits")
    return value


def _revision(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"the revocations answer has no valid {name}")
    return value


def _removed_key(item: object) -> tuple[RevocationKind, str, str]:
    """A removed record's key; checked like a record's (kind, value, issuer)."""
    if not isinstance(item, Mapping):
        raise InvalidRequest("a removed revocation must be a JSON object")
    at = "1970-01-01T00:00:00+00:00"
    probe = {**item, "revoked_at": at, "expires_at": at, "reason": ""}
    return RevocationRecord.from_json(probe).key


class CaRevocationFeed(RevocationFeed):
    """Follows the CA's revocations through ``poller`` (see the module docstring)."""

    name = "CA revocation feed"

    def __init__(
        self,
        poller: RevocationPoller,
        *,
        wait: float = 30.0,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        clock: Clock | None = None,
        backoff_initial: float = 0.05,
        backoff_cap: float = 2.0,
        rand: Callable[[], float] = random.random,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(max_staleness=max_staleness, clock=clock)
        self.poller = poller
        self.wait = max(0.0, min(wait, MAX_WAIT, self.max_staleness / 2))
        # An initial step above the cap means every delay is about the cap.
        initial = min(backoff_initial, backoff_cap)
        self._backoff = Backoff.equal_jitter(initial=initial, cap=backoff_cap)
        self._rand = rand
        self._on_close = on_close
        self.revision = -1  # the CA store revision the set reflects (-1: none yet)
        self.epoch = ""  # the epoch of the store that revision is of ("": not named)
        self._resync = False  # ask for the whole set next (after a delta that did not fit)
        self.polls = 0

    @property
    def lag_after(self) -> float:
        """One long-poll answer missed: the CA answers at least every ``wait`` seconds."""
        return min(self.max_staleness, self.wait + 10.0)

    @classmethod
    def over_https(
        cls,
        urls: str | Sequence[str],
        source: X509SourceLike,
        *,
        trust_domain: TrustDomain | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> CaRevocationFeed:
        """A feed polling the CA at ``urls`` over mTLS with ``source``'s SVID (verifier side)."""
        poller = HttpsRevocationPoller(urls, source, trust_domain=trust_domain, timeout=timeout)
        return cls(poller, on_close=poller.close, **kwargs)

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = self._now()
            sent = loop.time()
            try:
                since = -1 if self._resync else self.revision
                wait = self.wait if since >= 0 else 0.0
                page = await self.poller.fetch_revocations(since=since, wait=wait)
            except S2SError as exc:
                self._failed(str(exc))
                failures += 1
                delay = self._backoff.delay(failures, self._rand())  # from 2 * initial
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.polls += 1
            changed = page.revision != self.revision or not self.synced.is_set()
            if page.delta:
                if page.epoch != self.epoch:  # equal revisions of two stores: not one set
                    log.warning(
                        "revocations.store_epoch_changed",
                        extra={"feed": self.name, "epoch": page.epoch, "held": self.epoch},
                    )
                    self._resync = True  # next: the whole set
                    continue
                if page.base != self.revision or not self.synced.is_set():
                    self._failed(f"a delta from revision {page.base}, not {self.revision}")
                    self._resync = True  # next: the whole set
                    failures += 1
                    await asyncio.sleep(self._backoff.delay(failures, self._rand()))
                    continue
                if changed:
                    new = self.snapshot().with_changes(
                        page.records, page.removed, version=page.revision
                    )
                    self._publish(new)
                    self.revision = page.revision
            elif changed or page.epoch != self.epoch:
                if len(page.records) > BIG_SET:
                    new = await asyncio.to_thread(
                        RevocationSet.of, page.records, version=page.revision
                    )
                else:
                    new = RevocationSet.of(page.records, version=page.revision)
                self._publish(new)
                self.revision, self.epoch = page.revision, page.epoch
            self._resync = False
            self._confirm(started)
            pause = early_answer_pause(
                asked=wait, took=loop.time() - sent, changed=changed, rand=self._rand()
            )
            if pause:  # the CA answered without holding the poll: it is shedding long-polls
                await asyncio.sleep(pause)

    async def _closed(self) -> None:
        if self._on_close is not None:
            await self._on_close()


class HttpsRevocationPoller:
    """``GET /v1/revocations`` over HTTPS, the CA identified by its SPIFFE ID (mTLS)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        source: X509SourceLike,
        *,
        trust_domain: TrustDomain | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.urls = (urls,) if isinstance(urls, str) else tuple(urls)
        if not self.urls:
            raise InvalidRequest("the CA revocation feed needs at least one CA URL")
        self.trust_domain = trust_domain or source.current().default_svid.spiffe_id.trust_domain
        self._source = source
        self._timeout = timeout
        self._preferred = 0
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None

    def _is_ca(self, sid: SpiffeId) -> bool:
        return is_ca_id(sid, self.trust_domain)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._ssl is None:  # follows the source: rotation needs no new session
                # The CA's chain is checked against no revocations: this connection is how
                # revocations arrive, and a feed that refused its own CA would never recover.
                self._ssl = client_context(
                    self._source,
                    authorize=authorize_if(self._is_ca),
                    revocations=no_revocation_check(),
                )
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if isinstance(self._ssl, SpiffeSSLContext):
            self._ssl.s2s.close()  # stop following the source
        self._ssl = None

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        query = (
            {"since": str(since), "wait": f"{wait:g}", "delta": "1"}
            if since >= 0
            else {"wait": "0"}
        )
        failures: list[str] = []
        for step in range(len(self.urls)):
            index = (self._preferred + step) % len(self.urls)
            try:
                data = await self._get(self.urls[index], "/v1/revocations", query, wait)
            except Unavailable as exc:
                failures.append(str(exc))
                continue
            self._preferred = index
            try:
                if isinstance(data, Mapping) and len(data.get("records", ())) > BIG_SET:
                    return await asyncio.to_thread(parse_revocation_page, data)
                return parse_revocation_page(data)
            except InvalidRequest as exc:
                raise Unavailable(
                    f"{self.urls[index]} sent a bad revocations answer: {exc}"
                ) from exc
        raise Unavailable("no CA answered /v1/revocations: " + "; ".join(failures))

    async def _get(self, base: str, path: str, query: Mapping[str, str], wait: float) -> object:
        timeout = aiohttp.ClientTimeout(total=wait + self._timeout, sock_connect=self._timeout)
        try:
            async with self._client().get(base + path, params=query, timeout=timeout) as answer:
                raw = await _read_capped(answer.content, MAX_ANSWER_BYTES)
                status = answer.status
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise Unavailable(f"{base} is unreachable: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"{base} did not answer within {wait + self._timeout:g}s") from exc
        if raw is None:
            raise Unavailable(f"{base}{path}: the answer is larger than {MAX_ANSWER_BYTES} bytes")
        try:  # a big set (~150 bytes a record) is decoded off the loop
            data = await asyncio.to_thread(json.loads, raw) if len(raw) > BIG else json.loads(raw)
        except ValueError as exc:
            raise Unavailable(f"{base}{path} answered {status} with no JSON") from exc
        if status != 200:
            code = data.get("error", "?") if isinstance(data, dict) else "?"
            message = data.get("message", "") if isinstance(data, dict) else ""
            raise Unavailable(f"{base}{path} answered {status} {code}: {str(message)[:200]}")
        return data
