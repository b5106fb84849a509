"""The clustered ``Store``: etcd v3, for several CA replicas sharing one trust domain.

Everything lives under ``/s2s/<trust-domain>/`` as JSON (the layout is in
docs/internal-contracts.md, "etcd key layout"). Every write is one etcd transaction whose
compares (``version == 0`` for creates, ``mod_revision == what was read`` for updates) make
compare-and-swaps and single use hold across replicas; a lost compare is re-read and re-checked,
so the loser sees the same ``Conflict``/``NotFound`` it would have seen had it come second.

A topic's revision is the etcd ``mod_revision`` of ``topics/<topic>``, which every transaction
that changes the topic also writes: it never decreases and survives restarts. ``wait_for_change``
is woken by a watch on ``topics/`` (resumed after disconnects) plus a slow re-read.

Expiring records (join tokens, revocations, issued serials) ride on leases grouped by expiry
bucket (one lease per ``lease_bucket`` of expiry instants): etcd itself drops them about
``lease_grace`` after they expire, even if no CA runs ``prune``. ``prune(now)`` still removes them
on time. Lease deletions do not move topic revisions (watch the key prefix to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import (
    Conflict,
    InvalidConfig,
    InvalidRequest,
    InvalidSpiffeId,
    NotFound,
    StoreError,
)
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.base import ChangeNotifier, wait_for_revision
from s2s.store.codec import (
    FromJson,
    check_revision,
    check_text,
    decode_doc,
    encode_doc,
    revised,
)
from s2s.store.etcd_client import (
    EtcdClient,
    EtcdTls,
    KeyValue,
    LeaseNotFound,
    TxnResult,
    delete_op,
    get_op,
    mod_is,
    put_op,
    value_is,
    version_is,
)
from s2s.store.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityRecord,
    AuthorityState,
    IssuedSerial,
    JoinTokenRecord,
    PruneResult,
    Topic,
    check_aware,
)

__all__ = ["SCHEMA_VERSION", "EtcdStore"]

_T = TypeVar("_T")
SCHEMA_VERSION = 1
_APP = "s2s-ca-store"
_ATTEMPTS = 16  # optimistic retries of one call before giving up with Conflict
_MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL


class _Retry(Exception):
    """A transaction's compares failed: re-read and try again."""


class EtcdStore:
    """The etcd ``Store``. Create with ``await EtcdStore.open(endpoints, trust_domain=...)``."""

    def __init__(
        self,
        client: EtcdClient,
        trust_domain: TrustDomain,
        *,
        clock: Clock,
        lease_grace: dt.timedelta,
        lease_bucket: dt.timedelta,
        poll_interval: float,
        max_txn_ops: int,
    ) -> None:
        self._client: EtcdClient | None = client
        self._where = f"{client.where} /s2s/{trust_domain.name}/"
        self._prefix = f"/s2s/{trust_domain.name}/".encode()
        self._clock = clock
        self._grace = lease_grace.total_seconds()
        self._bucket = max(1, math.ceil(lease_bucket.total_seconds()))
        self._poll = poll_interval
        self._max_ops = max_txn_ops
        self._notifier = ChangeNotifier()
        self._leases: dict[int, asyncio.Future[int]] = {}  # bucket end (epoch s) -> lease id
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str],
        *,
        trust_domain: str | TrustDomain,
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
        clock: Clock | None = None,
        lease_grace: dt.timedelta = dt.timedelta(minutes=5),
        lease_bucket: dt.timedelta = dt.timedelta(minutes=1),
        poll_interval: float = 1.0,
        max_txn_ops: int = 128,
    ) -> EtcdStore:
        """Connect to ``endpoints`` (``"h:p,h:p"``) and open the store of ``trust_domain``.

        Raises ``StoreError`` if etcd cannot be reached, ``InvalidConfig`` if the prefix holds
        another application's data or a newer schema. ``max_txn_ops`` must not exceed etcd's
        ``--max-txn-ops`` (128 by default)."""
        try:
            td = (
                trust_domain
                if isinstance(trust_domain, TrustDomain)
                else TrustDomain.parse(trust_domain)
            )
        except InvalidSpiffeId as exc:
            raise InvalidConfig(f"the etcd store needs a valid trust domain: {exc}") from exc
        client = await EtcdClient.connect(endpoints, tls=tls, timeout=timeout)
        store = cls(
            client,
            td,
            clock=clock or SystemClock(),
            lease_grace=lease_grace,
            lease_bucket=lease_bucket,
            poll_interval=poll_interval,
            max_txn_ops=max(4, max_txn_ops),
        )
        try:
            await store._check_schema()
        except BaseException:
            await client.close()
            raise
        return store

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await client.close()

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing --

    @property
    def c(self) -> EtcdClient:
        if self._client is None:
            raise StoreError(f"the store {self._where} is closed")
        return self._client

    def key(self, *parts: str) -> bytes:
        """The etcd key of ``parts`` under this trust domain's prefix."""
        return self._prefix + "/".join(parts).encode()

    def _bump(self, *topics: Topic) -> list[Any]:
        return [put_op(self.key("topics", t.value), b"") for t in topics]

    async def _commit(
        self,
        compare: Sequence[Any],
        success: Sequence[Any],
        failure: Sequence[Any] = (),
        topics: Sequence[Topic] = (),
    ) -> TxnResult:
        result = await self.c.txn(compare, [*success, *self._bump(*topics)], failure)
        if result.succeeded:
            self._notifier.notify(topics)
        return result

    async def _unchanged(self, kv: KeyValue, ops: Sequence[Any], *topics: Topic) -> None:
        """Commit ``ops`` if ``kv`` is unchanged since it was read, else raise ``_Retry``."""
        if not (
            await self._commit([mod_is(kv.key, kv.mod_revision)], ops, topics=topics)
        ).succeeded:
            raise _Retry

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run a read-check-commit attempt until its compares hold (``_Retry`` if not)."""
        for _ in range(_ATTEMPTS):
            try:
                return await attempt()
            except _Retry:
                continue
            except LeaseNotFound:
                self._leases.clear()  # a cached lease expired: grant fresh ones and retry
        raise Conflict("the record kept changing under this call; retry")

    async def _read(self, key: bytes, parse: FromJson[_T], missing: str) -> tuple[_T, KeyValue]:
        kv = await self.c.get(key)
        if kv is None:
            raise NotFound(missing)
        return decode_doc(kv.value, parse), kv

    async def _list(self, prefix: str, parse: FromJson[_T]) -> list[_T]:
        kvs, _ = await self.c.get_prefix(self.key(prefix, ""))
        return [decode_doc(kv.value, parse) for kv in kvs]

    async def _lease_for(self, expires_at: dt.datetime) -> int:
        """A lease that outlives ``expires_at`` by about ``lease_grace``, shared per bucket.

        Concurrent callers for one bucket share one grant (a future), so a burst makes one lease."""
        bucket_end = math.ceil(expires_at.timestamp() / self._bucket) * self._bucket
        grant = self._leases.get(bucket_end)
        if grant is None or (grant.done() and (grant.cancelled() or grant.exception())):
            now = self._clock.now().timestamp()
            ttl = min(_MAX_LEASE_TTL, max(1, math.ceil(bucket_end - now + self._grace)))
            grant = self._leases[bucket_end] = asyncio.ensure_future(self.c.grant_lease(ttl))
            for end in [e for e in self._leases if e + self._grace < now]:
                del self._leases[end]
        return await asyncio.shield(grant)

    async def _check_schema(self) -> None:
        meta = self.key("meta")
        doc = json.dumps({"app": _APP, "schema": SCHEMA_VERSION}, sort_keys=True).encode()
        result = await self.c.txn([version_is(meta, 0)], [put_op(meta, doc)], [get_op(meta)])
        if result.succeeded:
            return
        found = result.ranged(0)
        try:
            info = json.loads(found.value) if found else {}
        except ValueError:
            info = {}
        if not isinstance(info, dict) or info.get("app") != _APP:
            raise InvalidConfig(f"etcd {self._where} holds another application's data")
        schema = info.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise InvalidConfig(
                f"the store {self._where} has schema version {schema}, newer than this s2s "
                f"understands ({SCHEMA_VERSION}): run a newer s2s"
            )

    # -- settings and generic state --

    async def get_setting(self, key: str) -> str | None:
        kv = await self.c.get(self.key("settings", key))
        return None if kv is None else kv.value.decode()

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> None:
        check_text("setting", key, value)
        k = self.key("settings", key)
        compare = [version_is(k, 0)] if only_if_absent else []
        if not (await self._commit(compare, [put_op(k, value.encode())])).succeeded:
            raise Conflict(f"setting {key!r} is already set")

    async def list_settings(self) -> Mapping[str, str]:
        prefix = self.key("settings", "")
        kvs, _ = await self.c.get_prefix(prefix)
        return {kv.key[len(prefix) :].decode(): kv.value.decode() for kv in kvs}

    async def get_state(self, key: str) -> str | None:
        kv = await self.c.get(self.key("state", key))
        return None if kv is None else kv.value.decode()

    async def cas_state(self, key: str, expected: str | None, new: str | None) -> None:
        check_text("state", key, new)
        k = self.key("state", key)
        compare = version_is(k, 0) if expected is None else value_is(k, expected.encode())
        op = delete_op(k) if new is None else put_op(k, new.encode())
        if not (await self._commit([compare], [op])).succeeded:
            raise Conflict(f"state {key!r} was changed by someone else (compare-and-swap lost)")

    # -- authorities --

    async def create_authority(self, record: AuthorityRecord) -> None:
        k = self.key("authorities", record.id)
        ops = [put_op(k, _doc(record))]
        if not (await self._commit([version_is(k, 0)], ops, topics=[Topic.AUTHORITIES])).succeeded:
            raise Conflict(f"authority {record.id} already exists")

    async def get_authority(self, authority_id: str) -> AuthorityRecord:
        return (await self._get_authority(authority_id))[0]

    async def _get_authority(self, authority_id: str) -> tuple[AuthorityRecord, KeyValue]:
        missing = f"no authority {authority_id!r}"
        k = self.key("authorities", authority_id)
        return await self._read(k, AuthorityRecord.from_json, missing)

    async def list_authorities(
        self, *, kind: AuthorityKind | None = None, owner: str | None = None
    ) -> tuple[AuthorityRecord, ...]:
        wanted = None if kind is None else AuthorityKind(kind)
        found = await self._list("authorities", AuthorityRecord.from_json)
        return tuple(
            sorted(
                (
                    r
                    for r in found
                    if (wanted is None or r.kind == wanted) and (owner is None or r.owner == owner)
                ),
                key=lambda r: (r.not_before, r.id),
            )
        )

    async def cas_authority_state(
        self, authority_id: str, expected: AuthorityState, new: AuthorityState
    ) -> AuthorityRecord:
        expected, new = AuthorityState(expected), AuthorityState(new)

        async def attempt() -> AuthorityRecord:
            record, kv = await self._get_authority(authority_id)
            if record.state != expected:
                raise Conflict(
                    f"authority {authority_id} is {record.state}, not {expected}: "
                    f"it cannot move to {new}"
                )
            moved = dataclasses.replace(record, state=new)
            ops = [put_op(kv.key, _doc(moved))]
            await self._unchanged(kv, ops, Topic.AUTHORITIES)
            return moved

        return await self._retrying(attempt)

    async def delete_authority(self, authority_id: str) -> None:
        async def attempt() -> bool:
            _, kv = await self._get_authority(authority_id)
            ops = [delete_op(kv.key)]
            await self._unchanged(kv, ops, Topic.AUTHORITIES)
            return True

        await self._retrying(attempt)

    # -- registration entries --

    def _entry_index(self, entry: RegistrationEntry) -> bytes:
        doc = entry.to_json()
        unique = json.dumps([doc["spiffe_id"], doc["parent_id"], doc["selectors"]])
        return self.key("entry-keys", hashlib.sha256(unique.encode()).hexdigest())

    async def _get_entry(self, entry_id: str) -> tuple[RegistrationEntry, KeyValue]:
        missing = f"no registration entry {entry_id!r}"
        return await self._read(self.key("entries", entry_id), RegistrationEntry.from_json, missing)

    def _key_taken(self, entry: RegistrationEntry, holder: KeyValue | None) -> Conflict | None:
        if holder is None or holder.value.decode() == entry.id:
            return None
        return Conflict(
            f"entry {holder.value.decode()} already has this SPIFFE ID, parent ID and selectors "
            f"({entry.spiffe_id})"
        )

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        stored = dataclasses.replace(entry, revision=1)
        k, index = self.key("entries", entry.id), self._entry_index(entry)

        async def attempt() -> RegistrationEntry:
            compare = [version_is(k, 0), version_is(index, 0)]
            ops = [put_op(k, _doc(stored)), put_op(index, entry.id.encode())]
            result = await self._commit(compare, ops, [get_op(k), get_op(index)], [Topic.ENTRIES])
            if result.succeeded:
                return stored
            if result.ranged(0) is not None:
                raise Conflict(f"entry {entry.id} already exists")
            taken = self._key_taken(entry, result.ranged(1))
            if taken is not None:
                raise taken
            raise _Retry

        return await self._retrying(attempt)

    async def update_entry(
        self, entry: RegistrationEntry, *, expected_revision: int
    ) -> RegistrationEntry:
        async def attempt() -> RegistrationEntry:
            current, kv = await self._get_entry(entry.id)
            stored = revised(f"entry {entry.id}", current, entry, expected_revision)
            old, new = self._entry_index(current), self._entry_index(stored)
            compare = [mod_is(kv.key, kv.mod_revision)]
            ops = [put_op(kv.key, _doc(stored))]
            if new != old:
                compare.append(version_is(new, 0))
                ops += [delete_op(old), put_op(new, entry.id.encode())]
            result = await self._commit(compare, ops, [get_op(new)], [Topic.ENTRIES])
            if result.succeeded:
                return stored
            taken = self._key_taken(entry, result.ranged(0))
            if taken is not None:
                raise taken
            raise _Retry

        return await self._retrying(attempt)

    async def delete_entry(
        self, entry_id: str, *, expected_revision: int | None = None
    ) -> RegistrationEntry:
        async def attempt() -> RegistrationEntry:
            current, kv = await self._get_entry(entry_id)
            if expected_revision is not None:
                check_revision(f"entry {entry_id}", current.revision, expected_revision)
            ops = [delete_op(kv.key), delete_op(self._entry_index(current))]
            await self._unchanged(kv, ops, Topic.ENTRIES)
            return current

        return await self._retrying(attempt)

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        return (await self._get_entry(entry_id))[0]

    async def list_entries(
        self, *, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        found = await self._list("entries", RegistrationEntry.from_json)
        return tuple(
            sorted(
                (
                    e
                    for e in found
                    if (parent_id is None or e.parent_id == parent_id)
                    and (spiffe_id is None or e.spiffe_id == spiffe_id)
                ),
                key=lambda e: e.id,
            )
        )

    # -- agents --

    async def _get_agent(self, spiffe_id: SpiffeId) -> tuple[AgentRecord, KeyValue]:
        k = self.key("agents", str(spiffe_id))
        return await self._read(k, AgentRecord.from_json, f"no attested agent {spiffe_id}")

    async def create_agent(self, record: AgentRecord) -> AgentRecord:
        stored = dataclasses.replace(record, revision=1)
        k = self.key("agents", str(record.spiffe_id))
        ops = [put_op(k, _doc(stored))]
        if not (await self._commit([version_is(k, 0)], ops, topics=[Topic.AGENTS])).succeeded:
            raise Conflict(f"agent {record.spiffe_id} already exists")
        return stored

    async def get_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        return (await self._get_agent(spiffe_id))[0]

    async def list_agents(self) -> tuple[AgentRecord, ...]:
        found = await self._list("agents", AgentRecord.from_json)
        return tuple(sorted(found, key=lambda a: str(a.spiffe_id)))

    async def update_agent(self, record: AgentRecord, *, expected_revision: int) -> AgentRecord:
        async def attempt() -> AgentRecord:
            current, kv = await self._get_agent(record.spiffe_id)
            stored = revised(f"agent {record.spiffe_id}", current, record, expected_revision)
            ops = [put_op(kv.key, _doc(stored))]
            await self._unchanged(kv, ops, Topic.AGENTS)
            return stored

        return await self._retrying(attempt)

    async def delete_agent(self, spiffe_id: SpiffeId) -> AgentRecord:
        async def attempt() -> AgentRecord:
            current, kv = await self._get_agent(spiffe_id)
            ops = [delete_op(kv.key)]
            await self._unchanged(kv, ops, Topic.AGENTS)
            return current

        return await self._retrying(attempt)

    # -- join tokens: join-tokens/<hash hex> holds the record, join-token-ids/<id> the hash --

    async def create_join_token(self, record: JoinTokenRecord) -> None:
        by_hash = self.key("join-tokens", record.token_hash.hex())
        by_id = self.key("join-token-ids", record.id)

        async def attempt() -> None:
            lease = await self._lease_for(record.expires_at)
            ops = [
                put_op(by_hash, _doc(record), lease=lease),
                put_op(by_id, record.token_hash.hex().encode(), lease=lease),
            ]
            if not (
                await self._commit([version_is(by_hash, 0), version_is(by_id, 0)], ops)
            ).succeeded:
                raise Conflict(f"join token {record.id} (or its hash) already exists")

        await self._retrying(attempt)

    async def consume_join_token(self, token_hash: bytes, *, now: dt.datetime) -> JoinTokenRecord:
        check_aware("time", now)
        if not isinstance(token_hash, bytes):
            raise InvalidRequest("a join token hash must be bytes")
        k = self.key("join-tokens", token_hash.hex())

        async def attempt() -> JoinTokenRecord:
            record, kv = await self._read(
                k, JoinTokenRecord.from_json, "join token is unknown or was already used"
            )
            ops = [delete_op(k), delete_op(self.key("join-token-ids", record.id))]
            await self._unchanged(kv, ops)
            return record

        record = await self._retrying(attempt)  # an expired token is used up as well
        if record.expires_at <= now:
            raise NotFound(f"join token {record.id} expired at {record.expires_at.isoformat()}")
        return record

    # -- revocations: revoked/<kind>/<value> --

    async def add_revocation(self, record: RevocationRecord) -> bool:
        k = self.key("revoked", str(record.kind), record.value)

        async def attempt() -> bool:
            kv = await self.c.get(k)
            merged = record
            if kv is not None:
                existing = decode_doc(kv.value, RevocationRecord.from_json)
                merged = existing.merged(record)
                if merged == existing:
                    return False
            compare = version_is(k, 0) if kv is None else mod_is(k, kv.mod_revision)
            ops = [put_op(k, _doc(merged), lease=await self._lease_for(merged.expires_at))]
            result = await self._commit([compare], ops, topics=[Topic.REVOCATIONS])
            if not result.succeeded:
                raise _Retry
            return True

        return await self._retrying(attempt)

    async def get_revocation(self, kind: RevocationKind, value: str) -> RevocationRecord:
        k = self.key("revoked", str(kind), value)
        missing = f"no revocation record for {kind} {value!r}"
        return (await self._read(k, RevocationRecord.from_json, missing))[0]

    async def list_revocations(self) -> tuple[RevocationRecord, ...]:
        found = await self._list("revoked", RevocationRecord.from_json)
        return tuple(sorted(found, key=lambda r: (str(r.kind), r.value)))

    # -- issued serials: issued/<serial as 40 hex digits> --

    async def add_issued(self, records: Sequence[IssuedSerial]) -> None:
        serials = [r.serial for r in records]
        if len(set(serials)) != len(serials):
            raise Conflict("a serial appears twice in one batch for the issued index")
        size = self._max_ops
        written: list[bytes] = []
        try:
            for start in range(0, len(records), size):
                written += await self._add_issued_chunk(records[start : start + size])
        except BaseException:
            for start in range(0, len(written), size):  # undo earlier chunks: all or nothing
                with contextlib.suppress(StoreError):
                    await self.c.txn([], [delete_op(k) for k in written[start : start + size]])
            raise

    async def _add_issued_chunk(self, chunk: Sequence[IssuedSerial]) -> list[bytes]:
        keys = [self.key("issued", f"{r.serial:040x}") for r in chunk]

        async def attempt() -> list[bytes]:
            ops = [
                put_op(k, _doc(r), lease=await self._lease_for(r.not_after))
                for k, r in zip(keys, chunk, strict=True)
            ]
            compare = [version_is(k, 0) for k in keys]
            result = await self._commit(compare, ops, [get_op(k) for k in keys])
            if result.succeeded:
                return keys
            for i, r in enumerate(chunk):
                if result.ranged(i) is not None:
                    raise Conflict(f"serial {r.serial:x} is already in the issued index")
            raise _Retry

        return await self._retrying(attempt)

    async def get_issued(self, serial: int) -> IssuedSerial:
        k = self.key("issued", f"{serial:040x}")
        missing = f"serial {serial:x} is not in the issued index"
        return (await self._read(k, IssuedSerial.from_json, missing))[0]

    async def list_issued(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        agent_id: SpiffeId | None = None,
        issuer_id: str | None = None,
    ) -> tuple[IssuedSerial, ...]:
        found = await self._list("issued", IssuedSerial.from_json)  # keys are in serial order
        return tuple(
            r
            for r in found
            if (spiffe_id is None or r.spiffe_id == spiffe_id)
            and (agent_id is None or r.agent_id == agent_id)
            and (issuer_id is None or r.issuer_id == issuer_id)
        )

    # -- maintenance and change notification --

    async def prune(self, now: dt.datetime) -> PruneResult:
        check_aware("time", now)
        counts: dict[str, int] = {}
        tokens = await self._expired("join-tokens", JoinTokenRecord.from_json, now)
        counts["join_tokens"] = await self._delete_unchanged(
            [(kv, [self.key("join-token-ids", r.id)]) for r, kv in tokens], None
        )
        for prefix, field, parse, topic in (
            ("revoked", "revocations", RevocationRecord.from_json, Topic.REVOCATIONS),
            ("issued", "issued", IssuedSerial.from_json, None),
            ("agents", "agents", AgentRecord.from_json, Topic.AGENTS),
            ("authorities", "authorities", AuthorityRecord.from_json, Topic.AUTHORITIES),
        ):
            expired = await self._expired(prefix, parse, now)
            counts[field] = await self._delete_unchanged([(kv, []) for _, kv in expired], topic)
        return PruneResult(**counts)

    async def _expired(
        self, prefix: str, parse: FromJson[Any], now: dt.datetime
    ) -> list[tuple[Any, KeyValue]]:
        kvs, _ = await self.c.get_prefix(self.key(prefix, ""))
        records = [(decode_doc(kv.value, parse), kv) for kv in kvs]
        return [(r, kv) for r, kv in records if _expiry(r) <= now]

    async def _delete_unchanged(
        self, groups: list[tuple[KeyValue, list[bytes]]], topic: Topic | None
    ) -> int:
        """Delete each record (and its extra keys) unless it changed since read; count them."""
        topics = [] if topic is None else [topic]
        per_chunk = max(1, (self._max_ops - 1) // 2)
        deleted = 0
        for start in range(0, len(groups), per_chunk):
            chunk = groups[start : start + per_chunk]
            compare = [mod_is(kv.key, kv.mod_revision) for kv, _ in chunk]
            ops = [delete_op(k) for kv, extra in chunk for k in (kv.key, *extra)]
            if (await self._commit(compare, ops, topics=topics)).succeeded:
                deleted += len(chunk)
                continue
            for kv, extra in chunk:  # one changed meanwhile: the others go one by one
                ops = [delete_op(k) for k in (kv.key, *extra)]
                result = await self._commit([mod_is(kv.key, kv.mod_revision)], ops, topics=topics)
                deleted += result.succeeded
        return deleted

    async def revision(self, topic: Topic) -> int:
        kv = await self.c.get(self.key("topics", Topic(topic).value))
        return 0 if kv is None else kv.mod_revision

    async def wait_for_change(self, topic: Topic, after: int, timeout: float) -> int:
        topic = Topic(topic)
        self._follow_topics(self.c)
        last = after

        async def read() -> int:
            nonlocal last
            try:
                last = await self.revision(topic)
            except StoreError:
                if self._client is None:
                    raise
                # etcd is unreachable: keep waiting; the watch resumes and wakes us when it is back
            return last

        return await wait_for_revision(
            read, self._notifier, topic, after, timeout, poll_interval=self._poll
        )

    def _follow_topics(self, client: EtcdClient) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._run_watch(client), name="s2s-etcd-topics")

    async def _run_watch(self, client: EtcdClient) -> None:
        prefix = self.key("topics", "")
        updates = client.follow_prefix(prefix)
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.snapshot is not None:
                    self._notifier.notify(list(Topic))  # first list, or a re-list: wake everyone
                    continue
                names = {e.kv.key[len(prefix) :].decode() for e in update.events}
                self._notifier.notify([t for t in Topic if t.value in names])


def _expiry(record: Any) -> dt.datetime:
    if isinstance(record, JoinTokenRecord | RevocationRecord):
        return record.expires_at
    return record.not_after  # type: ignore[no-any-return]


def _doc(record: Any) -> bytes:
    return encode_doc(record).encode()


if TYPE_CHECKING:
    from s2s.store.base import Store

    def _conforms(store: EtcdStore) -> Store:  # mypy proves EtcdStore implements Store
        return store
