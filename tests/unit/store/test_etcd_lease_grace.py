"""The etcd store's lease grace, set by the CA's ``etcd_lease_grace``, on a real etcd.

Every expiring record (issued serial and its index keys, single-use mark, join token,
revocation) rides on a lease that ends ``grace`` after the end of its one-minute expiry bucket:
never before the record's own expiry, even with a grace shorter than the bucket. The grace comes
through ``open_store`` and through the CA's store settings (``open_ca_store``); left out, it is
the 5-minute default. A real etcd (one per module); each test has its own trust domain prefix.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from contract import AGENT_A, sid

from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.store_config import StoreSettings, open_ca_store
from s2s.core.errors import InvalidConfig
from s2s.core.revocation import RevocationRecord
from s2s.etcd.client import EtcdClient
from s2s.store.base import Store
from s2s.store.etcd_leases import DEFAULT_LEASE_GRACE
from s2s.store.factory import open_store, sqlite_url
from s2s.store.records import IssuedKind, IssuedSerial, JoinTokenRecord, Setting, UsedMark
from s2s.testing_etcd import EtcdServer

pytest_plugins = ("etcd_fixtures",)

BUCKET = 60  # EtcdStore.open's lease_bucket, in seconds
SLACK = 5  # seconds this test may take between a grant and the TTL read, on a loaded machine


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


async def _write_expiring_records(store: Store, expiry: dt.datetime) -> None:
    """One of each expiring record, all expiring at ``expiry``."""
    await store.add_issued(
        [
            IssuedSerial(
                serial=41,
                kind=IssuedKind.X509_SVID,
                spiffe_id=sid("/w41"),
                issuer_id="int-1",
                issued_at=expiry - dt.timedelta(minutes=5),
                not_after=expiry,
                agent_id=AGENT_A,
            )
        ]
    )
    await store.claim_once(UsedMark("assertion/grace", expiry))
    now = _now()
    await store.create_join_token(
        JoinTokenRecord(id="grace", token_hash=b"h" * 32, expires_at=expiry, created_at=now)
    )
    await store.add_revocation(
        RevocationRecord.for_serial(42, revoked_at=now, expires_at=expiry, reason="test")
    )


async def _lease_ends(raw: EtcdClient, trust_domain: str) -> dict[bytes, float]:
    """When the lease of each leased key under the trust domain's prefix ends (epoch s)."""
    kvs, _ = await raw.get_prefix(f"/s2s/{trust_domain}/".encode())
    ends = {}
    for kv in kvs:
        if kv.lease:
            ends[kv.key] = _now().timestamp() + await raw.lease_ttl(kv.lease)
    return ends


async def _assert_leases_end_grace_after_the_bucket(
    store: Store, raw: EtcdClient, trust_domain: str, grace: dt.timedelta
) -> None:
    # mid-bucket, so that a lease ending at the bucket's end would differ from one at the expiry
    expiry = _now() + dt.timedelta(minutes=2)
    if expiry.timestamp() % BUCKET == 0:
        expiry += dt.timedelta(seconds=17)
    await _write_expiring_records(store, expiry)
    ends = await _lease_ends(raw, trust_domain)
    assert len(ends) >= 6, sorted(ends)  # issued (serial, by ID, by agent), mark, token, revocation
    bucket_end = math.ceil(expiry.timestamp() / BUCKET) * BUCKET
    want = bucket_end + grace.total_seconds()
    for key, end in ends.items():
        assert want - SLACK <= end <= want + SLACK, (key, end - expiry.timestamp(), grace)
        assert end > expiry.timestamp() + grace.total_seconds() - SLACK, key  # never before


@pytest.mark.parametrize("grace", [dt.timedelta(seconds=30), dt.timedelta(seconds=90)])
async def test_open_store_passes_the_grace_to_the_leases(
    etcd_server: EtcdServer, raw: EtcdClient, trust_domain: str, grace: dt.timedelta
) -> None:
    url = f"etcd://{etcd_server.endpoint}/{trust_domain}"
    store = await open_store(url, lease_grace=grace)
    try:
        await _assert_leases_end_grace_after_the_bucket(store, raw, trust_domain, grace)
    finally:
        await store.close()


async def test_without_a_grace_the_leases_keep_the_default(
    etcd_server: EtcdServer, raw: EtcdClient, trust_domain: str
) -> None:
    store = await open_store(f"etcd://{etcd_server.endpoint}/{trust_domain}")
    try:
        await _assert_leases_end_grace_after_the_bucket(
            store, raw, trust_domain, DEFAULT_LEASE_GRACE
        )
    finally:
        await store.close()
    assert DEFAULT_LEASE_GRACE.total_seconds() == 300


async def _initialized(etcd_server: EtcdServer, trust_domain: str, data_dir: Path) -> None:
    """What ``s2s-ca init --store etcd://...`` leaves that ``open_ca_store`` reads."""
    data_dir.mkdir(mode=0o700)
    KeyEncryptionKey.create(data_dir / "kek.bin")
    store = await open_store(f"etcd://{etcd_server.endpoint}/{trust_domain}")
    try:
        await store.set_setting(Setting.TRUST_DOMAIN, trust_domain)
    finally:
        await store.close()


@pytest.mark.parametrize("grace", [None, dt.timedelta(seconds=60)])
async def test_the_ca_store_settings_carry_the_grace_to_the_store(
    etcd_server: EtcdServer,
    raw: EtcdClient,
    trust_domain: str,
    tmp_path: Path,
    grace: dt.timedelta | None,
) -> None:
    data_dir = tmp_path / "ca"
    await _initialized(etcd_server, trust_domain, data_dir)
    settings = StoreSettings(url=f"etcd://{etcd_server.endpoint}/{trust_domain}", lease_grace=grace)
    store, _kek, td = await open_ca_store(data_dir, settings)
    try:
        assert td.name == trust_domain
        expected = DEFAULT_LEASE_GRACE if grace is None else grace
        await _assert_leases_end_grace_after_the_bucket(store, raw, trust_domain, expected)
    finally:
        await store.close()


async def test_a_grace_for_a_sqlite_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="applies to an etcd store"):
        await open_store(sqlite_url(tmp_path / "s2s.db"), lease_grace=dt.timedelta(minutes=1))
    assert not (tmp_path / "s2s.db").exists()
