"""CRLs: one per issuing CA, RFC 5280 v2, growing cRLNumber, rebuilt on change and before expiry."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from test_revocations import BILLING, Rig, build_rig

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.crl import CrlPublisher
from s2s.ca.crl_values import build_crl, key_id_of, parse_key_id, revoked_entry
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidRequest
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.store.records import AuthorityKind, IssuedKind, IssuedSerial
from s2s.store.sqlite import SqliteStore
from s2s.testing import TestAuthority

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def rig(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Rig:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_rig(config, store, kek, clock)


def load(der: bytes) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(der)


def test_build_crl_is_a_signed_v2_crl_with_number_and_aki() -> None:
    ca = TestAuthority(now=NOW)
    record = RevocationRecord.for_serial(
        0xABC, revoked_at=NOW, expires_at=NOW + dt.timedelta(hours=1), reason="key-compromise"
    )
    crl = build_crl(
        issuer=ca.intermediate,
        issuer_key=ca.intermediate_key,
        entries=[revoked_entry(record)],
        number=7,
        this_update=NOW,
        next_update=NOW + dt.timedelta(hours=1),
    )
    assert crl.issuer == ca.intermediate.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert aki.key_identifier == key_id_of(ca.intermediate)
    assert crl.next_update_utc == NOW + dt.timedelta(hours=1)
    assert crl.is_signature_valid(ca.intermediate.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(0xABC)
    assert entry is not None
    assert entry.revocation_date_utc == NOW
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    # twins: another CA's key does not verify it; an unknown reason adds no reasonCode
    assert not crl.is_signature_valid(TestAuthority(now=NOW).intermediate.public_key())  # type: ignore[arg-type]
    plain = revoked_entry(RevocationRecord.for_serial(1, revoked_at=NOW, expires_at=NOW))
    assert len(plain.extensions) == 0


def test_parse_key_id_accepts_openssl_forms_and_refuses_junk() -> None:
    assert parse_key_id("0A:1b") == b"\x0a\x1b"
    for bad in ("", "xyz", "abc", "00" * 65):
        with pytest.raises(InvalidRequest):
            parse_key_id(bad)


async def test_every_issuing_ca_has_a_crl_even_empty(rig: Rig) -> None:
    kinds = sorted(str(c.kind) for c in rig.crls.current.crls)
    assert kinds == ["x509-intermediate", "x509-root"]
    inter = rig.authority.x509_signer.certificate
    crl = rig.crls.current.by_key_id(key_id_of(inter))
    assert crl is not None
    assert crl.entries == 0
    assert load(crl.der).is_signature_valid(inter.public_key())  # type: ignore[arg-type]
    assert rig.crls.current.by_key_id(b"\x00" * 20) is None
    assert rig.crls.current.pem().count(b"BEGIN X509 CRL") == 2


async def test_a_revoked_leaf_is_on_its_issuers_crl_only(rig: Rig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING)
    await rig.service.revoke_serial(svid.serial)
    by_kind = {c.kind: load(c.der) for c in rig.crls.current.crls}
    assert by_kind[AuthorityKind.X509_INTERMEDIATE].get_revoked_certificate_by_serial_number(
        svid.serial
    )
    assert not by_kind[AuthorityKind.X509_ROOT].get_revoked_certificate_by_serial_number(
        svid.serial
    )


async def test_crl_number_only_grows_across_rebuilds_and_restarts(
    rig: Rig, config: CaConfig, kek: KeyEncryptionKey
) -> None:
    first = {c.authority_id: c.number for c in rig.crls.current.crls}
    assert not await rig.crls.refresh()  # nothing changed: no new CRL
    svid = await rig.issuer.mint_x509_svid(BILLING)
    await rig.service.revoke_serial(svid.serial)  # regenerated on every revocation
    second = {c.authority_id: c.number for c in rig.crls.current.crls}
    assert all(second[k] > first[k] for k in first)
    restarted = CrlPublisher(
        config=config, store=rig.store, kek=kek, clock=rig.clock, revocations=rig.live
    )
    await restarted.refresh()
    assert all(c.number > second[c.authority_id] for c in restarted.current.crls)


async def test_crls_are_rebuilt_before_next_update(rig: Rig) -> None:
    before = rig.crls.current.crls[0]
    assert before.next_update - before.this_update > rig.crls.validity
    rig.clock.advance(seconds=rig.crls.validity.total_seconds() / 2 - 1)
    assert not await rig.crls.refresh()
    rig.clock.advance(seconds=2)
    assert rig.crls.next_refresh() <= rig.clock.now()
    assert await rig.crls.refresh()
    after = rig.crls.current.crls[0]
    assert after.next_update > before.next_update
    assert after.this_update <= rig.clock.now()


async def test_a_new_intermediate_gets_a_crl(rig: Rig) -> None:
    life = rig.config.intermediate_ttl.total_seconds()
    rig.clock.advance(seconds=life / 2 + 1)  # the next intermediate is prepared
    assert await rig.authority.rotate_if_due()
    assert await rig.crls.refresh()
    inters = [c for c in rig.crls.current.crls if c.kind is AuthorityKind.X509_INTERMEDIATE]
    assert len(inters) == 2


async def test_pruned_records_leave_the_crl(rig: Rig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING, ttl=dt.timedelta(seconds=60))
    await rig.service.revoke_serial(svid.serial)
    assert any(c.entries for c in rig.crls.current.crls)
    rig.clock.advance(seconds=60 + rig.service.skew.total_seconds() + 1)
    await rig.store.prune(rig.clock.now())
    await rig.live.refresh()
    assert await rig.crls.refresh()
    assert not any(c.entries for c in rig.crls.current.crls)


async def test_a_crl_of_many_entries_is_built_off_the_loop(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock, rig: Rig
) -> None:
    signer = rig.authority.x509_signer
    now = clock.now()
    expires = now + dt.timedelta(minutes=5)
    issued = [
        IssuedSerial(serial=s, kind=IssuedKind.X509_SVID, spiffe_id=BILLING,
                     issuer_id=signer.authority_id, issued_at=now, not_after=expires)
        for s in range(1000, 4000)
    ]  # fmt: skip
    await store.add_issued(issued)
    records = [RevocationRecord.for_serial(i.serial, revoked_at=now, expires_at=expires)
               for i in issued]  # fmt: skip
    lookup = StaticRevocations(RevocationSet.of(records, version=1))
    publisher = CrlPublisher(config=config, store=store, kek=kek, clock=clock, revocations=lookup)
    await publisher.refresh()
    crl = publisher.current.by_key_id(key_id_of(signer.certificate))
    assert crl is not None
    assert crl.entries == 3000
    assert len(load(crl.der)) == 3000


async def test_cover_brings_the_crls_up_to_a_feed_revision(rig: Rig) -> None:
    svid = await rig.issuer.mint_x509_svid(BILLING)
    now = rig.clock.now()
    record = RevocationRecord.for_serial(svid.serial, revoked_at=now, expires_at=svid.not_after)
    await rig.store.add_revocation(record)  # as another replica would: no CRL rebuild here
    seen = await rig.live.refresh()
    assert rig.crls.current.revocations_version != seen.version
    await rig.crls.cover(seen.version)
    assert rig.crls.current.revocations_version == seen.version
    numbers = [c.number for c in rig.crls.current.crls]
    await rig.crls.cover(seen.version)  # already covered: nothing rebuilt
    assert [c.number for c in rig.crls.current.crls] == numbers


async def test_an_issuer_whose_key_does_not_open_is_skipped_not_fatal(
    rig: Rig, config: CaConfig, tmp_path: Path
) -> None:
    wrong = KeyEncryptionKey.create(tmp_path / "other-kek.bin")
    publisher = CrlPublisher(
        config=config, store=rig.store, kek=wrong, clock=rig.clock, revocations=rig.live
    )
    assert await publisher.refresh()
    assert publisher.current.crls == ()
    assert publisher.next_refresh() > rig.clock.now()  # no busy retry loop
    assert not await publisher.refresh()
