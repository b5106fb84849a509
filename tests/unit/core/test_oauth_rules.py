"""The token service's rules without I/O: scopes, grants, secrets, client records, claims."""

from __future__ import annotations

import datetime as dt

import pytest

from s2s.core.errors import InvalidConfig, InvalidRequest
from s2s.core.oauth import (
    ClientRecord,
    Grant,
    OAuthError,
    access_token_claims,
    decide_grant,
    hash_secret,
    new_secret,
    secret_matches,
)
from s2s.core.oauth_metadata import check_issuer
from s2s.core.spiffe_id import SpiffeId

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SID = "spiffe://example.org/ns/shop/sa/checkout"


def client(**kw: object) -> ClientRecord:
    args: dict[str, object] = {
        "client_id": SID,
        "spiffe_id": SpiffeId.parse(SID),
        "scopes": frozenset({"a", "b"}),
        "audiences": ("https://api",),
        "created_at": NOW,
        "updated_at": NOW,
    }
    args.update(kw)
    return ClientRecord(**args)  # type: ignore[arg-type]


def test_grant_defaults_to_every_scope_and_the_only_audience() -> None:
    assert decide_grant(client(), scope=None, audience=[]) == Grant(
        frozenset({"a", "b"}), "https://api"
    )
    assert decide_grant(client(), scope="a", audience=["https://api"]).scopes == {"a"}


@pytest.mark.parametrize(
    ("scope", "audience", "error"),
    [
        ("a c", [], "invalid_scope"),
        ("", [], "invalid_scope"),
        ('a"b', [], "invalid_scope"),
        (None, ["https://other"], "invalid_target"),
        (None, ["https://api", "https://api2"], "invalid_target"),
    ],
)
def test_grant_refusals(scope: str | None, audience: list[str], error: str) -> None:
    with pytest.raises(OAuthError) as caught:
        decide_grant(client(), scope=scope, audience=audience)
    assert caught.value.error == error


def test_several_audiences_need_one_named() -> None:
    two = client(audiences=("https://a", "https://b"))
    with pytest.raises(OAuthError, match="several audiences"):
        decide_grant(two, scope=None, audience=[])
    assert decide_grant(two, scope=None, audience=["https://b"]).audience == "https://b"


def test_secrets_are_hashed_and_matched_against_every_hash() -> None:
    secret = new_secret(bytes(range(32)))
    hashes = (hash_secret("old"), hash_secret(secret))
    assert secret_matches(secret, hashes)
    assert secret_matches("old", hashes)
    assert not secret_matches(secret + "x", hashes)
    assert not secret_matches("", hashes)
    assert secret not in "".join(hashes)
    with pytest.raises(InvalidRequest):
        new_secret(b"short")


def test_client_records_refuse_inconsistent_shapes() -> None:
    with pytest.raises(InvalidRequest):
        client(client_id="other")  # an SVID client's id is its SPIFFE ID
    with pytest.raises(InvalidRequest):
        client(secret_hashes=(hash_secret("x"),))  # both
    with pytest.raises(InvalidRequest):
        client(spiffe_id=None, client_id="x")  # neither
    with pytest.raises(InvalidRequest):
        client(audiences=())
    three = tuple(hash_secret(str(i)) for i in range(3))
    with pytest.raises(InvalidRequest):
        client(spiffe_id=None, client_id="x", secret_hashes=three)
    record = client(spiffe_id=None, client_id="x", secret_hashes=(hash_secret("s"),))
    assert ClientRecord.from_json(record.to_json(with_secrets=True)) == record
    assert "secret_hashes" not in record.to_json()


def test_access_token_claims_with_and_without_cnf() -> None:
    grant = Grant(frozenset({"b", "a"}), "https://api")
    claims = access_token_claims(
        issuer="https://ca", client=client(), grant=grant, now=NOW,
        ttl=dt.timedelta(minutes=5), jti="j",
    )  # fmt: skip
    assert claims["scope"] == "a b"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["sub"] == claims["client_id"] == SID
    assert "cnf" not in claims
    bound = access_token_claims(
        issuer="https://ca", client=client(), grant=grant, now=NOW,
        ttl=dt.timedelta(minutes=5), jti="j", thumbprint="t",
    )  # fmt: skip
    assert bound["cnf"] == {"x5t#S256": "t"}


@pytest.mark.parametrize(
    "url",
    [
        "http://ca.example.org",
        "https://",
        "https://ca?x=1",
        "https://ca#f",
        "ca.example.org",
        "https://ca/x",
        "https://ca:99999",
    ],
)
def test_issuer_must_be_an_https_url_without_query_or_fragment(url: str) -> None:
    with pytest.raises(InvalidConfig):
        check_issuer(url)
    assert check_issuer("https://ca.example.org:8443/") == "https://ca.example.org:8443"
