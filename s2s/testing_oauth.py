"""An authorization server's signing key for tests and benchmarks: mints RFC 9068 access tokens.

For tests only, never a production path. Each argument of :meth:`TestTokenIssuer.mint` changes
one thing, so a rejecting twin is one keyword away::

    issuer = TestTokenIssuer(clock=clock)
    good = issuer.mint(scope="billing.read")
    expired = issuer.mint(ttl=dt.timedelta(seconds=-60))
    validator = AccessTokenValidator(issuer.key_set(), issuer=ISSUER, audience=AUDIENCE, ...)
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.core.clock import Clock
from s2s.core.jwk import public_jwk
from s2s.verifier.access_token_keys import SigningKeySet

__all__ = ["AUDIENCE", "CLIENT", "ISSUER", "TestTokenIssuer"]

ISSUER = "https://ca.example.org"
AUDIENCE = "https://billing.example.org"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


class TestTokenIssuer:
    """One AS signing key (ES256 unless given) with its ``kid``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        kid: str = "as-1",
        issuer: str = ISSUER,
        key: Any = None,
    ) -> None:
        self.clock = clock
        self.key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        self.kid = kid
        self.issuer = issuer

    def now(self) -> dt.datetime:
        return self.clock.now() if self.clock is not None else dt.datetime.now(dt.UTC)

    def key_set(self) -> SigningKeySet:
        """This key alone, as a validator takes it."""
        return SigningKeySet.from_keys({self.kid: self.key.public_key()})

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK as a ``jwks_uri`` serves it (``use: sig``, ``alg``), plus ``extra``."""
        return {
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
            **public_jwk(self.key.public_key()),
            **extra,
        }

    def mint(
        self,
        *,
        sub: str = CLIENT,
        aud: str | list[str] = AUDIENCE,
        scope: Any = "billing.read billing.write",
        ttl: dt.timedelta = dt.timedelta(minutes=5),
        iat: dt.datetime | None = None,
        jti: str | None = None,
        thumbprint: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        drop_claims: Iterable[str] = (),
        headers: Mapping[str, Any] | None = None,
        key: Any = None,
        alg: str = "ES256",
    ) -> str:
        """A token with ``iss``, ``sub``, ``aud``, ``client_id`` (= ``sub``), ``scope``, ``jti``,
        ``iat``, ``exp`` and, given a ``thumbprint``, ``cnf``; header ``typ: at+jwt`` and ``kid``.

        ``headers`` values of None remove a header; ``alg="none"`` makes an unsigned token.
        """
        at = iat or self.now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "client_id": sub,
            "scope": scope,
            "jti": jti or secrets.token_urlsafe(16),
            "iat": int(at.timestamp()),
            "exp": int((at + ttl).timestamp()),
        }
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        claims.update(extra_claims or {})
        for name in drop_claims:
            claims.pop(name, None)
        head: dict[str, Any] = {"typ": "at+jwt", "kid": self.kid}
        head.update(headers or {})
        # PyJWT drops a falsy typ itself; any other None header is removed here.
        head = {k: v for k, v in head.items() if v is not None or k == "typ"}
        signing_key = "" if alg == "none" else (key if key is not None else self.key)
        return jwt.encode(claims, signing_key, algorithm=alg, headers=head)
