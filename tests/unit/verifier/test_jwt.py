"""JwtValidator: every accepting case next to the rejections the issue lists, and revocation.

The cache is tested in test_jwt_validator_cache.py, the Wycheproof JWS vectors in
test_jws_wycheproof.py; the harness is in jwt_support.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt_support import (
    AUD,
    B64_ALPHABET,
    WORKLOAD,
    Harness,
    Lookup,
    b64,
    revocation_record,
    sign_token,
)
from prometheus_client import CollectorRegistry

from s2s.core.bundle import Bundle, BundleSet, JwtAuthority
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken, Unavailable
from s2s.core.revocation import RevocationKind, RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority
from s2s.verifier.jwt import (
    REJECTION_REASONS,
    JwtMetrics,
    JwtValidator,
)
from s2s.verifier.revocation_choice import no_revocation_check

# --- the accepting case and its twins -------------------------------------------------------


def test_valid_token_returns_spiffe_id_and_claims(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="j-1")
    result = h.validator.validate(token)
    assert result.spiffe_id == SpiffeId.parse(WORKLOAD)
    assert result.claims.audience == (AUD,)
    assert result.claims.jti == "j-1"
    assert result.expiry == h.clock.now() + dt.timedelta(minutes=5)


def test_token_of_another_trust_domain_with_its_own_key_is_accepted(h: Harness) -> None:
    token = h.other.issue_jwt_svid("spiffe://other.org/batch", AUD)
    assert str(h.validator.validate(token).spiffe_id) == "spiffe://other.org/batch"


def test_alg_none_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, alg="none"), "alg")
    h.reject(sign_token(h.header(alg="none"), h.claims(), h.ca.jwt_key, "ES256"), "alg")


def test_hs256_with_the_public_key_as_secret_is_rejected(h: Harness) -> None:
    secret = h.ca.jwt_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{b64(json.dumps(h.header(alg='HS256')).encode())}.{b64(json.dumps(h.claims()).encode())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    h.reject(f"{signing_input}.{b64(mac)}", "alg")


@pytest.mark.parametrize("alg", ["HS384", "EdDSA", "ES256K", "none ", "es256", ""])
def test_algorithms_outside_the_allowlist_are_rejected(h: Harness, alg: str) -> None:
    h.reject(sign_token(h.header(alg=alg), h.claims(), h.ca.jwt_key, "ES256"), "alg")


def test_unknown_kid_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, kid="no-such-kid"), "kid")


def test_missing_kid_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, extra_headers={"kid": None}), "kid")


def test_kid_of_another_trust_domain_is_unknown(h: Harness) -> None:
    # Signed by other.org's key under its kid, but claiming an example.org subject.
    token = h.other.issue_jwt_svid(WORKLOAD, AUD)
    h.reject(token, "kid")


def test_subject_of_a_trust_domain_without_bundle_is_untrusted(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid("spiffe://stranger.org/x", AUD), "untrusted")


def test_same_kid_signed_by_a_foreign_key_fails_the_signature(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, key=ec.generate_private_key(ec.SECP256R1()))
    h.reject(token, "signature")


@pytest.mark.parametrize(
    "extra",
    [
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {"crit": ["exp"]},
    ],
)
def test_embedded_keys_and_crit_are_rejected(h: Harness, extra: dict[str, Any]) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, extra_headers=extra), "header")


def test_typ_other_than_jwt_or_jose_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, extra_headers={"typ": "at+jwt"}), "typ")
    assert h.validator.validate(h.ca.issue_jwt_svid(WORKLOAD, AUD, extra_headers={"typ": "JOSE"}))


def test_expired_is_rejected_after_the_leeway(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, ttl=dt.timedelta(seconds=60))
    h.clock.advance(seconds=60 + 29)
    assert h.validator.validate(token)  # within the default 30 s leeway
    h.clock.advance(seconds=2)
    h.reject(token, "exp")


def test_missing_exp_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["exp"]), "exp")


def test_no_aud_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["aud"]), "aud")


def test_wrong_aud_is_rejected_and_one_of_several_is_accepted(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, "spiffe://example.org/other"), "aud")
    assert h.validator.validate(h.ca.issue_jwt_svid(WORKLOAD, ["x", AUD]))


def test_missing_or_bad_sub_is_rejected(h: Harness) -> None:
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["sub"]), "sub")
    h.reject(h.ca.issue_jwt_svid("https://example.org/billing", AUD), "sub")


def test_tampered_payload_and_signature_are_rejected(h: Harness) -> None:
    head, body, sig = h.ca.issue_jwt_svid(WORKLOAD, AUD).split(".")
    other_body = b64(json.dumps(h.claims(sub="spiffe://example.org/admin")).encode())
    h.reject(f"{head}.{other_body}.{sig}", "signature")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    h.reject(f"{head}.{body}.{b64(bytes(raw))}", "signature")
    h.reject(f"{head}.{body}.{b64(bytes(raw[:-1]))}", "signature")  # 63 bytes, not 64


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ..",  # {"alg":"ES256","kid":"k"}, no payload
        "!!!.###.$$$",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA====",
        " eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        "bm90IGpzb24.e30.AAAA",  # header "not json"
        "W10.e30.AAAA",  # header []
    ],
)
def test_garbage_is_malformed(h: Harness, token: str) -> None:
    h.reject(token, "malformed")


def test_non_text_is_malformed(h: Harness) -> None:
    h.reject(b"a.b.c", "malformed")
    h.reject(None, "malformed")


def test_duplicate_header_member_is_malformed(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    _, body, sig = token.split(".")
    raw = f'{{"alg":"none","alg":"ES256","kid":"{h.ca.jwt_kid}"}}'.encode()
    h.reject(f"{b64(raw)}.{body}.{sig}", "malformed")


def test_non_canonical_base64_is_malformed(h: Harness) -> None:
    head, body, sig = h.ca.issue_jwt_svid(WORKLOAD, AUD).split(".")
    # 64 signature bytes encode to 86 chars: the last carries 4 unused bits that must be zero.
    changed = B64_ALPHABET[B64_ALPHABET.index(sig[-1]) | 1]
    h.reject(f"{head}.{body}.{sig[:-1]}{changed}", "malformed")


@pytest.mark.parametrize("size", [8 * 1024 + 1, 1024 * 1024, 16 * 1024 * 1024])
def test_long_tokens_are_rejected_before_parsing(h: Harness, size: int) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    head, body, sig = token.split(".")
    h.reject(f"{head}.{body}{'A' * (size - len(token))}.{sig}", "too-large")
    assert h.validator.cache_len() == 0


def test_rsa_key_with_es256_header_is_rejected(h: Harness) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    h.bundles = h.bundles.with_bundle(
        Bundle(h.ca.trust_domain, jwt_authorities=(JwtAuthority("rsa-1", rsa_key.public_key()),))
    )
    ec_key = ec.generate_private_key(ec.SECP256R1())
    h.reject(sign_token(h.header(kid="rsa-1"), h.claims(), ec_key, "ES256"), "alg")
    # Twins: the RSA key verifies RS256 and PS256 tokens.
    for alg in ("RS256", "PS256", "RS512", "PS384"):
        assert h.validator.validate(
            sign_token(h.header(kid="rsa-1", alg=alg), h.claims(), rsa_key, alg)
        )


def test_es256_key_with_es384_header_is_rejected(h: Harness) -> None:
    token = sign_token(h.header(alg="ES384"), h.claims(), h.ca.jwt_key, "ES384")
    h.reject(token, "alg")
    h.reject(sign_token(h.header(alg="RS256"), h.claims(), h.ca.jwt_key, "ES256"), "alg")


def test_p384_key_verifies_es384_only(h: Harness) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    h.bundles = h.bundles.with_bundle(
        Bundle(h.ca.trust_domain, jwt_authorities=(JwtAuthority("p384", key.public_key()),))
    )
    assert h.validator.validate(
        sign_token(h.header(kid="p384", alg="ES384"), h.claims(), key, "ES384")
    )
    h.reject(sign_token(h.header(kid="p384", alg="ES256"), h.claims(), key, "ES256"), "alg")


def test_expired_jwt_authority_is_not_used(h: Harness) -> None:
    authority = JwtAuthority(
        h.ca.jwt_kid, h.ca.jwt_key.public_key(), h.clock.now() + dt.timedelta(minutes=1)
    )
    h.bundles = h.bundles.with_bundle(Bundle(h.ca.trust_domain, jwt_authorities=(authority,)))
    assert h.validator.validate(h.ca.issue_jwt_svid(WORKLOAD, AUD))
    h.clock.advance(seconds=61)
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD), "kid")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_tokens_raise_only_invalid_token(h: Harness, data: st.DataObject) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    kind = data.draw(st.sampled_from(["text", "flip", "cut", "splice"]))
    if kind == "text":
        candidate = data.draw(st.text(max_size=400))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(token) - 1))
        candidate = token[:i] + data.draw(st.characters()) + token[i + 1 :]
    elif kind == "cut":
        candidate = token[: data.draw(st.integers(0, len(token) - 1))]
    else:
        head, body, sig = token.split(".")
        junk = b64(data.draw(st.binary(max_size=200)))
        candidate = data.draw(st.sampled_from([f"{junk}.{body}.{sig}", f"{head}.{junk}.{sig}"]))
    rejection: InvalidToken | None = None
    try:
        result = h.validator.validate(candidate)
    except InvalidToken as exc:  # anything else escaping fails the test
        rejection = exc
    if rejection is not None:
        assert rejection.reason in REJECTION_REASONS
        return
    assert candidate == token  # only the untouched token is accepted
    assert str(result.spiffe_id) == WORKLOAD


# --- revocation --------------------------------------------------------------------------------


def test_revoked_jti_is_rejected(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="jti-1")
    twin = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="jti-2")
    h.revocations = RevocationSet.of([revocation_record(h, RevocationKind.JTI, "jti-1")], version=1)
    h.reject(token, "revoked")
    assert h.validator.validate(twin)


def test_revoked_spiffe_id_covers_tokens_issued_before_the_revocation(h: Harness) -> None:
    before = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    no_iat = h.ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["iat"])
    h.clock.advance(seconds=10)
    h.revocations = RevocationSet.of(
        [revocation_record(h, RevocationKind.SPIFFE_ID, WORKLOAD)], version=1
    )
    h.reject(before, "revoked")
    h.reject(no_iat, "revoked")  # no iat: it may be older than the revocation
    h.clock.advance(seconds=10)
    assert h.validator.validate(h.ca.issue_jwt_svid(WORKLOAD, AUD))  # issued after: accepted
    assert h.validator.validate(h.other.issue_jwt_svid("spiffe://other.org/billing", AUD))


def test_a_stale_revocation_feed_fails_closed_even_for_cached_tokens(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    h.validator.validate(token)
    h.revocations_stale = True  # the feed stops confirming its set
    h.reject(token, "revocations-stale")
    h.revocations_stale = False
    assert h.validator.validate(token)


def test_bundles_not_yet_known_are_unavailable_not_a_verdict(
    fake_clock: FakeClock, authority: TestAuthority
) -> None:
    def no_bundles_yet() -> BundleSet:
        raise Unavailable("the JWT source has not received bundles yet")

    validator = JwtValidator(
        Lookup(no_bundles_yet),
        AUD,
        revocations=no_revocation_check(),
        clock=fake_clock,
        metrics=JwtMetrics(CollectorRegistry()),
    )
    with pytest.raises(Unavailable):
        validator.validate(authority.issue_jwt_svid(WORKLOAD, AUD))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audience": ""},
        {"leeway": dt.timedelta(minutes=2)},
        {"leeway": dt.timedelta(seconds=-1)},
        {"cache_size": -1},
    ],
)
def test_bad_configuration_is_refused(authority: TestAuthority, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"audience": AUD, "revocations": no_revocation_check(), **kwargs}
    with pytest.raises(InvalidConfig):
        JwtValidator(BundleSet.of(authority.bundle()), **args)
