"""Which CRL a revoked serial goes on: learned from the issuer the record names, else from that
serial's index record, never from a listing of the whole issued-serial index (its size is the
live fleet, not the revocations)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from test_revocations import BILLING, Rig, build_rig

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.crl import CrlPublisher
from s2s.ca.crl_values import key_id_of
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import FakeClock
from s2s.core.revocation import (
    RevocationRecord,
    RevocationSet,
    StaticRevocations,
    issuer_key_id,
)
from s2s.store.records import IssuedKind, IssuedSerial
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority


class CountingStore:
    """The real store; counts the issued-index reads."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.listed = 0
        self.got = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list_issued(self, **kwargs: Any) -> tuple[IssuedSerial, ...]:
        self.listed += 1
        return await self._inner.list_issued(**kwargs)

    async def get_issued(self, serial: int) -> IssuedSerial:
        self.got += 1
        return await self._inner.get_issued(serial)


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


async def _publish(
    rig: Rig, kek: KeyEncryptionKey, records: list[RevocationRecord]
) -> tuple[dict[bytes, set[int]], CountingStore]:
    """Build the CRLs for ``records``: the serials on each (by the issuer's key id), and the
    store's counts of index reads."""
    counting = CountingStore(rig.store)
    lookup = StaticRevocations(RevocationSet.of(records, version=1))
    publisher = CrlPublisher(config=rig.config, store=counting, kek=kek,  # type: ignore[arg-type]
                             clock=rig.clock, revocations=lookup)  # fmt: skip
    await publisher.refresh()
    return {
        c.key_id: {r.serial_number for r in x509.load_der_x509_crl(c.der)}
        for c in publisher.current.crls
    }, counting


async def _indexed(rig: Rig, serials: range) -> list[IssuedSerial]:
    now = rig.clock.now()
    signer = rig.authority.x509_signer
    issued = [
        IssuedSerial(serial=s, kind=IssuedKind.X509_SVID, spiffe_id=BILLING,
                     issuer_id=signer.authority_id, issued_at=now,
                     not_after=now + dt.timedelta(minutes=5))
        for s in serials
    ]  # fmt: skip
    await rig.store.add_issued(issued)
    return issued


def _revoked(rig: Rig, serials: range, issuer: str) -> list[RevocationRecord]:
    now = rig.clock.now()
    return [
        RevocationRecord.for_serial(
            s, revoked_at=now, expires_at=now + dt.timedelta(minutes=6), issuer=issuer
        )
        for s in serials
    ]


async def test_records_that_name_their_issuer_need_no_index_read(
    rig: Rig, kek: KeyEncryptionKey
) -> None:
    await _indexed(rig, range(1000, 1300))
    cert = rig.authority.x509_signer.certificate
    records = _revoked(rig, range(1000, 1300), issuer_key_id(cert))
    crls, counting = await _publish(rig, kek, records)
    assert crls[key_id_of(cert)] == set(range(1000, 1300))
    assert (counting.listed, counting.got) == (0, 0)


async def test_records_without_an_issuer_read_only_their_own_serials(
    rig: Rig, kek: KeyEncryptionKey
) -> None:
    """300 new serials (more than the old bulk threshold of 256, which listed the index)."""
    await _indexed(rig, range(1, 2001))  # the live fleet: 2000 certificates
    cert = rig.authority.x509_signer.certificate
    crls, counting = await _publish(rig, kek, _revoked(rig, range(1000, 1300), ""))
    assert crls[key_id_of(cert)] == set(range(1000, 1300))
    assert (counting.listed, counting.got) == (0, 300)


async def test_serials_of_no_known_issuer_are_on_no_crl(rig: Rig, kek: KeyEncryptionKey) -> None:
    """Rejecting twins: a record naming another CA's key and not in the index, and a record
    naming no issuer whose serial the index does not know (expired and pruned)."""
    await _indexed(rig, range(1, 11))
    foreign = issuer_key_id(TestAuthority("example.org").intermediate)
    records = [*_revoked(rig, range(1, 3), ""), *_revoked(rig, range(500, 503), foreign)]
    records += _revoked(rig, range(600, 602), "")
    crls, counting = await _publish(rig, kek, records)
    assert set().union(*crls.values()) == {1, 2}
    assert (counting.listed, counting.got) == (0, 7)
