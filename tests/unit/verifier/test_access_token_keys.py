"""SigningKeySet.from_jwks: which JWKs become verification keys, and which sets are refused."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidBundle
from s2s.core.jwk import public_jwk
from s2s.testing_oauth import TestTokenIssuer
from s2s.verifier.access_token_keys import SigningKeySet


@pytest.fixture
def keys(fake_clock: FakeClock) -> TestTokenIssuer:
    return TestTokenIssuer(clock=fake_clock)


def test_a_sig_key_is_taken_and_bound_to_its_algorithm(keys: TestTokenIssuer) -> None:
    key_set = SigningKeySet.from_jwks({"keys": [keys.jwk()]})
    key = key_set.get(keys.kid)
    assert key is not None
    assert key.algorithms == {"ES256"}
    assert len(key_set) == 1


def test_a_key_without_use_or_alg_gets_its_type_algorithms() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_set = SigningKeySet.from_jwks({"keys": [{"kid": "r", **public_jwk(rsa_key.public_key())}]})
    key = key_set.get("r")
    assert key is not None
    assert key.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


@pytest.mark.parametrize(
    "change",
    [
        {"use": "enc"},
        {"use": "jwt-svid"},  # a SPIFFE bundle key is not the AS's
        {"key_ops": ["encrypt"]},
        {"kid": None},
        {"kid": ""},
    ],
)
def test_keys_for_other_uses_or_without_kid_are_left_out(
    keys: TestTokenIssuer, change: dict[str, Any]
) -> None:
    jwk = {k: v for k, v in {**keys.jwk(), **change}.items() if v is not None}
    assert (
        SigningKeySet.from_jwks(
            {"keys": [jwk, TestTokenIssuer(clock=keys.clock, kid="other").jwk()]}
        ).get(keys.kid)
        is None
    )


def test_okp_keys_are_left_out() -> None:
    okp = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "e",
    }
    assert len(SigningKeySet.from_jwks({"keys": [okp]})) == 0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "'keys' list"),
        ({"keys": {}}, "'keys' list"),
        ({"keys": ["x"]}, "not a JSON object"),
    ],
)
def test_a_malformed_set_is_refused(document: object, message: str) -> None:
    with pytest.raises(InvalidBundle, match=message):
        SigningKeySet.from_jwks(document)


def test_private_key_material_refuses_the_whole_set(keys: TestTokenIssuer) -> None:
    with pytest.raises(InvalidBundle, match="private key material"):
        SigningKeySet.from_jwks({"keys": [keys.jwk(d="AAAA")]})


def test_the_same_kid_twice_is_refused(keys: TestTokenIssuer) -> None:
    twin = TestTokenIssuer(clock=keys.clock, kid=keys.kid)
    with pytest.raises(InvalidBundle, match="appears twice"):
        SigningKeySet.from_jwks({"keys": [keys.jwk(), twin.jwk()]})


def test_an_alg_that_does_not_fit_the_key_is_refused(keys: TestTokenIssuer) -> None:
    with pytest.raises(InvalidBundle, match="does not fit"):
        SigningKeySet.from_jwks({"keys": [keys.jwk(alg="RS256")]})
    with pytest.raises(InvalidBundle, match="does not fit"):
        SigningKeySet.from_jwks({"keys": [keys.jwk(alg="HS256")]})


def test_weak_or_unusual_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidBundle):
        SigningKeySet.from_jwks({"keys": [{"kid": "s", **public_jwk(small.public_key())}]})
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert SigningKeySet.from_jwks({"keys": [{"kid": "p", **public_jwk(p384.public_key())}]}).get(
        "p"
    ).algorithms == {"ES384"}  # type: ignore[union-attr]
    with pytest.raises(InvalidBundle):
        SigningKeySet.from_jwks(
            {"keys": [{"kid": "b", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}
        )
