"""The access-token claims checker: the one-pass path for the usual token gives, claim set by
claim set, the verdict (the reason, or an equal AccessToken) of the full checks in their order."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from s2s.core.errors import InvalidToken
from s2s.verifier import access_token_claims as claims_module
from s2s.verifier.access_token_claims import AccessToken, AccessTokenClaimsChecker

ISSUER = "https://as.example"
AUDIENCE = "https://api.example"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"
NOW = 1_900_000_000
THUMB = "A" * 43


def _checker() -> AccessTokenClaimsChecker:
    return AccessTokenClaimsChecker(ISSUER, AUDIENCE, dt.timedelta(seconds=30))


def _base() -> dict[str, Any]:
    return {
        "iss": ISSUER, "sub": CLIENT, "aud": AUDIENCE, "client_id": CLIENT,
        "scope": "billing.read billing.write", "jti": "j-1", "iat": NOW, "exp": NOW + 300,
    }  # fmt: skip


def _verdict(check: Any, claims: dict[str, Any]) -> AccessToken | str:
    try:
        return check(dict(claims), float(NOW))  # type: ignore[no-any-return]
    except InvalidToken as exc:
        return exc.reason


def _variants() -> list[dict[str, Any]]:
    base = _base()
    out = [base]
    for name, values in {
        "iss": [None, "", ISSUER + "/", 5],
        "aud": [None, "", [], [AUDIENCE], ["x", AUDIENCE], ["x"], [AUDIENCE, ""], "x", {}],
        "exp": [None, "1", True, NOW - 31, NOW - 29, 1.5e300, float(NOW + 60), -1, 2**70],
        "iat": [None, NOW + 31, NOW + 29, "x", False, float(NOW), -5],
        "nbf": [None, NOW + 31, NOW + 29, 0, "0"],
        "sub": [None, "", 7, "client-a", "spiffe://example.org/bad//path", "spiffe://x/../y"],
        "client_id": [None, "", 3, "other"],
        "jti": [None, "", 5, "j-2"],
        "scope": [None, "", "a", " a  b ", ["a"], 1],
        "cnf": [None, {}, {"x5t#S256": THUMB}, {"x5t#S256": "short"}, {"jkt": "x"}, "x"],
    }.items():  # fmt: skip
        for value in values:
            out.append({**base, name: value})
        out.append({k: v for k, v in base.items() if k != name})
    return out


def test_every_variant_gets_the_verdict_of_the_full_checks() -> None:
    checker = _checker()
    verdicts = set()
    for claims in _variants():
        expected = _verdict(checker._check_all, claims)
        for _ in range(2):  # the second time with the memos warm
            assert _verdict(checker.check, claims) == expected, claims
        verdicts.add(expected if isinstance(expected, str) else "ok")
    assert {"ok", "iss", "aud", "exp", "sub", "client-id", "jti", "scope", "cnf"} <= verdicts


def test_the_usual_token_is_equal_to_the_full_result() -> None:
    checker = _checker()
    for extra in ({}, {"cnf": {"x5t#S256": THUMB}}, {"sub": "client-a", "client_id": "client-a"}):
        claims = {**_base(), **extra}
        fast = checker.check(dict(claims), float(NOW))
        assert fast == checker._check_all(dict(claims), float(NOW))
        assert (fast.scopes, fast.thumbprint, fast.expiry) == (
            frozenset({"billing.read", "billing.write"}),
            extra.get("cnf", {}).get("x5t#S256"),
            dt.datetime.fromtimestamp(NOW + 300, dt.UTC),
        )
        assert dict(fast.claims) == claims


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "sub", "client_id", "jti", "scope",
                         "cnf", "x"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(),
            st.text(max_size=8), st.sampled_from([ISSUER, AUDIENCE, CLIENT, NOW, NOW + 100]),
            st.lists(st.sampled_from([AUDIENCE, "", "x", 1]), max_size=3),
            st.fixed_dictionaries({"x5t#S256": st.sampled_from([THUMB, "x"])}),
        ),
    )
)  # fmt: skip
def test_random_claims_get_the_verdict_of_the_full_checks(claims: dict[str, Any]) -> None:
    checker = _checker()
    claims = {**_base(), **claims}
    assert _verdict(checker.check, claims) == _verdict(checker._check_all, claims)


def test_the_memos_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(claims_module, "_MEMO", 4)
    checker = _checker()
    for i in range(20):
        claims = {**_base(), "scope": f"s{i}", "exp": NOW + 300 + i, "iat": NOW - i}
        token = checker.check(claims, float(NOW))
        assert token.scopes == frozenset({f"s{i}"})
        assert token.issued_at == dt.datetime.fromtimestamp(NOW - i, dt.UTC)
        assert len(checker._scopes) <= 4
        assert len(checker._times) <= 4
