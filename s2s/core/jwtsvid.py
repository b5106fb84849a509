"""JWT-SVID header and claim checks (JWT-SVID.md sections 2-3), pure: no clock, no crypto.

The verifier decodes a token, checks the header with :func:`check_jwt_header`, verifies the
signature with the bundle key for (trust domain of ``sub``, ``kid``), then checks the claims with
:func:`check_jwt_claims`. Every failure is an :class:`InvalidToken` whose ``reason`` is a short tag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from s2s.core.errors import InvalidRequest, InvalidSpiffeId, InvalidToken
from s2s.core.jwk import MIN_RSA_BITS
from s2s.core.spiffe_id import SpiffeId

__all__ = [
    "AGENT_CLAIM",
    "ALLOWED_ALGORITHMS",
    "ALLOWED_TYPES",
    "DEFAULT_LEEWAY",
    "FORBIDDEN_HEADERS",
    "MAX_LEEWAY",
    "MAX_TIMESTAMP",
    "JwtClaimsChecker",
    "JwtSvidClaims",
    "algorithms_for_key",
    "build_jwt_claims",
    "check_audience",
    "check_jwt_claims",
    "check_jwt_header",
    "check_jwt_times",
    "check_jwt_times_at",
]

# JWT-SVID.md 2.1: RFC 7518 3.3-3.5 only; "none", HS*, EdDSA must be rejected.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALLOWED_TYPES = frozenset({"JWT", "JOSE"})  # JWT-SVID.md 2.3
# A private claim (JWT-SVID.md 3 allows other claims) naming the agent a token was minted for, so
# that revoking an agent revokes the JWT-SVIDs it obtained (an ID revocation of the agent, checked
# against the token's iat), exactly: no other node's tokens for the same workload ID are touched.
AGENT_CLAIM = "s2s_agent"
# Headers that would let the token choose its own key (jku, jwk, x5u, x5c), demand extensions we
# do not implement (crit), or change what is signed (b64, RFC 7797).
FORBIDDEN_HEADERS = frozenset({"crit", "jku", "jwk", "x5u", "x5c", "b64"})
DEFAULT_LEEWAY = timedelta(seconds=30)
MAX_LEEWAY = timedelta(minutes=1)
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# datetime cannot hold instants after 9999-12-31; such a claim is malformed, not "valid forever".
MAX_TIMESTAMP = datetime(9999, 12, 31, tzinfo=UTC).timestamp()
_MAX_TIMESTAMP = MAX_TIMESTAMP
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class JwtSvidClaims:
    """The checked claims of a JWT-SVID."""

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: datetime
    issued_at: datetime | None
    jti: str | None
    claims: Mapping[str, Any] = field(hash=False)  # all claims as decoded (read-only)
    agent: SpiffeId | None = None  # the AGENT_CLAIM: the agent the token was minted for


_NEW = object.__new__
_SET_ID, _SET_AUD, _SET_EXP, _SET_IAT, _SET_JTI, _SET_CLAIMS, _SET_AGENT = (
    JwtSvidClaims.__dict__[name].__set__
    for name in ("spiffe_id", "audience", "expiry", "issued_at", "jti", "claims", "agent")
)


def check_jwt_header(header: Mapping[str, Any]) -> str:
    """Check a decoded JOSE header; return its ``alg``.

    ``kid`` is required: a JWT-SVID key is chosen by (trust domain, kid) and we never guess.
    """
    if not isinstance(header, Mapping):
        raise InvalidToken("the token header is not a JSON object", reason="malformed")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise InvalidToken(
            f"the token algorithm {_show(alg)} is not allowed (use RS*, PS* or ES*)", reason="alg"
        )
    forbidden = sorted(FORBIDDEN_HEADERS.intersection(header))
    if forbidden:
        raise InvalidToken(f"the token header must not contain {forbidden}", reason="header")
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ not in ALLOWED_TYPES:
        raise InvalidToken(f"the token type {_show(typ)} is not JWT or JOSE", reason="typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("the token header has no key id (kid)", reason="kid")
    return alg


def check_jwt_claims(
    claims: Mapping[str, Any],
    *,
    audience: str,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> JwtSvidClaims:
    """Check the claims of a JWT-SVID whose signature is already verified.

    ``audience`` must be among the token's ``aud`` values; ``exp`` must not be past (``now`` minus
    ``leeway``); ``nbf`` and ``iat`` must not be later than ``now`` plus ``leeway``.
    Raises ``ValueError`` for bad arguments (a programming error) and :class:`InvalidToken` for
    a token that must be rejected. :class:`JwtClaimsChecker` makes the same checks for one
    audience and leeway checked once, on POSIX times.
    """
    _check_arguments(audience, now, leeway)
    if not isinstance(claims, Mapping):
        raise InvalidToken("the token claims are not a JSON object", reason="malformed")
    return _check_claims(
        dict(claims), audience, now.timestamp(), leeway.total_seconds(), _parse_subject
    )


class JwtClaimsChecker:
    """:func:`check_jwt_claims` for one audience and leeway, on a POSIX ``now``.

    The arguments are checked once, here, and SPIFFE IDs already seen in ``sub`` (and the agent
    claim) are taken from a bounded memo instead of parsed again: a verifier sees the same few
    subjects over and over. Thread-safe (the memo is a dict that is only read, added to, or
    cleared whole). The claims dict given to :meth:`check` is kept, not copied.

    >>> check = JwtClaimsChecker("spiffe://example.org/api")
    >>> claims = {"sub": "spiffe://example.org/db", "aud": "spiffe://example.org/api", "exp": 99}
    >>> str(check.check(claims, now=60.0).spiffe_id)
    'spiffe://example.org/db'
    >>> check.check(claims, now=200.0)
    Traceback (most recent call last):
    ...
    s2s.core.errors.InvalidToken: the token has expired
    """

    __slots__ = ("_ids", "_memo_size", "_slack", "_times", "audience", "leeway")

    def __init__(
        self, audience: str, leeway: timedelta = DEFAULT_LEEWAY, *, memo_size: int = 4096
    ) -> None:
        _check_arguments(audience, datetime.now(UTC), leeway)
        self.audience = audience
        self.leeway = leeway
        self._slack = leeway.total_seconds()
        self._ids: dict[str, SpiffeId] = {}
        # exp and iat as datetimes, by their integer seconds: the tokens a verifier sees at one
        # time share a few thousand of them at most (their lifetimes), and a datetime costs ten
        # times the lookup to build.
        self._times: dict[int, datetime] = {}
        self._memo_size = memo_size

    def check(self, claims: dict[str, Any], *, now: float) -> JwtSvidClaims:
        """The checked claims at POSIX time ``now``; :class:`InvalidToken` as the function."""
        if type(claims) is not dict:
            raise InvalidToken("the token claims are not a JSON object", reason="malformed")
        sub, aud, exp, iat = (
            claims.get("sub"),
            claims.get("aud"),
            claims.get("exp"),
            claims.get("iat"),
        )
        spiffe_id = self._ids.get(sub) if type(sub) is str else None
        slack = self._slack
        if (  # the usual token, decided at once: a known sub, one audience, int times, no nbf
            spiffe_id is None
            or type(aud) is not str
            or aud != self.audience
            or type(exp) is not int
            or not 0 <= exp <= _MAX_TIMESTAMP
            or exp <= now - slack
            or type(iat) is not int
            or not 0 <= iat <= _MAX_TIMESTAMP
            or iat > now + slack
            or "nbf" in claims
        ):
            return _check_claims(claims, self.audience, now, slack, self._parse)
        jti = claims.get("jti")
        if jti is not None and (type(jti) is not str or not jti):
            raise InvalidToken("the jti claim must be a non-empty string", reason="malformed")
        agent = None if claims.get(AGENT_CLAIM) is None else _agent(claims, spiffe_id, self._parse)
        # Built field by field through the slots: the frozen __init__ costs twice as much.
        times = self._times
        expiry, issued_at = times.get(exp), times.get(iat)
        if expiry is None or issued_at is None:
            expiry, issued_at = self._time(exp), self._time(iat)
        value = _NEW(JwtSvidClaims)
        _SET_ID(value, spiffe_id)
        _SET_AUD(value, (aud,))
        _SET_EXP(value, expiry)
        _SET_IAT(value, issued_at)
        _SET_JTI(value, jti)
        _SET_CLAIMS(value, MappingProxyType(claims))
        _SET_AGENT(value, agent)
        return value

    def _time(self, seconds: int) -> datetime:
        times = self._times
        found = times.get(seconds)
        if found is None:
            if len(times) >= self._memo_size:
                times.clear()  # a burst of new instants: start again rather than track order
            found = times[seconds] = datetime.fromtimestamp(seconds, UTC)
        return found

    def _parse(self, text: object) -> SpiffeId:
        ids = self._ids
        found = ids.get(text) if type(text) is str else None
        if found is None:
            found = _parse_subject(text)
            if len(ids) >= self._memo_size:
                ids.clear()  # a burst of new subjects: start again rather than track order
            ids[str(found)] = found
        return found


def _check_claims(
    claims: dict[str, Any],
    audience: str,
    now: float,
    slack: float,
    parse: Callable[[object], SpiffeId],
) -> JwtSvidClaims:
    spiffe_id = parse(claims.get("sub"))
    token_audience = check_audience(claims, audience)
    exp, iat = _times(claims, now, slack)
    jti = claims.get("jti")
    if jti is not None and (type(jti) is not str or not jti):
        raise InvalidToken("the jti claim must be a non-empty string", reason="malformed")
    agent = None if claims.get(AGENT_CLAIM) is None else _agent(claims, spiffe_id, parse)
    return JwtSvidClaims(
        spiffe_id,
        token_audience,
        datetime.fromtimestamp(exp, UTC),
        None if iat is None else datetime.fromtimestamp(iat, UTC),
        jti,
        MappingProxyType(claims),
        agent,
    )


def _agent(
    claims: Mapping[str, Any], subject: SpiffeId, parse: Callable[[object], SpiffeId]
) -> SpiffeId:
    value = claims.get(AGENT_CLAIM)
    try:
        agent = parse(value) if isinstance(value, str) else None
    except InvalidToken:
        agent = None
    if agent is None or agent.trust_domain != subject.trust_domain:
        raise InvalidToken(
            f"the {AGENT_CLAIM} claim must be a SPIFFE ID of the token's trust domain",
            reason="malformed",
        )
    return agent


def algorithms_for_key(public_key: object) -> frozenset[str]:
    """The JWT-SVID algorithms a key can sign or verify; InvalidToken(reason='alg') if none."""
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        alg = _EC_ALGORITHMS.get(public_key.curve.name)
        if alg is not None:
            return frozenset({alg})
        raise InvalidToken(f"EC curve {public_key.curve.name} cannot sign JWT-SVIDs", reason="alg")
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if public_key.key_size >= MIN_RSA_BITS:
            return _RSA_ALGORITHMS
        raise InvalidToken(f"RSA keys under {MIN_RSA_BITS} bits are not allowed", reason="alg")
    raise InvalidToken(f"a {type(public_key).__name__} cannot sign JWT-SVIDs", reason="alg")


def build_jwt_claims(
    *,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    now: datetime,
    ttl: timedelta,
    jti: str | None = None,
    agent: SpiffeId | None = None,
) -> dict[str, Any]:
    """The claims of a new JWT-SVID (``sub``, ``aud``, ``exp``, ``iat``, optional ``jti`` and
    :data:`AGENT_CLAIM`).

    A single audience is written as a string, several as a list (as SPIRE does).
    Raises :class:`InvalidRequest` for an empty audience or a non-positive ttl.
    """
    if not isinstance(spiffe_id, SpiffeId):
        raise InvalidRequest("spiffe_id must be a SpiffeId")
    if isinstance(audience, str):
        raise InvalidRequest("audience must be a sequence of strings, not one string")
    auds = list(dict.fromkeys(audience))
    if not auds or not all(isinstance(a, str) and a for a in auds):
        raise InvalidRequest("a JWT-SVID needs at least one non-empty audience")
    if ttl <= timedelta(0):
        raise InvalidRequest("the JWT-SVID ttl must be positive")
    if now.utcoffset() is None:
        raise InvalidRequest("now must be an aware datetime")
    issued = math.floor(now.timestamp())
    claims: dict[str, Any] = {
        "sub": str(spiffe_id),
        "aud": auds[0] if len(auds) == 1 else auds,
        "exp": math.floor((now + ttl).timestamp()),
        "iat": issued,
    }
    if jti is not None:
        if not isinstance(jti, str) or not jti:
            raise InvalidRequest("jti must be a non-empty string")
        claims["jti"] = jti
    if agent is not None:
        if not isinstance(agent, SpiffeId) or agent.trust_domain != spiffe_id.trust_domain:
            raise InvalidRequest("agent must be a SpiffeId of the token's trust domain")
        claims[AGENT_CLAIM] = str(agent)
    return claims


def _check_arguments(audience: str, now: datetime, leeway: timedelta) -> None:
    if not isinstance(audience, str) or not audience:
        raise ValueError("the expected audience must be a non-empty string")
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    if not isinstance(leeway, timedelta) or not timedelta(0) <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY}")


def _parse_subject(sub: object) -> SpiffeId:
    if not isinstance(sub, str):
        raise InvalidToken("the token has no sub claim (the SPIFFE ID)", reason="sub")
    try:
        return SpiffeId.parse(sub)
    except InvalidSpiffeId as exc:
        raise InvalidToken(f"the token subject is not a SPIFFE ID: {exc}", reason="sub") from None


def check_jwt_times(
    claims: Mapping[str, Any], *, now: datetime, leeway: timedelta
) -> tuple[float, float | None]:
    """``exp`` (required, not past ``now`` minus ``leeway``) and ``iat`` (if present, not after
    ``now`` plus ``leeway``) as POSIX times; ``nbf``, if present, not after ``now`` plus ``leeway``.
    """
    return _times(claims, now.timestamp(), leeway.total_seconds())


def check_jwt_times_at(
    claims: Mapping[str, Any], now: float, slack: float
) -> tuple[float, float | None]:
    """:func:`check_jwt_times` at POSIX time ``now`` with a leeway of ``slack`` seconds."""
    return _times(claims, now, slack)


def _times(claims: Mapping[str, Any], now_ts: float, slack: float) -> tuple[float, float | None]:
    exp = _timestamp(claims, "exp")
    if exp is None:
        raise InvalidToken("the token has no exp claim", reason="exp")
    if exp <= now_ts - slack:
        raise InvalidToken("the token has expired", reason="exp")
    nbf = _timestamp(claims, "nbf")
    if nbf is not None and nbf > now_ts + slack:
        raise InvalidToken("the token is not valid yet (nbf is in the future)", reason="exp")
    iat = _timestamp(claims, "iat")
    if iat is not None and iat > now_ts + slack:
        raise InvalidToken("the token was issued in the future (iat)", reason="exp")
    return exp, iat


def check_audience(claims: Mapping[str, Any], expected: str) -> tuple[str, ...]:
    """The ``aud`` values (a string or a list of non-empty strings); ``expected`` among them."""
    aud = claims.get("aud")
    if type(aud) is str and aud == expected and aud:  # the common case, decided at once
        return (aud,)
    values: tuple[Any, ...]
    if isinstance(aud, str):
        values = (aud,)
    elif isinstance(aud, list):
        values = tuple(aud)
    else:
        raise InvalidToken("the token has no aud claim", reason="aud")
    if not values or not all(isinstance(v, str) and v for v in values):
        raise InvalidToken("the aud claim must hold non-empty strings", reason="aud")
    if expected not in values:
        raise InvalidToken("the token is not meant for this audience", reason="aud")
    return values


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name, _ABSENT)
    if type(value) is int and 0 <= value <= _MAX_TIMESTAMP:  # the common case, decided at once
        return float(value)
    if value is _ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the {name} claim must be a number", reason="exp")
    if not math.isfinite(value) or not 0 <= value <= _MAX_TIMESTAMP:
        raise InvalidToken(f"the {name} claim is out of range", reason="exp")
    return float(value)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
