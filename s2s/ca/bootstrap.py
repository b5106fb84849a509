"""``s2s-ca init``: create a trust domain (key-encryption key, store, root CA) in a data directory
or, with an etcd store, in etcd (the KEK stays in the data directory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.store_config import StoreSettings, open_init_store, register_trust_domain
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import Conflict, InvalidConfig
from s2s.core.spiffe_id import TrustDomain
from s2s.store.factory import open_store, sqlite_url

__all__ = ["init_data_dir", "init_trust_domain"]


def init_data_dir(
    data_dir: Path,
    trust_domain: str,
    *,
    clock: Clock | None = None,
    store_settings: StoreSettings | None = None,
) -> dict[str, str]:
    """Create a trust domain in ``data_dir``: KEK file (0600), store, root CA."""
    return asyncio.run(
        init_trust_domain(data_dir, trust_domain, clock=clock, store_settings=store_settings)
    )


async def init_trust_domain(
    data_dir: Path,
    trust_domain: str,
    *,
    clock: Clock | None = None,
    store_settings: StoreSettings | None = None,
) -> dict[str, str]:
    """The async body of :func:`init_data_dir` (for callers already in an event loop)."""
    td = TrustDomain.parse(trust_domain)
    config = CaConfig(trust_domain=td, data_dir=data_dir)
    if store_settings is not None and store_settings.is_etcd:
        return await _init_etcd(config, store_settings, clock or SystemClock())
    if config.store_path.exists() or config.kek_path.exists():
        raise Conflict(f"{data_dir} already holds a trust domain; refusing to overwrite it")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidConfig(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
    kek = KeyEncryptionKey.create(config.kek_path)
    store = await open_store(sqlite_url(config.store_path), create=True)
    try:
        root = await Authority.initialize(
            config=config, store=store, kek=kek, clock=clock or SystemClock()
        )
    finally:
        await store.close()
    return {
        "trust_domain": td.name,
        "data_dir": str(data_dir),
        "root_id": root.id,
        "not_after": root.not_after.isoformat(),
    }


async def _init_etcd(config: CaConfig, settings: StoreSettings, clock: Clock) -> dict[str, str]:
    store, kek, created_kek = await open_init_store(config.data_dir, config.trust_domain, settings)
    try:
        root = await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    except BaseException:
        if created_kek:  # a KEK that sealed nothing must not be mistaken for the real one
            config.kek_path.unlink(missing_ok=True)
        raise
    else:  # the root exists (sealed with this KEK): a failure here keeps the KEK
        await register_trust_domain(settings, config.trust_domain)
    finally:
        await store.close()
    return {
        "trust_domain": config.trust_domain.name,
        "data_dir": str(config.data_dir),
        "store": settings.etcd_url(config.trust_domain),
        "root_id": root.id,
        "not_after": root.not_after.isoformat(),
    }
