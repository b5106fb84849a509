"""JwtValidator: every accepting case next to the rejections the issue lists, plus the cache."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from prometheus_client import CollectorRegistry

from s2s.core.bundle import Bundle, BundleSet, JwtAuthority
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken, Unavailable
from s2s.core.jwtsvid import algorithms_for_key, check_jwt_header
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority
from s2s.verifier.jwt import (
    REJECTION_REASONS,
    JwtMetrics,
    JwtValidator,
    parse_compact,
    verify_signature,
)

AUD = "spiffe://example.org/api"
WORKLOAD = "spiffe://example.org/billing"
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(header: dict[str, Any], claims: dict[str, Any] | bytes, key: Any, alg: str) -> str:
    """A compact JWS made by hand, so any header/key/algorithm mismatch can be built."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}".encode()
    digest = _HASHES[alg[2:]]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        sig = key.sign(signing_input, pss, digest)
    else:
        sig = key.sign(signing_input, padding.PKCS1v15(), digest)
    return f"{signing_input.decode()}.{b64(sig)}"


class Harness:
    """A validator over two trust domains; tests swap ``bundles`` and ``revocations`` whole."""

    def __init__(self, clock: FakeClock, authority: TestAuthority) -> None:
        self.clock = clock
        self.ca = authority
        self.other = TestAuthority("other.org", clock=clock)
        self.bundles = BundleSet.of(authority.bundle(), self.other.bundle())
        self.revocations = RevocationSet.EMPTY
        self.revocations_stale = False
        self.metrics = JwtMetrics(CollectorRegistry())
        self.validator = JwtValidator(
            _Lookup(lambda: self.bundles),
            AUD,
            revocations=_Lookup(self._current_revocations),
            clock=clock,
            metrics=self.metrics,
        )

    def _current_revocations(self) -> RevocationSet:
        if self.revocations_stale:
            raise Unavailable("the revocation feed has not confirmed its set for 40 s")
        return self.revocations

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(self.clock.now().timestamp())
        return {"sub": WORKLOAD, "aud": AUD, "exp": now + 300, "iat": now, **extra}

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "ES256", "kid": self.ca.jwt_kid, "typ": "JWT", **extra}

    def reject(self, token: Any, reason: str) -> InvalidToken:
        """Assert the validator rejects ``token`` for ``reason`` and counts it."""
        before = self.metrics.rejection_count(reason)
        with pytest.raises(InvalidToken) as info:
            self.validator.validate(token)
        assert info.value.reason == reason, str(info.value)
        assert self.metrics.rejection_count(reason) == before + 1
        return info.value


class _Lookup:
    """A real, tiny BundleLookup / RevocationLookup: whatever the harness holds now."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self.current = get


@pytest.fixture
def h(fake_clock: FakeClock, authority: TestAuthority) -> Harness:
    return Harness(fake_clock, authority)


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


def _record(
    h: Harness, kind: RevocationKind, value: str, at: dt.datetime | None = None
) -> RevocationRecord:
    revoked_at = at if at is not None else h.clock.now()
    return RevocationRecord(kind, value, revoked_at, revoked_at + dt.timedelta(hours=1))


def test_revoked_jti_is_rejected(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="jti-1")
    twin = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="jti-2")
    h.revocations = RevocationSet.of([_record(h, RevocationKind.JTI, "jti-1")], version=1)
    h.reject(token, "revoked")
    assert h.validator.validate(twin)


def test_revoked_spiffe_id_covers_tokens_issued_before_the_revocation(h: Harness) -> None:
    before = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    no_iat = h.ca.issue_jwt_svid(WORKLOAD, AUD, drop_claims=["iat"])
    h.clock.advance(seconds=10)
    h.revocations = RevocationSet.of([_record(h, RevocationKind.SPIFFE_ID, WORKLOAD)], version=1)
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
        _Lookup(no_bundles_yet), AUD, clock=fake_clock, metrics=JwtMetrics(CollectorRegistry())
    )
    with pytest.raises(Unavailable):
        validator.validate(authority.issue_jwt_svid(WORKLOAD, AUD))


# --- the cache ----------------------------------------------------------------------------------


def test_repeated_token_is_a_cache_hit(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    first = h.validator.validate(token)
    assert (h.validator.cache_hits, h.validator.cache_misses) == (0, 1)
    assert h.validator.validate(token) is first
    assert (h.validator.cache_hits, h.validator.cache_misses) == (1, 1)


def test_rejections_are_not_cached(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, "wrong")
    h.reject(token, "aud")
    h.reject(token, "aud")
    assert h.validator.cache_len() == 0


def test_cache_is_dropped_when_the_revocation_set_changes(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="j")
    h.validator.validate(token)
    h.validator.validate(token)
    h.revocations = RevocationSet.of([_record(h, RevocationKind.JTI, "j")], version=1)
    h.reject(token, "revoked")
    h.revocations = RevocationSet.of([], version=2)
    assert h.validator.validate(token)
    assert h.validator.cache_hits == 1


def test_cache_is_dropped_when_the_bundle_changes(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    h.validator.validate(token)
    # The trust domain rotated its JWT key away: the cached success must not survive.
    h.bundles = h.bundles.with_bundle(Bundle(h.ca.trust_domain, x509_authorities=(h.ca.root,)))
    h.reject(token, "kid")
    h.bundles = h.bundles.without(h.ca.trust_domain)
    h.reject(token, "untrusted")


def test_cache_entry_is_dropped_at_exp(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, ttl=dt.timedelta(seconds=60))
    h.validator.validate(token)
    h.clock.advance(seconds=59)
    h.validator.validate(token)
    assert h.validator.cache_hits == 1
    h.clock.advance(seconds=1)  # at exp: no hit; the leeway still accepts it on a fresh check
    h.validator.validate(token)
    assert (h.validator.cache_hits, h.validator.cache_misses) == (1, 2)
    h.clock.advance(seconds=31)
    h.reject(token, "exp")


def test_concurrent_validations_never_accept_after_seeing_a_revocation(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD, jti="hot")
    revoked = RevocationSet.of([_record(h, RevocationKind.JTI, "hot")], version=1)
    h.validator.validate(token)
    started = threading.Barrier(5)
    outcomes: list[list[str]] = [[] for _ in range(4)]

    def worker(out: list[str]) -> None:
        started.wait()
        deadline = time.monotonic() + 10
        while out.count("revoked") < 200 and time.monotonic() < deadline:
            try:
                h.validator.validate(token)
                out.append("ok")
            except InvalidToken as exc:  # any other exception fails the thread, and the test
                out.append(exc.reason)

    threads = [threading.Thread(target=worker, args=(o,)) for o in outcomes]
    for t in threads:
        t.start()
    started.wait()
    while sum(len(o) for o in outcomes) < 2000:
        time.sleep(0.0005)
    h.revocations = revoked
    for t in threads:
        t.join()
    for out in outcomes:
        assert set(out) <= {"ok", "revoked"}
        assert "revoked" in out
        first = out.index("revoked")
        assert "ok" not in out[first:], "a cached success came back after the revocation"
    h.reject(token, "revoked")


def test_cache_is_bounded_lru(fake_clock: FakeClock, authority: TestAuthority) -> None:
    validator = JwtValidator(
        BundleSet.of(authority.bundle()), AUD, clock=fake_clock, cache_size=2,
        metrics=JwtMetrics(CollectorRegistry()),
    )  # fmt: skip
    a, b, c = (authority.issue_jwt_svid(f"{WORKLOAD}/{n}", AUD) for n in "abc")
    validator.validate(a)
    validator.validate(b)
    validator.validate(a)  # a is now the most recently used
    validator.validate(c)  # evicts b
    assert validator.cache_len() == 2
    validator.validate(a)
    assert validator.cache_hits == 2
    validator.validate(b)
    assert validator.cache_misses == 4


def test_cache_can_be_disabled(fake_clock: FakeClock, authority: TestAuthority) -> None:
    validator = JwtValidator(
        BundleSet.of(authority.bundle()), AUD, clock=fake_clock, cache_size=0,
        metrics=JwtMetrics(CollectorRegistry()),
    )  # fmt: skip
    token = authority.issue_jwt_svid(WORKLOAD, AUD)
    validator.validate(token)
    validator.validate(token)
    assert (validator.cache_hits, validator.cache_len()) == (0, 0)


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
    args: dict[str, Any] = {"audience": AUD, **kwargs}
    with pytest.raises(InvalidConfig):
        JwtValidator(BundleSet.of(authority.bundle()), **args)


# --- Wycheproof JWS vectors ---------------------------------------------------------------------
#
# The vectors sign "foo"-like payloads, not JWT-SVID claims, so they exercise the JWS layer the
# validator is built from: parse_compact (strict compact form and base64url), check_jwt_header
# (alg allowlist, no embedded keys) and verify_signature (algorithm bound to the key type, exact
# signature lengths, PSS salt = hash size). Groups and why some do not apply:
#   hs256 / rfc7520 HS256 / base64 (HMAC): JWT-SVID forbids HS*, so *every* vector there, valid
#     or not, must be rejected (reason alg or malformed) - asserted below.
#   rsa_encryption / ec_key_for_encryption (use=enc, key_ops=[encrypt]): such a JWK never becomes
#     a JWT authority: a SPIFFE bundle only takes keys with use=jwt-svid (asserted below).
#   JSON serialization vectors (tcId 17): compact serialization only, rejected as malformed.
# Every other group runs: invalid vectors must raise InvalidToken; valid ones must verify. Each
# key is also used to mint a SPIFFE-shaped token that the full validator must accept.

WYCHEPROOF = Path("/work/shared/vectors/wycheproof/json_web_signature_test.json")


def _wycheproof_groups() -> list[dict[str, Any]]:
    if not WYCHEPROOF.exists():
        return []
    return list(json.loads(WYCHEPROOF.read_text())["testGroups"])


def _jwk_key(jwk: dict[str, Any]) -> Any:
    loader = ECAlgorithm if jwk["kty"] == "EC" else RSAAlgorithm
    return loader.from_jwk(json.dumps(jwk))


def _vector_cases(signing: bool) -> list[Any]:
    cases = []
    for group in _wycheproof_groups():
        public = group.get("public") or {}
        is_signing_key = public.get("kty") in ("EC", "RSA") and public.get("use", "sig") == "sig"
        if is_signing_key and "encrypt" not in public.get("key_ops", ()) and signing:
            cases += [
                pytest.param(public, t, id=f"tc{t['tcId']}-{t['comment']}") for t in group["tests"]
            ]
        elif not is_signing_key and not signing:
            cases += [
                pytest.param(group, t, id=f"tc{t['tcId']}-{t['comment']}") for t in group["tests"]
            ]
    return cases


def _verify_jws(token: Any, key: Any, pinned: frozenset[str] | None = None) -> None:
    jws = parse_compact(token)
    alg = check_jwt_header(jws.header)
    verify_signature(alg, key, jws.signing_input, jws.signature, pinned=pinned)


def test_wycheproof_vectors_are_present() -> None:
    assert len(_vector_cases(True)) > 300, "the Wycheproof JWS vectors are missing"


@pytest.mark.parametrize(("public", "vector"), _vector_cases(True))
def test_wycheproof_signature_vectors(public: dict[str, Any], vector: dict[str, Any]) -> None:
    key = _jwk_key(public)
    if vector["result"] == "valid":
        _verify_jws(vector["jws"], key)
    elif "WrongPrimitive" in vector["flags"]:
        # A valid RS*/PS* signature by a key whose JWK says "alg": "PS512". SPIFFE bundle keys
        # carry no alg, so a bundle RSA key verifies every RS*/PS* algorithm (as go-spiffe does);
        # a key pinned to its JWK alg rejects the vector.
        with pytest.raises(InvalidToken) as info:
            _verify_jws(vector["jws"], key, pinned=frozenset({public["alg"]}))
        assert info.value.reason in ("alg", "signature")
    else:
        with pytest.raises(InvalidToken):
            _verify_jws(vector["jws"], key)


@pytest.mark.parametrize(("group", "vector"), _vector_cases(False))
def test_wycheproof_vectors_without_a_signing_key_are_all_rejected(
    group: dict[str, Any], vector: dict[str, Any], h: Harness
) -> None:
    public = group.get("public")
    if public is not None:
        # use=enc / key_ops=[encrypt]: a SPIFFE bundle ignores a key without use=jwt-svid, so
        # the token's kid is unknown to any validator.
        bundle = Bundle.decode(h.ca.trust_domain, json.dumps({"keys": [public]}))
        assert bundle.jwt_authorities == ()
        assert bundle.jwt_authority(public["kid"]) is None
        return
    # HMAC groups: HS* is outside the JWT-SVID allowlist, so even "valid" MACs are rejected.
    with pytest.raises(InvalidToken) as info:
        check_jwt_header(parse_compact(vector["jws"]).header)
    assert info.value.reason in ("alg", "malformed")
    with pytest.raises(InvalidToken) as info:
        h.validator.validate(vector["jws"])
    assert info.value.reason in ("alg", "malformed")


def _signing_groups() -> list[Any]:
    out = []
    for group in _wycheproof_groups():
        private, public = group.get("private") or {}, group.get("public") or {}
        if (
            public.get("kty") in ("EC", "RSA")
            and "d" in private
            and public.get("use", "sig") == "sig"
        ):
            if "encrypt" in public.get("key_ops", ()):
                continue
            out.append(pytest.param(private, public, id=f"{group['comment']}-{public.get('kid')}"))
    return out


@pytest.mark.parametrize(("private", "public"), _signing_groups())
def test_wycheproof_keys_sign_spiffe_tokens_the_validator_accepts(
    private: dict[str, Any], public: dict[str, Any], h: Harness
) -> None:
    key, kid = _jwk_key(private), str(public.get("kid", "wycheproof"))
    h.bundles = h.bundles.with_bundle(
        Bundle(h.ca.trust_domain, jwt_authorities=(JwtAuthority(kid, _jwk_key(public)),))
    )
    alg = next(iter(sorted(algorithms_for_key(key))))
    token = sign_token(h.header(kid=kid, alg=alg), h.claims(), key, alg)
    assert h.validator.validate(token).spiffe_id == SpiffeId.parse(WORKLOAD)
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 0x80
    h.reject(f"{head}.{body}.{b64(bytes(raw))}", "signature")
