"""The etcd store's key layout and values (docs/internal-contracts.md, "etcd key layout").

Everything of one trust domain lives under ``/s2s/<trust-domain>/``; values are the records' JSON
(:func:`s2s.store.codec.encode_doc`) as bytes. ``meta`` marks the prefix as ours and holds the
schema version; ``entry-keys/<sha256>`` makes (SPIFFE ID, parent ID, selectors) unique; issued
serials are 40 hex digits so that key order is serial order. ``issued-ids/<sha256 of the SPIFFE
ID>/<serial>`` and ``issued-agents/<sha256 of the agent ID>/<serial>`` (schema 2) index the issued
serials by ID: the hash, because a raw ID prefix ``.../a/`` would also cover ``.../a/b``. Used by
:mod:`s2s.store.etcd`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from s2s.core.errors import Conflict, InvalidConfig
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationRecord
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.etcd.values import KeyValue
from s2s.store.codec import encode_doc
from s2s.store.records import IssuedSerial, JoinTokenRecord, Topic, UsedMark

__all__ = [
    "SCHEMA_VERSION",
    "EtcdKeys",
    "check_meta",
    "doc",
    "check_entry_key",
    "expiry",
    "meta_doc",
]

SCHEMA_VERSION = 2  # 2: issued serials are also indexed by SPIFFE ID and by agent
_APP = "s2s-ca-store"


@dataclass(frozen=True, slots=True)
class EtcdKeys:
    """The keys of one trust domain's prefix."""

    prefix: bytes

    @classmethod
    def under(cls, trust_domain: TrustDomain) -> EtcdKeys:
        return cls(f"/s2s/{trust_domain.name}/".encode())

    def key(self, *parts: str) -> bytes:
        """The etcd key of ``parts`` under this trust domain's prefix."""
        return self.prefix + "/".join(parts).encode()

    def topic(self, topic: Topic) -> bytes:
        """``topics/<topic>``: its ``mod_revision`` is the topic's revision."""
        return self.key("topics", topic.value)

    def issued(self, serial: int) -> bytes:
        return self.key("issued", f"{serial:040x}")

    def issued_by_id(self, spiffe_id: SpiffeId | None = None, serial: int | None = None) -> bytes:
        """``issued-ids/<sha256 hex of spiffe_id>/<serial>``: without ``serial``, the prefix of
        one ID's serials; without either, the prefix of the whole index."""
        return self._issued_by("issued-ids", spiffe_id, serial)

    def issued_by_agent(self, agent_id: SpiffeId | None = None, serial: int | None = None) -> bytes:
        """``issued-agents/<sha256 hex of agent_id>/<serial>`` (prefixes as ``issued_by_id``)."""
        return self._issued_by("issued-agents", agent_id, serial)

    def issued_index_keys(self, record: IssuedSerial) -> list[bytes]:
        """``record``'s keys by ID: written, leased and deleted with its ``issued/<serial>``."""
        keys = [self.issued_by_id(record.spiffe_id, record.serial)]
        if record.agent_id is not None:
            keys.append(self.issued_by_agent(record.agent_id, record.serial))
        return keys

    def _issued_by(self, name: str, spiffe_id: SpiffeId | None, serial: int | None) -> bytes:
        if spiffe_id is None:
            return self.key(name, "")
        digest = hashlib.sha256(str(spiffe_id).encode()).hexdigest()
        return self.key(name, digest, "" if serial is None else f"{serial:040x}")

    def entry_index(self, entry: RegistrationEntry) -> bytes:
        """``entry-keys/<sha256 of [spiffe_id, parent_id, selectors]>``, holding the entry id."""
        d = entry.to_json()
        unique = json.dumps([d["spiffe_id"], d["parent_id"], d["selectors"]])
        return self.key("entry-keys", hashlib.sha256(unique.encode()).hexdigest())


def doc(record: Any) -> bytes:
    """The stored value of ``record``."""
    return encode_doc(record).encode()


def meta_doc(schema: int = SCHEMA_VERSION) -> bytes:
    return json.dumps({"app": _APP, "schema": schema}, sort_keys=True).encode()


def check_meta(found: KeyValue | None, where: str) -> int:
    """The schema version ``meta`` names; ``InvalidConfig`` unless it says s2s data of a schema
    this build understands."""
    try:
        info = json.loads(found.value) if found else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict) or info.get("app") != _APP:
        raise InvalidConfig(f"etcd {where} holds another application's data")
    schema = info.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise InvalidConfig(
            f"the store {where} has schema version {schema}, newer than this s2s "
            f"understands ({SCHEMA_VERSION}): run a newer s2s"
        )
    return schema


def check_entry_key(entry: RegistrationEntry, holder: KeyValue | None) -> None:
    """``Conflict`` if ``entry``'s unique key (``holder``, as read) is held by another entry."""
    if holder is None or holder.value.decode() == entry.id:
        return
    raise Conflict(
        f"entry {holder.value.decode()} already has this SPIFFE ID, parent ID and selectors "
        f"({entry.spiffe_id})"
    )


def expiry(record: Any) -> dt.datetime:
    """When a record may be pruned: ``expires_at`` or ``not_after``."""
    if isinstance(record, JoinTokenRecord | RevocationRecord | UsedMark):
        return record.expires_at
    return record.not_after  # type: ignore[no-any-return]
