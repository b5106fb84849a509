"""The collaborators the CA's stateful services share (registry, issuer): one typed set of
keyword arguments (PEP 692) and one constructor body."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Required, TypedDict, Unpack

from s2s.ca.audit import AuditLog
from s2s.ca.config import CaConfig
from s2s.core.clock import Clock
from s2s.core.revocation import RevocationLookup, StaticRevocations
from s2s.store.base import Store

__all__ = ["CaService", "ServiceArgs"]


class ServiceArgs(TypedDict, total=False):
    """Keyword arguments of :class:`CaService` (audit, revocations and entropy are optional)."""

    config: Required[CaConfig]
    store: Required[Store]
    clock: Required[Clock]
    audit: AuditLog | None
    revocations: RevocationLookup | None
    entropy: Callable[[int], bytes]


class CaService:
    """Holds config, store, clock, audit log, revocations and entropy; an absent audit log or
    revocation lookup becomes a private empty one, absent entropy is ``os.urandom``."""

    def __init__(self, **kwargs: Unpack[ServiceArgs]) -> None:
        audit = kwargs.get("audit")
        revocations = kwargs.get("revocations")
        self._config = kwargs["config"]
        self._store = kwargs["store"]
        self._clock = kwargs["clock"]
        self._audit = audit if audit is not None else AuditLog()
        self._revocations = revocations if revocations is not None else StaticRevocations()
        self._entropy = kwargs.get("entropy", os.urandom)
