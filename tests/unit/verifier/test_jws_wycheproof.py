"""Wycheproof JWS vectors against the JWS layer (parse_compact, check_jwt_header, verify_signature)
and, with each vector's key, the full JwtValidator."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt_support import (
    WORKLOAD,
    Harness,
    b64,
    sign_token,
)

from s2s.core.bundle import Bundle, JwtAuthority
from s2s.core.errors import InvalidToken
from s2s.core.jwtsvid import algorithms_for_key, check_jwt_header
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.jws import parse_compact, signature_checks, verify_signature

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

# Vendored in the repository (tests/vectors/wycheproof/SOURCE says which version). A missing or
# unreadable file fails the collection of this module, and so the run: it never means zero cases.
WYCHEPROOF = (
    Path(__file__).resolve().parents[2] / "vectors" / "wycheproof" / "json_web_signature_test.json"
)


def _wycheproof_groups() -> list[dict[str, Any]]:
    try:
        text = WYCHEPROOF.read_text()
    except OSError as exc:
        raise RuntimeError(f"the Wycheproof JWS vectors cannot be read from {WYCHEPROOF}") from exc
    return list(json.loads(text)["testGroups"])


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


def _verify_bound(token: Any, key: Any, pinned: frozenset[str] | None = None) -> None:
    """The same through the checks a validator keeps per key (``signature_checks``)."""
    jws = parse_compact(token)
    alg = check_jwt_header(jws.header)
    allowed = algorithms_for_key(key) if pinned is None else algorithms_for_key(key) & pinned
    check = signature_checks(key, allowed).get(alg)
    if check is None:
        raise InvalidToken("the algorithm does not match the key", reason="alg")
    check(jws.signing_input, jws.signature)


def test_wycheproof_vectors_are_present() -> None:
    assert len(_vector_cases(True)) > 300, "the Wycheproof JWS vectors are missing"


@pytest.mark.parametrize(("public", "vector"), _vector_cases(True))
def test_wycheproof_signature_vectors(public: dict[str, Any], vector: dict[str, Any]) -> None:
    key = _jwk_key(public)
    for verify in (_verify_jws, _verify_bound):
        if vector["result"] == "valid":
            verify(vector["jws"], key)
        elif "WrongPrimitive" in vector["flags"]:
            # A valid RS*/PS* signature by a key whose JWK says "alg": "PS512". SPIFFE bundle
            # keys carry no alg, so a bundle RSA key verifies every RS*/PS* algorithm (as
            # go-spiffe does); a key pinned to its JWK alg rejects the vector.
            with pytest.raises(InvalidToken) as info:
                verify(vector["jws"], key, pinned=frozenset({public["alg"]}))
            assert info.value.reason in ("alg", "signature")
        else:
            with pytest.raises(InvalidToken):
                verify(vector["jws"], key)


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
