"""The validator's uncached path: remembered headers, the claims checker, the JSON scanner fast
path and the DER signature conversion give the same verdicts as the reference pieces
(parse_compact, check_jwt_header, check_jwt_claims, verify_signature), token by token."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt_support import AUD, WORKLOAD, Harness, b64, sign_token
from prometheus_client import CollectorRegistry

from s2s.core.b64 import b64url_decode
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken
from s2s.core.jwtsvid import (
    JwtClaimsChecker,
    algorithms_for_key,
    check_jwt_claims,
    check_jwt_header,
)
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier import jwt as jwt_module
from s2s.verifier.jws import ecdsa_der, signature_checks, verify_signature
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.revocation_choice import no_revocation_check


def _strict_json(raw: bytes) -> Any:
    """The reference JSON reading: the whole decoder, duplicate names and constants refused."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(dict(items)) != len(items):
            raise ValueError("duplicate")
        return dict(items)

    def constant(name: str) -> None:
        raise ValueError(name)

    decoder = json.JSONDecoder(object_pairs_hook=pairs, parse_constant=constant)
    try:
        value = decoder.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidToken("not JSON", reason="malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken("not an object", reason="malformed")
    return value


def _reference(h: Harness, token: str) -> str:
    """The verdict of the reference pipeline, built from the plain pieces: 'ok' or the reason."""
    try:
        parts = token.split(".")
        if len(parts) != 3 or not parts[0]:  # b64url_decode checks the alphabet
            raise InvalidToken("form", reason="malformed")
        try:
            head, body, sig = (b64url_decode(p, canonical=True) for p in parts)
        except ValueError:
            raise InvalidToken("b64", reason="malformed") from None
        header = _strict_json(head)
        alg = check_jwt_header(header)
        claims = check_jwt_claims(_strict_json(body), audience=AUD, now=h.clock.now())
        bundle = h.bundles.get(claims.spiffe_id.trust_domain)
        if bundle is None:
            return "untrusted"
        authority = bundle.jwt_authority(header["kid"])
        if authority is None:
            return "kid"
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        verify_signature(alg, authority.public_key, signing_input, sig)
    except InvalidToken as exc:
        return exc.reason
    return "ok"


def _verdict(h: Harness, token: str) -> str:
    try:
        h.validator.validate(token)
    except InvalidToken as exc:
        return exc.reason
    return "ok"


def _claim_variants(h: Harness) -> list[dict[str, Any]]:
    now = int(h.clock.now().timestamp())
    base = h.claims()
    out: list[dict[str, Any]] = [base]
    for name, values in {
        "exp": [None, "1", True, now - 31, now - 29, 1.5e300, float(now + 60), -1, 2**70, [now]],
        "iat": [None, now + 31, now + 29, "x", False, float(now), -5],
        "nbf": [None, now + 31, now + 29, 0, "0"],
        "sub": [None, "", "spiffe://EXAMPLE.org/x", "spiffe://example.org/a/../b", 7,
                "spiffe://other.org/svc", "spiffe://nobody.org/svc", WORKLOAD + "/"],
        "aud": [None, "", [], [AUD], ["x", AUD], ["x"], [AUD, ""], [AUD, 3], AUD + "x", {}],
        "jti": [None, "", 5, "j-1"],
        "s2s_agent": [None, "spiffe://example.org/s2s/agent/x", "spiffe://other.org/a", "x", 1],
    }.items():  # fmt: skip
        for value in values:
            out.append({**base, name: value})
        out.append({k: v for k, v in base.items() if k != name})
    return out


def test_claim_variants_get_the_reference_verdict(h: Harness) -> None:
    verdicts = set()
    for claims in _claim_variants(h):
        sub = claims.get("sub")
        key = h.other.jwt_key if sub == "spiffe://other.org/svc" else h.ca.jwt_key
        kid = h.other.jwt_kid if key is h.other.jwt_key else h.ca.jwt_kid
        token = sign_token({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims, key, "ES256")
        expected = _reference(h, token)
        assert _verdict(h, token) == expected, claims
        assert _verdict(h, token) == expected, claims  # the second time, memos warm
        verdicts.add(expected)
    assert {"ok", "exp", "sub", "aud", "malformed", "untrusted"} <= verdicts


def _header_variants(h: Harness) -> list[dict[str, Any] | bytes]:
    kid = h.ca.jwt_kid
    return [
        {"alg": "ES256", "kid": kid, "typ": "JWT"},
        {"alg": "ES256", "kid": kid},
        {"alg": "ES256", "kid": kid, "typ": "JOSE"},
        {"alg": "ES256", "kid": kid, "typ": "at+jwt"},
        {"alg": "ES384", "kid": kid},
        {"alg": "none", "kid": kid},
        {"alg": "HS256", "kid": kid},
        {"alg": "ES256"},
        {"alg": "ES256", "kid": ""},
        {"alg": "ES256", "kid": 5},
        {"alg": "ES256", "kid": "unknown"},
        {"alg": "ES256", "kid": kid, "crit": ["b64"]},
        {"alg": "ES256", "kid": kid, "jwk": {}},
        f'{{"alg":"ES256","kid":"{kid}","kid":"{kid}"}}'.encode(),
        f' {{"alg":"ES256","kid":"{kid}"}} '.encode(),
        f'{{"alg":"ES256","kid":"{kid}"}}x'.encode(),
        f'{{"alg":"ES256","kid":"{kid}"}}{{}}'.encode(),
        f'{{"alg":"ES256","kid":"{kid}","x":NaN}}'.encode(),
        f'{{"alg":"ES256","kid":"{kid}","x":{{"a":1,"a":2}}}}'.encode(),
        b'["ES256"]',
        b"\xff{}",
    ]


def _signed(h: Harness, header: dict[str, Any] | bytes, claims: bytes) -> str:
    """A token with exactly these header and payload bytes, signed by the CA's JWT key."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = f"{b64(raw)}.{b64(claims)}"
    der = h.ca.jwt_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_header_variants_get_the_reference_verdict(h: Harness) -> None:
    claim_sets = [
        json.dumps(h.claims()).encode(),
        json.dumps(h.claims(aud="elsewhere")).encode(),
        b' {"sub":"%s","aud":"%s","exp":%d} ' % (WORKLOAD.encode(), AUD.encode(), 2**40),
        b'{"sub":"%s","sub":"%s","aud":"%s","exp":%d}'
        % (WORKLOAD.encode(), WORKLOAD.encode(), AUD.encode(), 2**40),
    ]
    verdicts = set()
    for _ in range(2):  # the second round runs with every good header remembered
        for header in _header_variants(h):
            for claims in claim_sets:
                token = _signed(h, header, claims)
                expected = _reference(h, token)
                assert _verdict(h, token) == expected, (header, claims)
                verdicts.add(expected)
    assert {"ok", "alg", "typ", "kid", "header", "malformed", "aud"} <= verdicts


def test_a_remembered_header_still_needs_its_key_in_the_current_bundle(h: Harness) -> None:
    token = h.ca.issue_jwt_svid(WORKLOAD, AUD)
    h.validator.validate(token)
    assert token.split(".")[0] in h.validator._headers
    # Same header segment, but the key is no longer in the bundle: the kid is unknown now.
    h.bundles = BundleSet.of(h.other.bundle(), replace(h.ca.bundle(), jwt_authorities=()))
    h.reject(h.ca.issue_jwt_svid(WORKLOAD, AUD), "kid")


def test_rejected_headers_are_not_remembered_and_the_memo_is_bounded(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = sign_token(
        {"alg": "ES256", "kid": h.ca.jwt_kid, "typ": "x"}, h.claims(), h.ca.jwt_key, "ES256"
    )
    for _ in range(2):
        h.reject(bad, "typ")
    assert h.validator._headers == {}
    monkeypatch.setattr(jwt_module, "_HEADER_MEMO", 4)
    for i in range(9):
        header = {"alg": "ES256", "kid": h.ca.jwt_kid, "n": i}
        h.validator.validate(sign_token(header, h.claims(), h.ca.jwt_key, "ES256"))
        assert 1 <= len(h.validator._headers) <= 4


def test_the_subject_memo_is_bounded_and_keeps_no_failures(h: Harness) -> None:
    checker = h.validator._claims
    for i in range(checker._memo_size + 10):
        h.validator.validate(h.ca.issue_jwt_svid(f"{WORKLOAD}/{i}", AUD))
        assert len(checker._ids) <= checker._memo_size
    h.reject(sign_token(h.header(), h.claims(sub="spiffe://x/../y"), h.ca.jwt_key, "ES256"), "sub")
    assert "spiffe://x/../y" not in checker._ids
    assert all(str(v) == k for k, v in checker._ids.items())
    assert all(v.trust_domain == TrustDomain("example.org") for v in checker._ids.values())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(["sub", "aud", "exp", "iat", "nbf", "jti", "s2s_agent", "x"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(),
            st.text(max_size=8), st.sampled_from([WORKLOAD, AUD, "spiffe://other.org/svc"]),
            st.lists(st.sampled_from([AUD, "", "x", 1]), max_size=3),
        ),
    )
)  # fmt: skip
def test_random_claims_get_the_reference_verdict(h: Harness, claims: dict[str, Any]) -> None:
    try:
        payload = json.dumps(claims, allow_nan=True).encode()
    except ValueError:
        return
    token = sign_token(h.header(), payload, h.ca.jwt_key, "ES256")
    assert _verdict(h, token) == _reference(h, token)


@pytest.mark.parametrize("size", [1, 2, 32, 48, 66])
def test_ecdsa_der_is_the_der_of_r_and_s(size: int) -> None:
    cases = [bytes(2 * size), b"\xff" * (2 * size), b"\x80" + bytes(2 * size - 1)]
    cases += [bytes(size - 1) + b"\x01" + b"\x7f" * size, bytes(size) + b"\x80" * size]
    for i in range(300):
        sig = bytearray(os.urandom(2 * size))
        if i % 3 == 0:
            sig[: (i % size) + 1] = bytes((i % size) + 1)
        if i % 5 == 0:
            sig[size] = 0
        cases.append(bytes(sig))
    for sig in cases:
        r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
        assert ecdsa_der(sig, size) == encode_dss_signature(r, s), sig.hex()


def test_the_result_equals_the_reference_claims_and_stays_frozen(h: Harness) -> None:
    agent = "spiffe://example.org/s2s/agent/node-1"
    for extra in ({}, {"jti": "j-9"}, {"s2s_agent": agent}, {"aud": [AUD, "x"]}, {"nbf": 5}):
        claims = h.claims(**extra)
        token = sign_token(h.header(), claims, h.ca.jwt_key, "ES256")
        for _ in range(2):  # first through the full checks, then with the subject remembered
            result = h.validator.validate(token)
            expected = check_jwt_claims(claims, audience=AUD, now=h.clock.now())
            assert result.claims == expected
            assert result.spiffe_id == expected.spiffe_id
            assert dict(result.claims.claims) == claims
            assert (result.claims.jti, result.claims.agent) == (expected.jti, expected.agent)
            with pytest.raises(FrozenInstanceError):
                result.claims.jti = "other"  # type: ignore[misc]
            with pytest.raises(FrozenInstanceError):
                result.spiffe_id = expected.spiffe_id  # type: ignore[misc]
            with pytest.raises(TypeError):
                result.claims.claims["sub"] = "x"  # type: ignore[index]


def test_acceptances_are_counted_exactly_across_threads_and_exposed(
    fake_clock: FakeClock, authority: TestAuthority
) -> None:
    registry = CollectorRegistry()
    metrics = JwtMetrics(registry)
    validator = JwtValidator(
        BundleSet.of(authority.bundle()),
        AUD,
        revocations=no_revocation_check(),
        clock=fake_clock,
        cache_size=0,
        metrics=metrics,
    )
    tokens = [authority.issue_jwt_svid(WORKLOAD, AUD, jti=f"c-{i}") for i in range(50)]
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        for token in tokens:
            validator.validate(token)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert metrics.accepted.value() == 200
    # twins: a rejection is not an acceptance
    with pytest.raises(InvalidToken):
        validator.validate(authority.issue_jwt_svid(WORKLOAD, "spiffe://example.org/other"))
    assert metrics.accepted.value() == 200
    assert registry.get_sample_value("s2s_verifier_jwts_accepted_total") == 200
    assert registry.get_sample_value("s2s_verifier_jwt_rejections_total", {"reason": "aud"}) == 1


def test_the_time_memo_is_bounded_and_gives_the_instant_itself(h: Harness) -> None:
    checker = JwtClaimsChecker(AUD, memo_size=8)
    now = int(h.clock.now().timestamp())
    checker.check({"sub": WORKLOAD, "aud": AUD, "exp": now + 9, "iat": now}, now=now)  # sub known
    for i in range(40):
        claims = {"sub": WORKLOAD, "aud": AUD, "exp": now + 300 + i, "iat": now - i}
        checked = checker.check(claims, now=now)
        assert checked.expiry == datetime.fromtimestamp(now + 300 + i, UTC)
        assert checked.issued_at == datetime.fromtimestamp(now - i, UTC)
        assert checked.expiry.tzinfo is UTC
        assert len(checker._times) <= 8


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_a_kept_signature_check_gives_the_verdict_of_verify_signature(
    curve: ec.EllipticCurve,
) -> None:
    key = ec.generate_private_key(curve)
    public, size = key.public_key(), (curve.key_size + 7) // 8
    (alg,) = algorithms_for_key(public)
    check = signature_checks(public, algorithms_for_key(public))[alg]
    digest = {32: hashes.SHA256(), 48: hashes.SHA384(), 66: hashes.SHA512()}[size]
    seen_zero = False
    for i in range(4000):  # until a leading zero byte came up (1 in ~128 signatures)
        if seen_zero and i >= 40:
            break
        message = b"m-%d" % i
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        seen_zero |= raw[0] == 0 or raw[size] == 0
        cases = [raw, raw[:-1], raw + b"\x00", bytes(2 * size), raw[size:] + raw[:size]]
        cases.append(raw[:5] + bytes([raw[5] ^ 1]) + raw[6:])
        for sig in cases if i < 40 else cases[:1]:
            expected = _signature_verdict(verify_signature, alg, public, message, sig)
            assert _signature_verdict(check, message, sig) == expected, sig.hex()
    assert seen_zero  # an R or S with a leading zero byte went through the general path


def _signature_verdict(verify: Callable[..., None], *args: Any) -> str:
    try:
        verify(*args)
    except InvalidToken as exc:
        return exc.reason
    return "ok"


def test_a_key_keeps_checks_only_for_the_algorithms_it_is_bound_to(h: Harness) -> None:
    public = h.ca.jwt_key.public_key()
    assert set(signature_checks(public, algorithms_for_key(public))) == {"ES256"}
    assert signature_checks(public, frozenset({"ES256", "HS256", "none"})).keys() == {"ES256"}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    checks = signature_checks(rsa_key, algorithms_for_key(rsa_key))
    assert set(checks) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    token = sign_token(h.header(), h.claims(), h.ca.jwt_key, "ES256")
    head, body, sig = token.split(".")
    with pytest.raises(InvalidToken) as info:  # an ES256 signature given to an RSA check
        checks["RS256"](f"{head}.{body}".encode(), b64url_decode(sig))
    assert info.value.reason == "signature"
