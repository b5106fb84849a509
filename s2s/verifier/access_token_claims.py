"""The claims of an OAuth access token (RFC 9068 section 2.2), checked for one issuer and audience.

``iss`` exactly the configured issuer, the audience among ``aud``, ``exp``/``nbf``/``iat`` with
leeway (``iat`` required), ``sub``, ``client_id`` and ``jti`` non-empty strings, ``scope`` a
space-separated string, ``cnf`` (when present) an ``x5t#S256`` thumbprint, and a ``sub`` that
claims to be a SPIFFE ID a valid one. :class:`AccessTokenClaimsChecker` decides the usual token
(one audience, integer times, no ``nbf``) in one pass, as the JWT-SVID claims checker
does, and sends anything else through the full checks, in their order, so each token gets the same
verdict (and the same refusal reason) either way.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from s2s.core.errors import InvalidSpiffeId, InvalidToken
from s2s.core.jwtsvid import MAX_TIMESTAMP, check_audience, check_jwt_times_at
from s2s.core.spiffe_id import SpiffeId

__all__ = ["THUMBPRINT", "AccessToken", "AccessTokenClaimsChecker"]

THUMBPRINT = "x5t#S256"
_MEMO = 4096  # scope strings and instants remembered (clients and token lifetimes are few)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token that passed every check; ``scopes`` from its space-separated ``scope``."""

    subject: str
    client_id: str
    issuer: str
    audience: tuple[str, ...]
    scopes: frozenset[str]
    expiry: datetime
    issued_at: datetime
    jti: str
    thumbprint: str | None  # cnf x5t#S256: the token is bound to that client certificate
    spiffe_id: SpiffeId | None  # the subject, when it is a SPIFFE ID (an SVID client)
    claims: Mapping[str, Any] = field(hash=False, repr=False)

    def has_scopes(self, *scopes: str) -> bool:
        return self.scopes.issuperset(scopes)


_NEW = object.__new__
(
    _SET_SUB, _SET_CLIENT, _SET_ISS, _SET_AUD, _SET_SCOPES, _SET_EXP, _SET_IAT, _SET_JTI,
    _SET_THUMBPRINT, _SET_ID, _SET_CLAIMS,
) = (
    AccessToken.__dict__[name].__set__
    for name in (
        "subject", "client_id", "issuer", "audience", "scopes", "expiry", "issued_at", "jti",
        "thumbprint", "spiffe_id", "claims",
    )
)  # fmt: skip


class AccessTokenClaimsChecker:
    """The claims checks for one issuer, audience and leeway, on a POSIX ``now``; thread-safe
    (the memos are dicts only read, added to, or cleared whole). The claims dict given to
    :meth:`check` is kept, not copied."""

    __slots__ = ("_scopes", "_slack", "_times", "audience", "issuer")

    def __init__(self, issuer: str, audience: str, leeway: timedelta) -> None:
        self.issuer, self.audience = issuer, audience
        self._slack = leeway.total_seconds()
        self._scopes: dict[str, frozenset[str]] = {}
        self._times: dict[int, datetime] = {}

    def check(self, claims: dict[str, Any], now: float) -> AccessToken:
        """The checked token at POSIX time ``now``; :class:`InvalidToken` with the reason."""
        if type(claims) is not dict:
            raise InvalidToken("the token claims are not a JSON object", reason="malformed")
        get = claims.get
        aud, exp, iat, sub, client_id, jti = (
            get("aud"), get("exp"), get("iat"), get("sub"), get("client_id"), get("jti")
        )  # fmt: skip
        scope = get("scope", "")
        slack = self._slack
        if (  # the usual token, decided at once; anything else takes the full checks
            get("iss") != self.issuer
            or type(aud) is not str
            or aud != self.audience
            or type(exp) is not int
            or not 0 <= exp <= MAX_TIMESTAMP
            or exp <= now - slack
            or type(iat) is not int
            or not 0 <= iat <= MAX_TIMESTAMP
            or iat > now + slack
            or "nbf" in claims
            or type(sub) is not str
            or not sub
            or type(client_id) is not str
            or not client_id
            or type(jti) is not str
            or not jti
            or type(scope) is not str
        ):
            return self._check_all(claims, now)
        scopes = self._scopes.get(scope)
        if scopes is None:
            scopes = self._scopes_of(scope)
        times = self._times
        expiry, issued_at = times.get(exp), times.get(iat)
        if expiry is None or issued_at is None:
            expiry, issued_at = self._time(exp), self._time(iat)
        thumbprint = None if "cnf" not in claims else _confirmation(claims)
        spiffe_id = _spiffe_id(sub)
        token = _NEW(AccessToken)  # through the slots: the frozen __init__ costs twice as much
        _SET_SUB(token, sub)
        _SET_CLIENT(token, client_id)
        _SET_ISS(token, self.issuer)
        _SET_AUD(token, (aud,))
        _SET_SCOPES(token, scopes)
        _SET_EXP(token, expiry)
        _SET_IAT(token, issued_at)
        _SET_JTI(token, jti)
        _SET_THUMBPRINT(token, thumbprint)
        _SET_ID(token, spiffe_id)
        _SET_CLAIMS(token, MappingProxyType(claims))
        return token

    def _check_all(self, claims: dict[str, Any], now: float) -> AccessToken:
        if claims.get("iss") != self.issuer:
            raise InvalidToken("the token was not issued by the expected issuer", reason="iss")
        audience = check_audience(claims, self.audience)
        exp, iat = check_jwt_times_at(claims, now, self._slack)
        if iat is None:  # RFC 9068 2.2: iat is REQUIRED
            raise InvalidToken("the token has no iat claim", reason="exp")
        subject, client_id, jti = (_text(claims, name) for name in ("sub", "client_id", "jti"))
        scope = claims.get("scope")
        if scope is not None and not isinstance(scope, str):
            # RFC 9068 2.2.3: a space-delimited string (RFC 6749 3.3)
            raise InvalidToken("the scope claim must be a string", reason="scope")
        return AccessToken(
            subject=subject,
            client_id=client_id,
            issuer=self.issuer,
            audience=audience,
            scopes=frozenset() if scope is None else self._scopes_of(scope),
            expiry=datetime.fromtimestamp(exp, UTC),
            issued_at=datetime.fromtimestamp(iat, UTC),
            jti=jti,
            thumbprint=_confirmation(claims),
            spiffe_id=_spiffe_id(subject),
            claims=MappingProxyType(claims),  # a fresh dict from the token, referenced nowhere else
        )

    def _scopes_of(self, scope: str) -> frozenset[str]:
        memo = self._scopes
        found = memo.get(scope)
        if found is None:
            if len(memo) >= _MEMO:
                memo.clear()  # many distinct scope strings: start again rather than track order
            found = memo[scope] = frozenset(scope.split(" ")) - {""}
        return found

    def _time(self, seconds: int) -> datetime:
        memo = self._times
        found = memo.get(seconds)
        if found is None:
            if len(memo) >= _MEMO:
                memo.clear()
            found = memo[seconds] = datetime.fromtimestamp(seconds, UTC)
        return found


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"the token has no {name} claim", reason=name.replace("_", "-"))
    return value


def _confirmation(claims: Mapping[str, Any]) -> str | None:
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    value = cnf.get(THUMBPRINT) if isinstance(cnf, Mapping) else None
    if not isinstance(value, str) or len(value) != 43:  # 32 bytes of base64url
        # A confirmation method we cannot check (a DPoP jkt, ...) must not turn into a bearer.
        raise InvalidToken("the cnf claim has no x5t#S256 thumbprint", reason="cnf")
    return value


def _spiffe_id(subject: str) -> SpiffeId | None:
    if not subject.startswith("spiffe://"):
        return None
    try:
        return _parse_spiffe_id(subject)
    except InvalidSpiffeId:
        raise InvalidToken("the token subject is not a valid SPIFFE ID", reason="sub") from None


@functools.lru_cache(maxsize=1024)  # a resource server sees a few clients again and again
def _parse_spiffe_id(subject: str) -> SpiffeId:
    return SpiffeId.parse(subject)
