"""AccessTokenValidator: RFC 9068 checks, cnf binding, revocation, the cache, scope helpers."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from s2s.core.clock import FakeClock
from s2s.core.errors import InsufficientScope, InvalidConfig, InvalidToken, Unavailable
from s2s.core.jwk import public_jwk
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.testing import TestAuthority
from s2s.testing_oauth import AUDIENCE, CLIENT, ISSUER, TestTokenIssuer
from s2s.verifier.access_token import (
    AccessTokenMetrics,
    AccessTokenValidator,
    certificate_thumbprint,
    require_scopes,
)
from s2s.verifier.access_token_keys import SigningKeySet, StaticJwks
from s2s.verifier.revocation_choice import no_revocation_check


@pytest.fixture
def keys(fake_clock: FakeClock) -> TestTokenIssuer:
    return TestTokenIssuer(clock=fake_clock)


@pytest.fixture
def revocations() -> StaticRevocations:
    return StaticRevocations()


@pytest.fixture
def validator(
    keys: TestTokenIssuer, fake_clock: FakeClock, revocations: StaticRevocations
) -> AccessTokenValidator:
    return AccessTokenValidator(
        keys.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=revocations,
        clock=fake_clock,
    )


def reason_of(validator: AccessTokenValidator, token: str, **kwargs: object) -> str:
    with pytest.raises(InvalidToken) as info:
        validator.validate(token, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_a_good_token_is_accepted_with_its_claims(
    validator: AccessTokenValidator, keys: TestTokenIssuer
) -> None:
    token = validator.validate(keys.mint(jti="j-1"))
    assert token.subject == CLIENT
    assert str(token.spiffe_id) == CLIENT
    assert token.client_id == CLIENT
    assert token.scopes == {"billing.read", "billing.write"}
    assert token.jti == "j-1"
    assert token.audience == (AUDIENCE,)
    assert token.thumbprint is None
    assert token.has_scopes("billing.read")
    assert not token.has_scopes("billing.read", "admin")


def test_a_secret_client_subject_is_no_spiffe_id(
    validator: AccessTokenValidator, keys: TestTokenIssuer
) -> None:
    token = validator.validate(keys.mint(sub="reporting-job"))
    assert token.subject == "reporting-job"
    assert token.spiffe_id is None


def test_application_at_jwt_typ_is_accepted(
    validator: AccessTokenValidator, keys: TestTokenIssuer
) -> None:
    validator.validate(keys.mint(headers={"typ": "application/at+jwt"}))
    validator.validate(keys.mint(headers={"typ": "AT+JWT"}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"headers": {"typ": "JWT"}}, "typ"),  # a JWT-SVID or ID token is not an access token
        ({"headers": {"typ": None}}, "typ"),
        ({"headers": {"kid": None}}, "kid"),
        ({"headers": {"kid": "unknown"}}, "kid"),
        ({"headers": {"jku": "https://evil.example/jwks"}}, "header"),
        ({"headers": {"crit": ["exp"]}}, "header"),
        ({"extra_claims": {"iss": "https://other.example"}}, "iss"),
        ({"drop_claims": ["iss"]}, "iss"),
        ({"aud": "https://other.example"}, "aud"),
        ({"drop_claims": ["aud"]}, "aud"),
        ({"drop_claims": ["exp"]}, "exp"),
        ({"drop_claims": ["iat"]}, "exp"),
        ({"drop_claims": ["sub"]}, "sub"),
        ({"drop_claims": ["client_id"]}, "client-id"),
        ({"drop_claims": ["jti"]}, "jti"),
        ({"scope": ["billing.read"]}, "scope"),
        ({"extra_claims": {"cnf": {"jkt": "abc"}}}, "cnf"),
        ({"extra_claims": {"cnf": {"x5t#S256": "short"}}}, "cnf"),
        ({"sub": "spiffe://example.org/bad//path"}, "sub"),
    ],
)
def test_a_broken_token_is_refused(
    validator: AccessTokenValidator, keys: TestTokenIssuer, change: dict[str, object], reason: str
) -> None:
    assert reason_of(validator, keys.mint(**change)) == reason  # type: ignore[arg-type]


def test_an_expired_token_is_refused_after_the_leeway(
    validator: AccessTokenValidator, keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    token = keys.mint(ttl=dt.timedelta(minutes=1))
    validator.validate(token)
    fake_clock.advance(seconds=60 + 29)
    validator.validate(token)  # inside the 30 s leeway
    fake_clock.advance(seconds=2)
    assert reason_of(validator, token) == "exp"


def test_a_token_issued_in_the_future_is_refused(
    validator: AccessTokenValidator, keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    assert reason_of(validator, keys.mint(iat=fake_clock.now() + dt.timedelta(minutes=2))) == "exp"


def test_signature_algorithm_and_key_are_checked(
    validator: AccessTokenValidator, keys: TestTokenIssuer
) -> None:
    token = keys.mint()
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert reason_of(validator, f"{head}.{body}.{flipped}") == "signature"
    other = ec.generate_private_key(ec.SECP256R1())
    assert reason_of(validator, keys.mint(key=other)) == "signature"
    assert reason_of(validator, keys.mint(alg="none")) == "alg"
    assert reason_of(validator, keys.mint(alg="HS256", key="secret" * 6)) == "alg"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason_of(validator, keys.mint(alg="RS256", key=rsa_key)) == "alg"  # not the key's alg
    assert reason_of(validator, "not.a-token") == "malformed"
    assert reason_of(validator, "x" * 9000) == "too-large"


def test_a_key_pinned_to_its_jwks_alg(keys: TestTokenIssuer, fake_clock: FakeClock) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {
        "keys": [
            {"kid": keys.kid, "alg": "PS256", "use": "sig", **public_jwk(rsa_key.public_key())}
        ]
    }
    validator = AccessTokenValidator(
        SigningKeySet.from_jwks(jwks),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    validator.validate(keys.mint(alg="PS256", key=rsa_key))
    assert reason_of(validator, keys.mint(alg="RS256", key=rsa_key)) == "alg"


def test_a_bound_token_needs_the_matching_certificate(
    validator: AccessTokenValidator, keys: TestTokenIssuer, authority: TestAuthority
) -> None:
    mine = authority.issue_x509_svid(CLIENT).leaf
    other = authority.issue_x509_svid(CLIENT).leaf  # same SPIFFE ID, another certificate
    token = keys.mint(thumbprint=certificate_thumbprint(mine))
    accepted = validator.validate(token, peer_certificate=mine)
    assert accepted.thumbprint == certificate_thumbprint(mine)
    validator.validate(token, peer_certificate=mine.public_bytes(Encoding.DER))
    # The cache holds the token; the binding is still checked on every call.
    assert reason_of(validator, token, peer_certificate=other) == "cnf"
    assert reason_of(validator, token) == "cnf"
    assert validator.cache_hits >= 2


def test_require_binding_refuses_bearer_tokens(
    keys: TestTokenIssuer, fake_clock: FakeClock, authority: TestAuthority
) -> None:
    validator = AccessTokenValidator(
        keys.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        require_binding=True,
        clock=fake_clock,
    )
    cert = authority.issue_x509_svid(CLIENT).leaf
    assert reason_of(validator, keys.mint(), peer_certificate=cert) == "cnf"
    validator.validate(keys.mint(thumbprint=certificate_thumbprint(cert)), peer_certificate=cert)


def test_a_revoked_jti_is_refused_at_once_even_when_cached(
    validator: AccessTokenValidator,
    keys: TestTokenIssuer,
    revocations: StaticRevocations,
    fake_clock: FakeClock,
) -> None:
    token = keys.mint(jti="tok-7")
    validator.validate(token)
    validator.validate(token)
    assert validator.cache_hits == 1
    expires = fake_clock.now() + dt.timedelta(minutes=5)
    revocations.replace(
        RevocationSet.of(
            [RevocationRecord.for_jti("tok-7", revoked_at=fake_clock.now(), expires_at=expires)]
        )
    )
    assert reason_of(validator, token) == "revoked"
    validator.validate(keys.mint(jti="tok-8"))  # twin: another jti still passes


def test_a_revoked_spiffe_id_refuses_tokens_issued_before(
    validator: AccessTokenValidator,
    keys: TestTokenIssuer,
    revocations: StaticRevocations,
    fake_clock: FakeClock,
) -> None:
    old = keys.mint()
    fake_clock.advance(seconds=10)
    record = RevocationRecord.for_spiffe_id(
        CLIENT, revoked_at=fake_clock.now(), expires_at=fake_clock.now() + dt.timedelta(minutes=5)
    )
    revocations.replace(RevocationSet.of([record]))
    assert reason_of(validator, old) == "revoked"
    fake_clock.advance(seconds=1)
    validator.validate(keys.mint())  # issued after the revocation
    validator.validate(
        keys.mint(sub="reporting-job", iat=fake_clock.now() - dt.timedelta(seconds=30))
    )


def test_stale_revocations_fail_closed(keys: TestTokenIssuer, fake_clock: FakeClock) -> None:
    class Stale:
        def current(self) -> RevocationSet:
            raise Unavailable("the feed is stale")

    validator = AccessTokenValidator(
        keys.key_set(), issuer=ISSUER, audience=AUDIENCE, revocations=Stale(), clock=fake_clock
    )
    assert reason_of(validator, keys.mint()) == "revocations-stale"


def test_revocations_must_be_chosen(keys: TestTokenIssuer) -> None:
    with pytest.raises(InvalidConfig, match="no_revocation_check"):
        AccessTokenValidator(keys.key_set(), issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(InvalidConfig):
        AccessTokenValidator(
            keys.key_set(), issuer="", audience=AUDIENCE, revocations=no_revocation_check()
        )


def test_a_key_set_change_clears_the_cache(keys: TestTokenIssuer, fake_clock: FakeClock) -> None:
    provider = StaticJwks(keys.key_set())
    validator = AccessTokenValidator(
        provider,
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    token = keys.mint()
    validator.validate(token)
    validator.validate(token)
    assert validator.cache_hits == 1
    provider.replace(
        TestTokenIssuer(clock=fake_clock, kid="as-2").key_set()
    )  # the AS dropped key as-1
    assert reason_of(validator, token) == "kid"


def test_no_keys_yet_is_unavailable(keys: TestTokenIssuer) -> None:
    class Empty:
        def current(self) -> SigningKeySet:
            raise Unavailable("no JWKS yet")

        async def refresh(self) -> SigningKeySet:
            raise Unavailable("no JWKS yet")

    validator = AccessTokenValidator(
        Empty(), issuer=ISSUER, audience=AUDIENCE, revocations=no_revocation_check()
    )
    with pytest.raises(Unavailable):
        validator.validate(keys.mint())


async def test_an_unknown_kid_refreshes_the_keys_once(
    keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    rotated = TestTokenIssuer(clock=fake_clock, kid="as-2")

    class Rotating(StaticJwks):
        refreshes = 0

        async def refresh(self) -> SigningKeySet:
            self.refreshes += 1
            self.replace(
                SigningKeySet.of([*keys.key_set().keys.values(), *rotated.key_set().keys.values()])
            )
            return self.current()

    provider = Rotating(keys.key_set())
    validator = AccessTokenValidator(
        provider,
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
    )
    assert reason_of(validator, rotated.mint()) == "kid"  # the sync path never fetches
    token = await validator.validate_async(rotated.mint())
    assert token.subject == CLIENT
    assert provider.refreshes == 1
    with pytest.raises(InvalidToken) as info:  # a kid nobody has: one refresh, then refused
        await validator.validate_async(TestTokenIssuer(clock=fake_clock, kid="as-9").mint())
    assert info.value.reason == "kid"


def test_require_scopes(validator: AccessTokenValidator, keys: TestTokenIssuer) -> None:
    token = validator.validate(keys.mint(scope="billing.read"))
    assert require_scopes(token, "billing.read") is token
    with pytest.raises(InsufficientScope) as info:
        require_scopes(token, "billing.read", "billing.write")
    assert info.value.required == {"billing.read", "billing.write"}
    assert "billing.write" in str(info.value)
    empty = validator.validate(keys.mint(drop_claims=["scope"]))
    assert empty.scopes == frozenset()
    with pytest.raises(InsufficientScope):
        require_scopes(empty, "billing.read")


def test_rejections_and_acceptances_are_counted(
    keys: TestTokenIssuer, fake_clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    metrics = AccessTokenMetrics(registry)
    validator = AccessTokenValidator(
        keys.key_set(),
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=no_revocation_check(),
        clock=fake_clock,
        metrics=metrics,
    )
    token = keys.mint()
    validator.validate(token)
    validator.validate(token)  # a cache hit is not counted again
    reason_of(validator, keys.mint(aud="https://other.example"))
    reason_of(validator, keys.mint(headers={"typ": "JWT"}))
    assert metrics.accepted.value() == 1
    assert registry.get_sample_value("s2s_verifier_access_tokens_accepted_total") == 1
    assert metrics.rejection_count("aud") == 1
    assert metrics.rejection_count("typ") == 1
    assert metrics.rejection_count("cnf") == 0


def _uncached(
    keys: TestTokenIssuer, clock: FakeClock, revocations: StaticRevocations
) -> AccessTokenValidator:
    return AccessTokenValidator(
        keys.key_set(), issuer=ISSUER, audience=AUDIENCE, revocations=revocations, clock=clock,
        cache_size=0,
    )  # fmt: skip


def test_a_remembered_header_still_needs_its_key_and_a_valid_signature(
    keys: TestTokenIssuer, fake_clock: FakeClock, revocations: StaticRevocations
) -> None:
    """Header segments that passed their checks are remembered (uncached validation); what they
    stand for is still checked on every token: the key by kid, the signature, the claims."""
    validator = _uncached(keys, fake_clock, revocations)
    assert validator.validate(keys.mint()).subject == CLIENT
    forged = keys.mint(key=ec.generate_private_key(ec.SECP256R1()))  # same header, other key
    assert reason_of(validator, forged) == "signature"
    assert reason_of(validator, keys.mint(aud="https://other.example.org")) == "aud"
    other_kid = TestTokenIssuer(clock=fake_clock, kid="as-2")
    assert reason_of(validator, other_kid.mint()) == "kid"
    # a header that failed is not remembered: the same segment fails again
    bad = keys.mint(headers={"typ": "JWT"})
    assert reason_of(validator, bad) == "typ"
    assert reason_of(validator, bad) == "typ"
    assert validator.validate(keys.mint()).subject == CLIENT


def test_the_header_memo_is_bounded(
    keys: TestTokenIssuer, fake_clock: FakeClock, revocations: StaticRevocations
) -> None:
    validator = _uncached(keys, fake_clock, revocations)
    for i in range(300):
        assert validator.validate(keys.mint(headers={"x-n": i})).subject == CLIENT
    assert 0 < len(validator._headers) <= 256
