"""Revocation from a CRL file: PEM or DER, signature checked, followed as the file changes, and
enforced in real handshakes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from verifier_support import exchange, serving, source_of

from s2s.core.errors import InvalidConfig
from s2s.core.revocation import issuer_key_id
from s2s.testing import TestAuthority, new_key
from s2s.verifier.authorize import authorize_any
from s2s.verifier.crls import ChainIssuer
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.revocations import CrlFileRevocations
from s2s.verifier.tls import client_context, server_context

CLIENT = "spiffe://example.org/client"


def crl(ca: TestAuthority, *serials: int, key: object = None, der: bool = False) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.intermediate.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(hours=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    signed = builder.sign(key or ca.intermediate_key, hashes.SHA256())  # type: ignore[arg-type]
    enc = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return signed.public_bytes(enc)


class Ticker:
    """An injectable monotonic clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def follow(path: Path, ca: TestAuthority, ticker: Ticker) -> CrlFileRevocations:
    return CrlFileRevocations(
        path, trusted=lambda: [ca.root, ca.intermediate], check_interval=5, monotonic=ticker
    )


@pytest.mark.parametrize("der", [False, True])
async def test_revoked_leaf_in_crl_file_is_rejected(
    der: bool, ca: TestAuthority, metrics: PeerMetrics, tmp_path: Path
) -> None:
    bad, good = ca.issue_x509_svid(CLIENT), ca.issue_x509_svid(CLIENT)
    path = tmp_path / "ca.crl"
    path.write_bytes(crl(ca, bad.serial, der=der))
    revs = follow(path, ca, Ticker())
    server_ctx = server_context(
        source_of(ca.issue_x509_svid("spiffe://example.org/s"), ca.bundle()),
        revocations=revs,
        metrics=metrics,
        authorize=authorize_any(),
    )
    async with serving(server_ctx) as served:
        assert await exchange(
            served.port,
            client_context(
                source_of(good, ca.bundle()),
                authorize=authorize_any(),
                revocations=no_revocation_check(),
            ),
        ) == (CLIENT.encode())
        assert (
            await exchange(
                served.port,
                client_context(
                    source_of(bad, ca.bundle()),
                    authorize=authorize_any(),
                    revocations=no_revocation_check(),
                ),
            )
            == b""
        )
    assert metrics.rejection_count("revoked") == 1


def test_file_changes_are_followed_after_the_interval(ca: TestAuthority, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(crl(ca, 0x10))
    ticker = Ticker()
    revs = follow(path, ca, ticker)
    assert revs.current().is_serial_revoked_by_any_issuer(0x10)
    assert not revs.current().is_serial_revoked_by_any_issuer(0x20)
    path.write_bytes(crl(ca, 0x10, 0x20, 0x30))
    assert not revs.current().is_serial_revoked_by_any_issuer(0x20), "re-read before the interval"
    ticker.t = 5
    assert revs.current().is_serial_revoked_by_any_issuer(0x20)
    assert revs.error is None


def test_tampered_or_garbage_update_keeps_the_last_good_set(
    ca: TestAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(crl(ca, 0x10))
    revs = follow(path, ca, Ticker())
    path.write_bytes(crl(ca, 0x20, key=new_key()))  # right issuer name, wrong key
    assert revs.refresh() is False
    assert revs.current().is_serial_revoked_by_any_issuer(0x10)
    assert not revs.current().is_serial_revoked_by_any_issuer(0x20)
    assert revs.error is not None
    assert "not signed by its issuer's key" in revs.error
    path.write_bytes(b"not a crl at all")
    assert revs.refresh() is False
    assert revs.current().is_serial_revoked_by_any_issuer(0x10)
    path.write_bytes(crl(ca, 0x20))
    assert revs.refresh() is True
    assert revs.current().is_serial_revoked_by_any_issuer(0x20)
    assert revs.error is None


@pytest.mark.parametrize("content", ["wrong-key", "garbage", "missing"])
def test_bad_crl_file_at_start_is_a_config_error(
    content: str, ca: TestAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "ca.crl"
    if content == "wrong-key":
        path.write_bytes(crl(ca, 1, key=new_key()))
    elif content == "garbage":
        path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(InvalidConfig):
        follow(path, ca, Ticker())


def test_pem_file_with_several_crls(ca: TestAuthority, tmp_path: Path) -> None:
    other = TestAuthority("example.org")
    path = tmp_path / "all.crl"
    path.write_bytes(crl(ca, 0x1) + crl(other, 0x2))
    revs = CrlFileRevocations(
        path, trusted=lambda: [ca.intermediate, other.intermediate], check_interval=5
    )
    assert revs.current().is_serial_revoked_by_any_issuer(0x1)
    assert revs.current().is_serial_revoked_by_any_issuer(0x2)


def _crl_by(cert: x509.Certificate, key: object, *serials: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(hours=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_intermediate_carried_in_the_file_is_trusted_when_the_root_issued_it(
    ca: TestAuthority, tmp_path: Path
) -> None:
    """Another replica's intermediate (not in our chain) signs a CRL; the file carries it."""
    inter, key = ca.new_intermediate()
    pem = serialization.Encoding.PEM
    path = tmp_path / "ca.crl"
    path.write_bytes(inter.public_bytes(pem) + _crl_by(inter, key, 0x42))
    revs = CrlFileRevocations(path, trusted=lambda: [ca.root], check_interval=5)
    assert revs.current().is_serial_revoked(0x42, issuer_key_id(inter))
    assert not revs.current().is_serial_revoked(0x42, issuer_key_id(ca.intermediate))
    # Twin: an intermediate of another authority (other root) is not trusted, and its CRL
    # waits for a chain through its issuer, which never comes from our trust domain.
    stranger = TestAuthority("example.org")
    s_inter, s_key = stranger.new_intermediate()
    path.write_bytes(s_inter.public_bytes(pem) + _crl_by(s_inter, s_key, 0x43))
    revs = CrlFileRevocations(path, trusted=lambda: [ca.root], check_interval=5)
    assert not revs.book.verified
    assert len(revs.book.pending) == 1
    ours = [ChainIssuer.of(inter), ChainIssuer.of(ca.intermediate)]
    assert not revs.current_for_chain(ours).has_serials()
    # Without the intermediate in the file, the CRL is verified against the intermediate of
    # the first peer chain through it.
    path.write_bytes(_crl_by(inter, key, 0x42))
    revs = CrlFileRevocations(path, trusted=lambda: [ca.root], check_interval=5)
    assert not revs.current().has_serials()
    assert revs.current_for_chain([ChainIssuer.of(inter)]).is_serial_revoked(
        0x42, issuer_key_id(inter)
    )
    assert revs.current().is_serial_revoked(0x42, issuer_key_id(inter))  # verified for good
