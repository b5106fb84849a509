"""JWT-SVID header and claim checks, against tokens minted with PyJWT."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.errors import InvalidRequest, InvalidToken
from s2s.core.jwtsvid import (
    AGENT_CLAIM,
    ALLOWED_ALGORITHMS,
    DEFAULT_LEEWAY,
    MAX_LEEWAY,
    JwtSvidClaims,
    algorithms_for_key,
    build_jwt_claims,
    check_jwt_claims,
    check_jwt_header,
)
from s2s.core.spiffe_id import SpiffeId

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
SUB = "spiffe://example.org/ns/shop/sa/billing"
AUD = "spiffe://example.org/ns/shop/sa/frontend"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def good_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": SUB,
        "aud": [AUD],
        "exp": int((NOW + dt.timedelta(minutes=5)).timestamp()),
        "iat": int(NOW.timestamp()),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not _DROP}


_DROP = object()


def mint(
    key: Any,
    claims: Mapping[str, Any] | None = None,
    *,
    alg: str = "ES256",
    headers: Mapping[str, Any] | None = None,
) -> str:
    all_headers = {"kid": "kid-1", "typ": "JWT", **(headers or {})}
    return jwt.encode(dict(claims or good_claims()), key, algorithm=alg, headers=all_headers)


def split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode header and claims without verifying (as the verifier does before key lookup)."""
    head, body, _sig = token.split(".")
    return _b64json(head), _b64json(body)


def _b64json(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def check_token(token: str, **kwargs: Any) -> JwtSvidClaims:
    header, claims = split(token)
    check_jwt_header(header)
    return check_jwt_claims(claims, audience=kwargs.pop("audience", AUD), now=NOW, **kwargs)


# --- the good token ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "RS512", "PS384"])
def test_a_pyjwt_token_passes(alg: str, ec_key: Any, rsa_key: Any) -> None:
    key = ec_key if alg.startswith("ES") else rsa_key
    token = mint(key, alg=alg)
    header, _ = split(token)
    assert check_jwt_header(header) == alg
    result = check_token(token)
    assert result.spiffe_id == SpiffeId.parse(SUB)
    assert result.audience == (AUD,)
    assert result.expiry == NOW + dt.timedelta(minutes=5)
    assert result.issued_at == NOW
    assert result.jti is None
    assert result.claims["sub"] == SUB
    # and the signature verifies with PyJWT, the way a verifier would use it
    jwt.decode(
        token,
        key.public_key(),
        algorithms=[alg],
        audience=AUD,
        options={"verify_exp": False, "verify_iat": False},
    )


def test_typ_may_be_absent_or_jose(ec_key: Any) -> None:
    for typ in ("JOSE", "JWT"):
        check_token(mint(ec_key, headers={"typ": typ}))
    header, _ = split(mint(ec_key))
    del header["typ"]
    assert check_jwt_header(header) == "ES256"


def test_claims_are_read_only_and_the_result_is_hashable(ec_key: Any) -> None:
    result = check_token(mint(ec_key, good_claims(jti="abc", extra={"k": 1})))
    assert result.jti == "abc"
    assert result.claims["extra"] == {"k": 1}
    with pytest.raises(TypeError):
        result.claims["sub"] = "x"  # type: ignore[index]
    assert isinstance(hash(result), int)


# --- tampered headers --------------------------------------------------------------------------


def _hs256(secret: bytes) -> str:
    return jwt.encode(good_claims(), secret, algorithm="HS256", headers={"kid": "kid-1"})


@pytest.mark.parametrize(
    ("header_change", "reason"),
    [
        ({"alg": "none"}, "alg"),
        ({"alg": "HS256"}, "alg"),
        ({"alg": "EdDSA"}, "alg"),
        ({"alg": "es256"}, "alg"),
        ({"alg": None}, "alg"),
        ({"alg": ["ES256"]}, "alg"),
        ({"typ": "at+jwt"}, "typ"),
        ({"typ": "jwt"}, "typ"),
        ({"typ": ["JWT"]}, "typ"),
        ({"typ": None}, "typ"),
        ({"crit": ["exp"]}, "header"),
        ({"jku": "https://evil.example/jwks"}, "header"),
        ({"jwk": {"kty": "EC"}}, "header"),
        ({"x5u": "https://evil.example/cert"}, "header"),
        ({"x5c": ["MIIB"]}, "header"),
        ({"b64": False}, "header"),
        ({"kid": ""}, "kid"),
        ({"kid": 7}, "kid"),
    ],
)
def test_tampered_headers_are_rejected(
    ec_key: Any, header_change: dict[str, Any], reason: str
) -> None:
    header, _ = split(mint(ec_key))
    assert check_jwt_header(header) == "ES256"
    header.update(header_change)
    with pytest.raises(InvalidToken) as info:
        check_jwt_header(header)
    assert info.value.reason == reason


def test_missing_alg_or_kid_is_rejected(ec_key: Any) -> None:
    header, _ = split(mint(ec_key))
    for name, reason in (("alg", "alg"), ("kid", "kid")):
        broken = {k: v for k, v in header.items() if k != name}
        with pytest.raises(InvalidToken) as info:
            check_jwt_header(broken)
        assert info.value.reason == reason
    with pytest.raises(InvalidToken) as info:
        check_jwt_header(["alg"])  # type: ignore[arg-type]
    assert info.value.reason == "malformed"


def test_real_none_and_hs256_tokens_are_rejected() -> None:
    none_token = jwt.encode(good_claims(), "", algorithm="none", headers={"kid": "kid-1"})
    hs_token = _hs256(b"a shared secret that is long enough for hs256")
    for token in (none_token, hs_token):
        with pytest.raises(InvalidToken) as info:
            check_token(token)
        assert info.value.reason == "alg"


# --- tampered claims ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (good_claims(aud=_DROP), "aud"),
        (good_claims(aud=[]), "aud"),
        (good_claims(aud=""), "aud"),
        (good_claims(aud=["spiffe://example.org/other"]), "aud"),
        (good_claims(aud="spiffe://example.org/other"), "aud"),
        (good_claims(aud=[AUD, 5]), "aud"),
        (good_claims(aud=[AUD, ""]), "aud"),
        (good_claims(aud={"a": AUD}), "aud"),
        (good_claims(aud=AUD.upper()), "aud"),
        (good_claims(exp=_DROP), "exp"),
        (good_claims(exp=str(int(NOW.timestamp()) + 60)), "exp"),
        (good_claims(exp=True), "exp"),
        (good_claims(exp=None), "exp"),
        (good_claims(exp=-1), "exp"),
        (good_claims(exp=10**30), "exp"),
        (good_claims(exp=int(NOW.timestamp()) - 31), "exp"),
        (good_claims(exp=int(NOW.timestamp()) - 30), "exp"),
        (good_claims(nbf=int(NOW.timestamp()) + 31), "exp"),
        (good_claims(nbf="soon"), "exp"),
        (good_claims(iat=int(NOW.timestamp()) + 31), "exp"),
        (good_claims(iat=[1]), "exp"),
        (good_claims(sub=_DROP), "sub"),
        (good_claims(sub="not a spiffe id"), "sub"),
        (good_claims(sub=SUB + "\n"), "sub"),
        (good_claims(sub="SPIFFE://example.org/x"), "sub"),
        (good_claims(sub="spiffe://example.org/a/../b"), "sub"),
        (good_claims(sub=["spiffe://example.org/x"]), "sub"),
        (good_claims(jti=5), "malformed"),
        (good_claims(jti=""), "malformed"),
    ],
)
def test_tampered_claims_are_rejected(ec_key: Any, claims: dict[str, Any], reason: str) -> None:
    check_token(mint(ec_key))  # the untampered twin passes
    with pytest.raises(InvalidToken) as info:
        check_token(mint(ec_key, claims))
    assert info.value.reason == reason


def test_audience_may_be_a_string_or_one_of_several(ec_key: Any) -> None:
    assert check_token(mint(ec_key, good_claims(aud=AUD))).audience == (AUD,)
    several = check_token(mint(ec_key, good_claims(aud=["other", AUD])))
    assert several.audience == ("other", AUD)
    with pytest.raises(InvalidToken):
        check_token(mint(ec_key, good_claims(aud=["other", AUD])), audience="third")


def test_leeway_applies_at_both_edges(ec_key: Any) -> None:
    ts = int(NOW.timestamp())
    check_token(mint(ec_key, good_claims(exp=ts - 29)))  # expired 29 s ago, leeway 30 s
    check_token(mint(ec_key, good_claims(nbf=ts + 30, iat=ts + 30)))
    with pytest.raises(InvalidToken):
        check_token(mint(ec_key, good_claims(exp=ts - 29)), leeway=dt.timedelta(0))
    check_token(mint(ec_key, good_claims(exp=ts - 59)), leeway=MAX_LEEWAY)
    with pytest.raises(InvalidToken):
        check_token(mint(ec_key, good_claims(exp=ts - 60)), leeway=MAX_LEEWAY)
    check_token(mint(ec_key, good_claims(exp=ts + 1)), leeway=dt.timedelta(0))
    with pytest.raises(InvalidToken):
        check_token(mint(ec_key, good_claims(exp=ts)), leeway=dt.timedelta(0))


def test_fractional_timestamps_are_accepted(ec_key: Any) -> None:
    result = check_token(mint(ec_key, good_claims(exp=NOW.timestamp() + 0.5)))
    assert result.expiry == NOW + dt.timedelta(seconds=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"leeway": MAX_LEEWAY + dt.timedelta(seconds=1)},
        {"leeway": dt.timedelta(seconds=-1)},
        {"leeway": 30},
        {"audience": ""},
        {"audience": ["a"]},
        {"now": dt.datetime(2030, 1, 1)},  # naive
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"audience": AUD, "now": NOW, "leeway": DEFAULT_LEEWAY, **kwargs}
    with pytest.raises(ValueError, match=r"leeway|audience|aware") as info:
        check_jwt_claims(good_claims(), **args)
    assert not isinstance(info.value, InvalidToken)


def test_non_mapping_claims_are_malformed() -> None:
    with pytest.raises(InvalidToken) as info:
        check_jwt_claims([SUB], audience=AUD, now=NOW)  # type: ignore[arg-type]
    assert info.value.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(
    claims=st.dictionaries(
        st.sampled_from(["sub", "aud", "exp", "nbf", "iat", "jti", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=30)
        | st.sampled_from([SUB, AUD, [AUD], int(NOW.timestamp()) + 60])
        | st.lists(st.text(max_size=5) | st.integers(), max_size=3),
    )
)
def test_claim_checks_only_ever_raise_invalid_token(claims: dict[str, Any]) -> None:
    try:
        result = check_jwt_claims(claims, audience=AUD, now=NOW)
    except InvalidToken:
        return
    assert str(result.spiffe_id) == claims["sub"]
    assert result.expiry > NOW - DEFAULT_LEEWAY


# --- algorithms_for_key ------------------------------------------------------------------------


def test_algorithms_for_key(ec_key: Any, rsa_key: Any) -> None:
    assert algorithms_for_key(ec_key.public_key()) == {"ES256"}
    assert algorithms_for_key(ec_key) == {"ES256"}
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    assert algorithms_for_key(p384) == {"ES384"}
    assert algorithms_for_key(p521) == {"ES512"}
    rsa_algs = algorithms_for_key(rsa_key.public_key())
    assert rsa_algs == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert rsa_algs <= ALLOWED_ALGORITHMS


def test_algorithms_for_unusable_keys_are_rejected() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    for key in (
        weak,
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        b"secret",
    ):
        with pytest.raises(InvalidToken) as info:
            algorithms_for_key(key)
        assert info.value.reason == "alg"


# --- build_jwt_claims --------------------------------------------------------------------------


def test_built_claims_pass_the_checks(ec_key: Any) -> None:
    sid = SpiffeId.parse(SUB)
    now = NOW + dt.timedelta(microseconds=900_000)
    claims = build_jwt_claims(
        spiffe_id=sid, audience=[AUD], now=now, ttl=dt.timedelta(minutes=5), jti="j-1"
    )
    assert claims == {
        "sub": SUB,
        "aud": AUD,
        "exp": int(NOW.timestamp()) + 300,
        "iat": int(NOW.timestamp()),
        "jti": "j-1",
    }
    result = check_token(mint(ec_key, claims))
    assert result.spiffe_id == sid
    assert result.jti == "j-1"
    several = build_jwt_claims(
        spiffe_id=sid, audience=[AUD, "b", AUD], now=NOW, ttl=dt.timedelta(seconds=1)
    )
    assert several["aud"] == [AUD, "b"]
    assert "jti" not in several
    # expired once the ttl and leeway have passed
    with pytest.raises(InvalidToken):
        check_jwt_claims(several, audience=AUD, now=NOW + dt.timedelta(seconds=31))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audience": []},
        {"audience": [""]},
        {"audience": AUD},
        {"audience": [AUD, 5]},
        {"ttl": dt.timedelta(0)},
        {"ttl": dt.timedelta(seconds=-5)},
        {"now": dt.datetime(2030, 1, 1)},
        {"jti": ""},
        {"spiffe_id": SUB},
    ],
)
def test_build_rejects_bad_requests(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "spiffe_id": SpiffeId.parse(SUB),
        "audience": [AUD],
        "now": NOW,
        "ttl": dt.timedelta(minutes=5),
        **kwargs,
    }
    with pytest.raises(InvalidRequest):
        build_jwt_claims(**args)


# --- the agent claim ---------------------------------------------------------------------------

AGENT = "spiffe://example.org/s2s/agent/join_token/abc"


def test_the_agent_claim_round_trips() -> None:
    claims = build_jwt_claims(
        spiffe_id=SpiffeId.parse(SUB), audience=[AUD], now=NOW, ttl=dt.timedelta(minutes=1),
        agent=SpiffeId.parse(AGENT),
    )  # fmt: skip
    assert claims[AGENT_CLAIM] == AGENT
    assert check_jwt_claims(claims, audience=AUD, now=NOW).agent == SpiffeId.parse(AGENT)
    assert check_jwt_claims(good_claims(), audience=AUD, now=NOW).agent is None  # SPIRE's tokens


@pytest.mark.parametrize(
    "value", [7, "", "not an id", "spiffe://other.org/s2s/agent/x", ["spiffe://example.org/a"]]
)
def test_a_bad_agent_claim_is_refused(value: object) -> None:
    with pytest.raises(InvalidToken, match=AGENT_CLAIM) as info:
        check_jwt_claims(good_claims(**{AGENT_CLAIM: value}), audience=AUD, now=NOW)
    assert info.value.reason == "malformed"


def test_an_agent_of_another_trust_domain_cannot_be_written() -> None:
    with pytest.raises(InvalidRequest, match="agent"):
        build_jwt_claims(
            spiffe_id=SpiffeId.parse(SUB), audience=[AUD], now=NOW, ttl=dt.timedelta(minutes=1),
            agent=SpiffeId.parse("spiffe://other.org/s2s/agent/x"),
        )  # fmt: skip
