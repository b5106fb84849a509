"""The authority: init, start, restart, rotation under a fake clock, the bundle."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import jwt
import pytest
from ca_helpers import TD, Ca, build_ca, make_csr
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey
from s2s.core.bundle import Bundle
from s2s.core.clock import FakeClock
from s2s.core.errors import Conflict, InvalidConfig, InvalidToken
from s2s.core.jwtsvid import check_jwt_claims
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.store.records import AuthorityKind, AuthorityState
from s2s.store.sqlite import SqliteStore

WORKLOAD = SpiffeId.parse("spiffe://example.org/billing")
HOUR = dt.timedelta(hours=1)


def verify_jwt(token: str, bundle: Bundle, now: dt.datetime, audience: str = "aud") -> str:
    """Verify a token against a bundle at the fake time; returns the subject."""
    kid = jwt.get_unverified_header(token)["kid"]
    authority = bundle.jwt_authority(kid)
    if authority is None:
        raise InvalidToken(f"kid {kid} not in bundle", reason="kid")
    claims = jwt.decode(
        token,
        authority.public_key,  # type: ignore[arg-type]
        algorithms=["ES256"],
        options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
    )
    return str(check_jwt_claims(claims, audience=audience, now=now).spiffe_id)


async def test_initialize_creates_a_p256_root_for_a_year(ca: Ca) -> None:
    root = ca.authority.root
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=365) <= life <= dt.timedelta(days=365, seconds=60)
    assert ca.authority.bundle.x509_authorities == (root,)


async def test_initialize_twice_is_refused(ca: Ca) -> None:
    with pytest.raises(Conflict, match="already initialized"):
        await Authority.initialize(config=ca.config, store=ca.store, kek=ca.kek, clock=ca.clock)


async def test_start_issues_intermediate_and_jwt_key(ca: Ca) -> None:
    signer = ca.authority.x509_signer
    inter = signer.certificate
    inter.verify_directly_issued_by(ca.authority.root)
    assert inter.not_valid_after_utc - ca.clock.now() <= dt.timedelta(hours=24)
    assert inter.not_valid_after_utc - ca.clock.now() > dt.timedelta(hours=23)
    bundle = ca.authority.bundle
    assert bundle.sequence >= 1
    assert bundle.jwt_authority(ca.authority.jwt_signer.kid) is not None
    assert inter not in bundle.x509_authorities  # intermediates are chained, not trusted
    assert ca.authority.ready


async def test_start_refuses_uninitialized_store(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> None:
    with pytest.raises(InvalidConfig, match="not initialized"):
        await Authority(config=config, store=store, kek=kek, clock=clock).start()


async def test_start_refuses_foreign_trust_domain(ca: Ca) -> None:
    other = dataclasses.replace(ca.config, trust_domain=TrustDomain.parse("other.org"))
    with pytest.raises(InvalidConfig, match=r"belongs to trust domain example\.org"):
        await Authority(config=other, store=ca.store, kek=ca.kek, clock=ca.clock).start()


async def test_start_refuses_wrong_kek(ca: Ca, tmp_path: Path) -> None:
    wrong = KeyEncryptionKey.create(tmp_path / "other-kek")
    with pytest.raises(InvalidConfig, match="wrong key-encryption key"):
        await Authority(config=ca.config, store=ca.store, kek=wrong, clock=ca.clock).start()


async def test_restart_keeps_keys_and_bundle(ca: Ca) -> None:
    before = ca.authority
    again = await build_ca(ca.config, ca.store, KeyEncryptionKey.load(ca.config.kek_path), ca.clock)
    after = again.authority
    assert after.root == before.root
    assert after.x509_signer.authority_id == before.x509_signer.authority_id
    assert after.jwt_signer.kid == before.jwt_signer.kid
    assert after.bundle == before.bundle
    # the restarted CA issues chains the first one's clients already trust
    svid = again.issuer.sign_csr(make_csr(), spiffe_id=WORKLOAD, ttl=dt.timedelta(minutes=5))
    svid.cert_chain[1].verify_directly_issued_by(before.root)


async def test_store_holds_no_plaintext_keys(ca: Ca) -> None:
    await ca.store.close()
    data = b"".join(p.read_bytes() for p in ca.config.data_dir.glob("s2s.db*"))
    assert b"PRIVATE KEY" not in data
    secret = ca.authority.jwt_signer.private_key.private_numbers().private_value
    assert secret.to_bytes(32, "big") not in data
    inter_key = ca.authority.x509_signer.private_key
    assert isinstance(inter_key, ec.EllipticCurvePrivateKey)
    assert inter_key.private_numbers().private_value.to_bytes(32, "big") not in data


async def test_nothing_to_rotate_early(ca: Ca) -> None:
    ca.clock.advance(HOUR)
    assert await ca.authority.rotate_if_due() is False
    assert ca.authority.next_rotation_check() > ca.clock.now()


async def test_rotation_prepares_at_half_life_and_activates_at_one_sixth(ca: Ca) -> None:
    authority = ca.authority
    first_x509, first_kid = authority.x509_signer.authority_id, authority.jwt_signer.kid
    seq0 = authority.bundle.sequence

    ca.clock.advance(12 * HOUR + dt.timedelta(minutes=1))
    assert await authority.rotate_if_due() is True
    states = {(a.kind, a.state) for a in await authority.list_authorities()}
    assert (AuthorityKind.X509_INTERMEDIATE, AuthorityState.PREPARED) in states
    assert (AuthorityKind.JWT, AuthorityState.PREPARED) in states
    assert authority.x509_signer.authority_id == first_x509  # prepared, not yet used
    assert authority.jwt_signer.kid == first_kid
    assert len(authority.bundle.jwt_authorities) == 2  # the next key is published early
    assert authority.bundle.sequence == seq0 + 1

    ca.clock.advance(8 * HOUR)  # 20 h 1 min: less than 1/6 of 24 h remains
    assert await authority.rotate_if_due() is True
    assert authority.x509_signer.authority_id != first_x509
    assert authority.jwt_signer.kid != first_kid
    authority.x509_signer.certificate.verify_directly_issued_by(authority.root)
    by_id = {a.id: a.state for a in await authority.list_authorities()}
    assert by_id[first_x509] is AuthorityState.OLD
    assert by_id[first_kid] is AuthorityState.OLD
    assert authority.bundle.jwt_authority(first_kid) is not None  # old key still published


async def test_old_jwt_tokens_stay_valid_until_they_expire(ca: Ca) -> None:
    authority = ca.authority
    ca.clock.advance(20 * HOUR - dt.timedelta(minutes=2))
    await authority.rotate_if_due()  # prepares the next key
    old = await ca.issuer.mint_jwt_svid_for(WORKLOAD, ["aud"])
    old_kid = authority.jwt_signer.kid

    ca.clock.advance(dt.timedelta(minutes=3))  # past activation
    assert await authority.rotate_if_due() is True
    assert authority.jwt_signer.kid != old_kid
    new = await ca.issuer.mint_jwt_svid_for(WORKLOAD, ["aud"])
    assert jwt.get_unverified_header(new.token)["kid"] == authority.jwt_signer.kid
    # the old token still verifies against the current bundle until its exp ...
    assert verify_jwt(old.token, authority.bundle, ca.clock.now()) == str(WORKLOAD)
    ca.clock.advance(dt.timedelta(minutes=3))
    with pytest.raises(InvalidToken) as err:
        verify_jwt(old.token, authority.bundle, ca.clock.now())
    assert err.value.reason == "exp"
    assert verify_jwt(new.token, authority.bundle, ca.clock.now()) == str(WORKLOAD)

    # once the old key itself has expired, it leaves the bundle and the sequence grows
    seq = authority.bundle.sequence
    ca.clock.advance(5 * HOUR)
    await authority.rotate_if_due()
    await authority.refresh_bundle()
    assert authority.bundle.jwt_authority(old_kid) is None
    assert authority.bundle.sequence > seq


async def test_tokens_never_outlive_their_key(ca: Ca) -> None:
    key_end = ca.authority.jwt_signer.not_after
    ca.clock.set(key_end - dt.timedelta(minutes=1))
    token = await ca.issuer.mint_jwt_svid_for(WORKLOAD, ["aud"])
    assert token.expires_at <= key_end


async def test_leaf_never_outlives_intermediate_and_old_chain_still_verifies(ca: Ca) -> None:
    old_svid = ca.issuer.sign_csr(make_csr(), spiffe_id=WORKLOAD, ttl=dt.timedelta(minutes=5))
    ca.clock.advance(21 * HOUR)
    await ca.authority.rotate_if_due()
    new_svid = ca.issuer.sign_csr(make_csr(), spiffe_id=WORKLOAD, ttl=dt.timedelta(minutes=5))
    assert new_svid.cert_chain[1] != old_svid.cert_chain[1]
    for svid in (old_svid, new_svid):
        svid.leaf.verify_directly_issued_by(svid.cert_chain[1])
        svid.cert_chain[1].verify_directly_issued_by(ca.authority.root)
        assert svid.not_after <= svid.cert_chain[1].not_valid_after_utc


async def test_expired_active_authority_is_replaced_on_start(ca: Ca) -> None:
    first = ca.authority.x509_signer.authority_id
    ca.clock.advance(25 * HOUR)  # the CA was down for more than a day
    again = await build_ca(ca.config, ca.store, ca.kek, ca.clock)
    assert again.authority.x509_signer.authority_id != first
    assert again.authority.x509_signer.not_after > ca.clock.now()


async def test_two_replicas_share_one_bundle(ca: Ca) -> None:
    other_cfg = dataclasses.replace(ca.config, replica_name="ca-1")
    other = await build_ca(other_cfg, ca.store, ca.kek, ca.clock)
    assert other.authority.x509_signer.authority_id != ca.authority.x509_signer.authority_id
    bundle = await ca.authority.refresh_bundle()
    assert bundle == other.authority.bundle
    kids = {a.kid for a in bundle.jwt_authorities}
    assert kids == {ca.authority.jwt_signer.kid, other.authority.jwt_signer.kid}


def test_td_fixture() -> None:
    assert str(TD) == "example.org"


async def test_prepared_authority_is_used_after_downtime(ca: Ca) -> None:
    ca.clock.advance(13 * HOUR)
    await ca.authority.rotate_if_due()  # prepares
    prepared = {
        a.kind: a.id
        for a in await ca.authority.list_authorities()
        if a.state is AuthorityState.PREPARED
    }
    ca.clock.advance(12 * HOUR)  # 25 h: the active ones expired while the CA was down
    again = await build_ca(ca.config, ca.store, ca.kek, ca.clock)
    assert again.authority.x509_signer.authority_id == prepared[AuthorityKind.X509_INTERMEDIATE]
    assert again.authority.jwt_signer.kid == prepared[AuthorityKind.JWT]


async def test_revoked_jwt_authority_leaves_the_bundle(ca: Ca) -> None:
    old_kid = ca.authority.jwt_signer.kid
    ca.clock.advance(21 * HOUR)
    await ca.authority.rotate_if_due()  # prepare + activate: the old key becomes OLD
    assert ca.authority.bundle.jwt_authority(old_kid) is not None
    seq = ca.authority.bundle.sequence
    await ca.store.cas_authority_state(old_kid, AuthorityState.OLD, AuthorityState.REVOKED)
    bundle = await ca.authority.refresh_bundle()
    assert bundle.jwt_authority(old_kid) is None
    assert bundle.sequence == seq + 1
    assert (await ca.authority.refresh_bundle()).sequence == seq + 1  # no change, no bump


async def test_concurrent_rotation_checks_prepare_once(ca: Ca) -> None:
    ca.clock.advance(13 * HOUR)
    results = await asyncio.gather(*(ca.authority.rotate_if_due() for _ in range(4)))
    assert results.count(True) == 1
    prepared = [
        a for a in await ca.authority.list_authorities() if a.state is AuthorityState.PREPARED
    ]
    assert len(prepared) == 2  # one intermediate, one JWT key


async def test_next_rotation_check_is_the_next_threshold(ca: Ca) -> None:
    start = ca.authority.x509_signer.certificate.not_valid_before_utc
    end = ca.authority.x509_signer.not_after
    assert ca.authority.next_rotation_check() <= start + (end - start) / 2
    ca.clock.set(ca.authority.next_rotation_check())
    assert await ca.authority.rotate_if_due() is True
