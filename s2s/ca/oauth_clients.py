"""OAuth client records in the store: one document (state key ``oauth/clients``) updated by
compare-and-swap, so both store backends (SQLite, etcd) hold them and replicas agree.

Every token, introspection and revocation request looks its client up, so while :meth:`follow`
runs (the app runs it among its loops) the parsed set is held in memory and a lookup makes no
store round trip: a change through this replica is installed at once (write-through), one through
another replica when the store reports it (a write bumps ``Topic.OAUTH_CLIENTS``: etcd's watch
within milliseconds, SQLite's poll within about a second). A client missing from the snapshot is
read through from the store, so a client created on another replica works at once. Until the
first load, and while :meth:`follow` is not running, every read goes to the store.

Secrets are generated here (256 random bits), returned once, and stored as SHA-256 hashes.
Rotation keeps the previous secret valid beside the new one until ``finish`` drops it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Final

from s2s.ca.audit import AuditLog
from s2s.ca.state_document import StateDocument
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidRequest, NotFound
from s2s.core.oauth import ClientRecord, hash_secret, new_secret, parse_scope
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = ["CLIENTS_STATE", "ClientRegistry"]

CLIENTS_STATE: Final = "oauth/clients"
MAX_CLIENTS: Final = 10_000
# One etcd request carries at most 1.5 MiB by default: the whole document must fit in one.
MAX_CLIENTS_BYTES: Final = 1 << 20
_Doc = Mapping[str, ClientRecord]


class ClientRegistry:
    """Create, read, update and delete OAuth clients."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        trust_domain: TrustDomain,
        entropy: Callable[[int], bytes] = os.urandom,
        audit: AuditLog | None = None,
        max_bytes: int = MAX_CLIENTS_BYTES,
    ) -> None:
        self._audit = audit
        self._store = store
        self._clock = clock
        self._td = trust_domain
        self._entropy = entropy
        self._doc = StateDocument[_Doc](
            store=store,
            key=CLIENTS_STATE,
            name="OAuth clients",
            max_bytes=max_bytes,
            empty={},
            decode=_decode,
            encode=_encode,
            topic=Topic.OAUTH_CLIENTS,
        )
        self._following = False  # the snapshot is current (follow() runs and has loaded it)

    async def follow(self, *, timeout: float = 30.0) -> None:
        """Load the clients, then reload them whenever the store's revision for them moves, and
        at least every ``timeout`` seconds (a writer that does not bump the revision, such as an
        older replica, is seen within it; the text is parsed again only when it changed).
        Runs until cancelled; a store error propagates (reads go to the store meanwhile)."""
        try:
            while True:
                generation = self._doc.generation
                revision = await self._store.revision(Topic.OAUTH_CLIENTS)
                await self._doc.read()
                if self._doc.generation != generation:
                    continue  # a write-through raced this read: read again
                self._following = True
                await self._store.wait_for_change(Topic.OAUTH_CLIENTS, revision, timeout)
        finally:
            self._following = False

    # -- reads -------------------------------------------------------------------------------

    async def get(self, client_id: str) -> ClientRecord:
        record = self._doc.snapshot[1].get(client_id) if self._following else None
        if record is None:  # not following yet, or not in the snapshot: ask the store
            _, doc = await self._doc.read()
            record = doc.get(client_id)
        if record is None:
            raise NotFound(f"no OAuth client {client_id[:200]!r}")
        return record

    async def list(self) -> tuple[ClientRecord, ...]:
        _, doc = await self._doc.read()
        return tuple(sorted(doc.values(), key=lambda r: r.client_id))

    # -- writes ------------------------------------------------------------------------------

    async def create(
        self,
        *,
        scopes: Iterable[str],
        audiences: Iterable[str],
        spiffe_id: str | None = None,
        client_id: str | None = None,
    ) -> tuple[ClientRecord, str | None]:
        """A new client: an SVID client (``spiffe_id``) or a secret client (``client_id``); the
        second value is the generated secret (shown once), None for an SVID client."""
        if (spiffe_id is None) == (client_id is None):
            raise InvalidRequest("give either spiffe_id (an SVID client) or client_id (a secret)")
        now = utc(self._clock.now())
        secret = None
        if spiffe_id is not None:
            sid = SpiffeId.parse(spiffe_id)
            if sid.trust_domain != self._td:
                raise InvalidRequest(f"{sid} is not in trust domain {self._td}")
            record = ClientRecord(
                client_id=str(sid), spiffe_id=sid, created_at=now, updated_at=now,
                scopes=_scopes(scopes), audiences=_audiences(audiences),
            )  # fmt: skip
        else:
            assert client_id is not None
            if client_id.startswith("spiffe://"):
                raise InvalidRequest("a secret client's client_id must not be a SPIFFE ID")
            secret = new_secret(self._entropy(32))
            record = ClientRecord(
                client_id=client_id, secret_hashes=(hash_secret(secret),), created_at=now,
                updated_at=now, scopes=_scopes(scopes), audiences=_audiences(audiences),
            )  # fmt: skip

        def add(doc: _Doc) -> tuple[_Doc, None]:
            if record.client_id in doc:
                raise Conflict(f"OAuth client {record.client_id} already exists")
            if len(doc) >= MAX_CLIENTS:
                raise Conflict(f"at most {MAX_CLIENTS} OAuth clients")
            return {**doc, record.client_id: record}, None

        await self._doc.update(add)
        self._audited("oauth_client.create", record)
        return record, secret

    def _audited(self, action: str, record: ClientRecord) -> None:
        """One audit line per change: the client, never a secret or its hash."""
        if self._audit is not None:
            self._audit.admin_change(action, target=record.client_id, spiffe_id=record.spiffe_id)

    async def update(
        self,
        client_id: str,
        *,
        scopes: Iterable[str] | None = None,
        audiences: Iterable[str] | None = None,
    ) -> ClientRecord:
        now = utc(self._clock.now())
        new_scopes = None if scopes is None else _scopes(scopes)
        new_auds = None if audiences is None else _audiences(audiences)
        return await self._change(
            "oauth_client.update",
            client_id,
            lambda r: replace(
                r,
                scopes=r.scopes if new_scopes is None else new_scopes,
                audiences=r.audiences if new_auds is None else new_auds,
                updated_at=now,
            ),
        )

    async def rotate_secret(
        self, client_id: str, *, finish: bool = False
    ) -> tuple[ClientRecord, str | None]:
        """Start a rotation (a new secret beside the newest old one; returns the new secret) or,
        with ``finish``, drop every secret but the newest."""
        now = utc(self._clock.now())
        secret = None if finish else new_secret(self._entropy(32))

        def rotate(r: ClientRecord) -> ClientRecord:
            if r.spiffe_id is not None:
                raise InvalidRequest(f"{client_id} authenticates with its SVID: it has no secret")
            if secret is None:
                return replace(r, secret_hashes=r.secret_hashes[-1:], updated_at=now)
            hashes = (*r.secret_hashes[-1:], hash_secret(secret))
            return replace(r, secret_hashes=hashes, updated_at=now)

        action = "oauth_client.rotate_secret" + (".finish" if finish else "")
        return await self._change(action, client_id, rotate), secret

    async def delete(self, client_id: str) -> ClientRecord:
        def drop(doc: _Doc) -> tuple[_Doc, ClientRecord]:
            if client_id not in doc:
                raise NotFound(f"no OAuth client {client_id[:200]!r}")
            return {k: v for k, v in doc.items() if k != client_id}, doc[client_id]

        removed = await self._doc.update(drop)
        self._audited("oauth_client.delete", removed)
        return removed

    async def _change(
        self, action: str, client_id: str, change: Callable[[ClientRecord], ClientRecord]
    ) -> ClientRecord:
        def apply(doc: _Doc) -> tuple[_Doc, ClientRecord]:
            if client_id not in doc:
                raise NotFound(f"no OAuth client {client_id[:200]!r}")
            changed = change(doc[client_id])
            return {**doc, client_id: changed}, changed

        changed = await self._doc.update(apply)
        self._audited(action, changed)
        return changed


def _decode(raw: str) -> _Doc:
    records = (ClientRecord.from_json(item) for item in json.loads(raw)["clients"])
    return {record.client_id: record for record in records}


def _encode(doc: _Doc) -> str:
    body = [r.to_json(with_secrets=True) for r in doc.values()]
    return json.dumps({"clients": body}, sort_keys=True)


def _scopes(scopes: Iterable[str]) -> frozenset[str]:
    if isinstance(scopes, str):
        return parse_scope(scopes)
    out: set[str] = set()
    for s in scopes:
        if not isinstance(s, str):
            raise InvalidRequest("scopes must be strings")
        out |= parse_scope(s)
    return frozenset(out)


def _audiences(audiences: Iterable[str]) -> tuple[str, ...]:
    if isinstance(audiences, str):
        audiences = [audiences]
    out = tuple(dict.fromkeys(audiences))
    if not out or not all(isinstance(a, str) and 0 < len(a) <= 512 for a in out):
        raise InvalidRequest("give 1 or more audiences, each a string of at most 512 characters")
    return out
