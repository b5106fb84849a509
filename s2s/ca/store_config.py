"""Which store a CA uses: the embedded SQLite file in the data dir, or a shared etcd.

``s2s-ca init`` and ``s2s-ca serve`` take ``--store`` (``etcd://host:port[,host:port][/<td>]``)
with ``--etcd-ca``, ``--etcd-cert`` and ``--etcd-key`` for TLS. Without ``--store`` the CA keeps
its store in ``<data-dir>/s2s.db`` (the default). The key-encryption key always stays in the data
dir: every replica of one trust domain needs a copy of the same ``kek.bin``.

An etcd store keeps each trust domain under its own prefix, so it needs the trust domain: from
the URL path or ``--trust-domain`` (they must agree), else the only one ``s2s-ca init`` registered
in that etcd (key ``/s2s-trust-domains/<name>``, written after the root).

On etcd, expiring records (issued serials, single-use marks, join tokens, revocations) ride on
leases that end ``etcd_lease_grace`` (ca.toml; 5 minutes by default) after the record's expiry
bucket, so that long decides how much expired data etcd holds. It is at least
:data:`MIN_LEASE_GRACE`: ``s2s-ca revoke`` still finds an issued serial until its notAfter plus
the revocation skew (the larger of the backdate and the verifiers' JWT leeway), and the grace
also absorbs the difference between the CA's clock and etcd's lease clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from s2s.ca.config import DEFAULT_BACKDATE, CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.errors import InvalidConfig, InvalidSpiffeId
from s2s.core.jwtsvid import MAX_LEEWAY
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.channel import EtcdTls
from s2s.etcd.client import EtcdClient
from s2s.store.base import Store
from s2s.store.factory import open_store, sqlite_url
from s2s.store.records import Setting

__all__ = [
    "MAX_LEASE_GRACE",
    "MIN_LEASE_GRACE",
    "TRUST_DOMAIN_INDEX",
    "StoreSettings",
    "check_lease_grace",
    "open_ca_store",
    "open_init_store",
    "register_trust_domain",
    "registered_trust_domains",
]

TRUST_DOMAIN_INDEX: Final = b"/s2s-trust-domains/"
# The revocation skew (RevocationService.skew with the backdate ca.toml cannot change), and never
# under 30 s of CA-to-etcd clock difference.
MIN_LEASE_GRACE: Final = max(dt.timedelta(seconds=30), DEFAULT_BACKDATE, MAX_LEEWAY)
MAX_LEASE_GRACE: Final = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``--store``, its TLS options and ``etcd_lease_grace`` (None: the SQLite store in the data
    dir; the store's default grace)."""

    url: str | None = None
    trust_domain: str | None = None
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    lease_grace: dt.timedelta | None = None

    def __post_init__(self) -> None:
        tls_given = any(p is not None for p in (self.etcd_ca, self.etcd_cert, self.etcd_key))
        if self.url is None:
            if tls_given:
                raise InvalidConfig("--etcd-ca/--etcd-cert/--etcd-key need --store etcd://...")
            if self.lease_grace is not None:
                raise InvalidConfig(
                    "etcd_lease_grace applies to an etcd store (--store etcd://...); the SQLite"
                    " store removes expired records when the CA prunes"
                )
            return
        if self.lease_grace is not None:
            check_lease_grace(self.lease_grace)
        if not self.url.startswith("etcd://"):
            raise InvalidConfig(
                f"--store takes etcd://host:port[,host:port][/<trust-domain>], not {self.url!r}"
                " (leave it out for the SQLite store in the data dir)"
            )
        if tls_given and self.etcd_ca is None:
            raise InvalidConfig("etcd TLS needs --etcd-ca (the CA that signed etcd's certificate)")
        self.named_trust_domain()  # fail early: two that disagree, or a bad name

    @property
    def is_etcd(self) -> bool:
        return self.url is not None

    def etcd_tls(self) -> EtcdTls | None:
        """The client TLS for etcd, read from the files (``InvalidConfig`` if unreadable)."""
        if self.etcd_ca is None:
            return None
        return EtcdTls.from_files(self.etcd_ca, self.etcd_cert, self.etcd_key)

    @property
    def endpoints(self) -> str:
        assert self.url is not None
        return self.url.removeprefix("etcd://").partition("/")[0]

    def named_trust_domain(self, fallback: str | None = None) -> TrustDomain | None:
        """The trust domain named by the URL path, ``trust_domain`` or ``fallback`` (None if
        none is; ``InvalidConfig`` if they disagree)."""
        assert self.url is not None
        _hosts, _, path = self.url.removeprefix("etcd://").partition("/")
        named = [n for n in (path.strip("/") or None, self.trust_domain, fallback) if n]
        if not named:
            return None
        if len(set(named)) > 1:
            names = sorted(set(named))
            raise InvalidConfig(f"conflicting trust domains for the etcd store: {names}")
        try:
            return TrustDomain.parse(named[0])
        except InvalidSpiffeId as exc:
            raise InvalidConfig(f"bad trust domain for the etcd store: {exc}") from exc

    async def etcd_trust_domain(self) -> TrustDomain:
        """The named trust domain, else the only one registered in etcd."""
        named = self.named_trust_domain()
        if named is not None:
            return named
        found = await registered_trust_domains(self.endpoints, self.etcd_tls())
        if len(found) != 1:
            what = "no trust domain is" if not found else f"several ({', '.join(found)}) are"
            raise InvalidConfig(
                f"{what} registered in etcd at {self.endpoints}: name it with"
                " --store etcd://host:port/<trust-domain> or --trust-domain"
            )
        return TrustDomain.parse(found[0])

    def etcd_url(self, trust_domain: TrustDomain) -> str:
        return f"etcd://{self.endpoints}/{trust_domain.name}"


def check_lease_grace(grace: dt.timedelta) -> dt.timedelta:
    """``grace`` if it is within the bounds of ``etcd_lease_grace``, else ``InvalidConfig``."""
    if not MIN_LEASE_GRACE <= grace <= MAX_LEASE_GRACE:
        raise InvalidConfig(
            f"etcd_lease_grace must be from {_seconds(MIN_LEASE_GRACE)} (the revocation skew:"
            f" s2s-ca revoke finds a serial until its notAfter plus that) to"
            f" {_seconds(MAX_LEASE_GRACE)}, got {_seconds(grace)}"
        )
    return grace


def _seconds(value: dt.timedelta) -> str:
    return f"{int(value.total_seconds())} s"


async def registered_trust_domains(endpoints: str, tls: EtcdTls | None) -> list[str]:
    """Names under ``/s2s-trust-domains/`` (``StoreError`` if etcd cannot be reached)."""
    client = await EtcdClient.connect(endpoints, tls=tls)
    try:
        kvs, _revision = await client.get_prefix(TRUST_DOMAIN_INDEX)
    finally:
        await client.close()
    return [kv.key[len(TRUST_DOMAIN_INDEX) :].decode("utf-8", "replace") for kv in kvs]


async def register_trust_domain(settings: StoreSettings, trust_domain: TrustDomain) -> None:
    """Record an initialized trust domain so that ``serve --store etcd://h:p`` can find it."""
    client = await EtcdClient.connect(settings.endpoints, tls=settings.etcd_tls())
    try:
        await client.put(TRUST_DOMAIN_INDEX + trust_domain.name.encode(), b"")
    finally:
        await client.close()


async def open_ca_store(
    data_dir: Path, settings: StoreSettings
) -> tuple[Store, KeyEncryptionKey, TrustDomain]:
    """Open an initialized store for ``s2s-ca serve``, with the KEK from ``data_dir``.

    ``InvalidConfig`` when the data dir, KEK or store is missing or not initialized;
    ``StoreError`` when etcd cannot be reached.
    """
    probe = CaConfig(trust_domain=TrustDomain("invalid"), data_dir=data_dir)
    if not data_dir.is_dir():
        raise InvalidConfig(f"data dir {data_dir} does not exist; run 's2s-ca init' first")
    if settings.is_etcd:
        if not probe.kek_path.exists():
            raise InvalidConfig(
                f"{data_dir} holds no kek.bin: copy the trust domain's key-encryption key there"
                " (every replica needs the same one)"
            )
        kek = KeyEncryptionKey.load(probe.kek_path)
        td = await settings.etcd_trust_domain()
        store = await open_store(
            settings.etcd_url(td), tls=settings.etcd_tls(), lease_grace=settings.lease_grace
        )
        where = f"the etcd store {settings.url}"
    else:
        if not probe.store_path.exists():
            raise InvalidConfig(f"{data_dir} holds no s2s store; run 's2s-ca init' first")
        kek = KeyEncryptionKey.load(probe.kek_path)
        store = await open_store(sqlite_url(probe.store_path), create=False)
        where = f"the store in {data_dir}"
    try:
        name = await store.get_setting(Setting.TRUST_DOMAIN)
        if name is None:
            raise InvalidConfig(f"{where} has no trust domain; it is not initialized")
        return store, kek, TrustDomain.parse(name)
    except BaseException:
        await store.close()
        raise


async def open_init_store(
    data_dir: Path, trust_domain: TrustDomain, settings: StoreSettings
) -> tuple[Store, KeyEncryptionKey, bool]:
    """Store and KEK for ``s2s-ca init --store etcd://...``: the KEK in ``data_dir`` is
    created unless one is there already (a copy from another replica). Returns (store, kek,
    created_kek) so a failed init can remove a KEK it created."""
    config = CaConfig(trust_domain=trust_domain, data_dir=data_dir)
    settings.named_trust_domain(trust_domain.name)  # refuse a URL naming another domain
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidConfig(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
    created = not config.kek_path.exists()
    kek = (
        KeyEncryptionKey.create(config.kek_path)
        if created
        else KeyEncryptionKey.load(config.kek_path)
    )
    try:
        store = await open_store(
            settings.etcd_url(trust_domain),
            tls=settings.etcd_tls(),
            lease_grace=settings.lease_grace,
        )
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                config.kek_path.unlink()
        raise
    return store, kek, created
