"""Open a ``Store`` from a URL: ``sqlite:///path/to/store.db`` or ``etcd://host:port[,host:port]``.

The etcd store keeps each trust domain under its own prefix, so it needs the trust domain: give it
as the URL path (``etcd://10.0.0.1:2379,10.0.0.2:2379/example.org``) or as ``trust_domain=``.
TLS for etcd comes as an :class:`EtcdTls` (CA, optional client certificate and key).
This is the one module that names a backend; everyone else opens a store through it.
"""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from pathlib import Path

from s2s.core.errors import InvalidConfig
from s2s.etcd.channel import EtcdTls
from s2s.store.base import Store
from s2s.store.etcd import EtcdStore
from s2s.store.etcd_leases import DEFAULT_LEASE_GRACE
from s2s.store.sqlite import SqliteStore

__all__ = ["open_store", "sqlite_url"]


def sqlite_url(path: Path | str) -> str:
    """The store URL of the SQLite file at ``path`` (made absolute).

    >>> sqlite_url("/var/lib/s2s ca/s2s.db")
    'sqlite:///var/lib/s2s%20ca/s2s.db'
    """
    return "sqlite://" + urllib.parse.quote(os.path.abspath(path))


async def open_store(
    url: str,
    *,
    trust_domain: str | None = None,
    tls: EtcdTls | None = None,
    create: bool = True,
    lease_grace: dt.timedelta | None = None,
) -> Store:
    """Open the store named by ``url``; ``InvalidConfig`` for a URL that names no usable store.

    ``create`` applies to SQLite (a missing file is created); an etcd prefix is always created on
    first use. ``tls`` and ``lease_grace`` (how long etcd keeps an expired record; None: the
    store's default) are refused for SQLite, where they would be silently meaningless.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidConfig(f"a store URL is sqlite:///path or etcd://host:port, not {url!r}")
    if scheme == "sqlite":
        if tls is not None:
            raise InvalidConfig("TLS options apply to an etcd store, not to sqlite")
        if lease_grace is not None:
            raise InvalidConfig("a lease grace applies to an etcd store, not to sqlite")
        path = urllib.parse.unquote(rest)
        if not path.startswith("/"):
            raise InvalidConfig(
                f"a sqlite store URL needs an absolute path: sqlite:///path, not {url!r}"
            )
        return await SqliteStore.open(path, create=create)
    if scheme == "etcd":
        hosts, _, path = rest.partition("/")
        domain = path.strip("/") or None
        if domain and trust_domain and domain != trust_domain:
            raise InvalidConfig(
                f"the store URL names trust domain {domain!r} but {trust_domain!r} was given"
            )
        domain = domain or trust_domain
        if not domain:
            raise InvalidConfig(
                "an etcd store needs the trust domain: etcd://host:port/<trust-domain>"
            )
        grace = DEFAULT_LEASE_GRACE if lease_grace is None else lease_grace
        return await EtcdStore.open(hosts, trust_domain=domain, tls=tls, lease_grace=grace)
    raise InvalidConfig(f"unknown store scheme {scheme!r}: use sqlite:///path or etcd://host:port")
