"""OAuth 2.0 access-token validation (RFC 9068 JWT profile), local: no call to the AS per token.

A token is checked in this order, cheapest and least trusting first: size, the result cache,
compact form (:mod:`s2s.verifier.jws`), the JOSE header (``typ`` ``at+jwt`` per RFC 9068 section
2.1, an allowed ``alg``, a ``kid``, none of ``jku``/``jwk``/``x5u``/``x5c``/``crit``/``b64``),
the claims (RFC 9068 section 2.2: ``iss`` exactly the configured issuer, the audience among
``aud``, ``exp``/``nbf``/``iat`` with leeway, ``sub``, ``client_id``, ``jti``; ``scope`` and
``cnf`` well formed), the AS key chosen by ``kid`` with the algorithm bound to that key, the
signature, and revocation (the ``jti``; and the ``sub`` when it is a SPIFFE ID, against ``iat``).

A certificate-bound token (RFC 8705 section 3: ``cnf`` with ``x5t#S256``) is accepted only with
the peer certificate of the connection it came over, and only if its SHA-256 thumbprint matches;
a bound token over no certificate or another certificate is refused (``reason='cnf'``). The
binding is checked on every call, cache hit or not: the cache holds what the token says, the
connection is the caller's.

Successful validations are cached as in :class:`~s2s.verifier.jwt.JwtValidator`: by token string,
usable only with the very key-set and revocation snapshots they were validated against, dropped
at ``exp``, the whole cache cleared when either snapshot changes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.core.b64 import b64url_encode
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InsufficientScope, InvalidConfig, InvalidToken, Unavailable
from s2s.core.jwtsvid import ALLOWED_ALGORITHMS, DEFAULT_LEEWAY, FORBIDDEN_HEADERS, MAX_LEEWAY
from s2s.core.revocation import RevocationLookup, RevocationSet
from s2s.verifier.access_token_claims import AccessToken, AccessTokenClaimsChecker
from s2s.verifier.access_token_keys import AccessTokenKeys, SigningKeySet, StaticJwks
from s2s.verifier.jws import (
    DEFAULT_MAX_TOKEN_BYTES,
    SignatureCheck,
    b64decode,
    json_object,
    signature_checks,
    split_parts,
)
from s2s.verifier.jwt import JwtMetrics
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.token_cache import (
    TokenCache,
    check_token_text,
    posix_clock,
    stale_revocations,
)

__all__ = [
    "ACCESS_TOKEN_TYPES",
    "DEFAULT_CACHE_SIZE",
    "REJECTION_REASONS",
    "AccessTokenMetrics",
    "AccessTokenValidator",
    "certificate_thumbprint",
    "require_scopes",
    "scopes_text",
]

DEFAULT_CACHE_SIZE = 10_000
# RFC 9068 2.1: "at+jwt"; the full media type "application/at+jwt" is equivalent (RFC 7515 4.1.9).
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REJECTION_REASONS = (
    "malformed", "alg", "typ", "header", "kid", "iss", "aud", "exp", "sub", "client-id", "jti",
    "scope", "cnf", "signature", "revoked", "too-large", "revocations-stale",
)  # fmt: skip
_Certificate = bytes | x509.Certificate | None
_HEADER_MEMO = 256  # header segments that passed their checks, remembered (an AS has a few)


def certificate_thumbprint(certificate: bytes | x509.Certificate) -> str:
    """RFC 8705 section 3.1: base64url(SHA-256(DER of the certificate)), unpadded."""
    der = certificate if isinstance(certificate, bytes) else certificate.public_bytes(Encoding.DER)
    return b64url_encode(hashlib.sha256(der).digest())


class AccessTokenMetrics(JwtMetrics):
    """``s2s_verifier_access_token_rejections_total{reason}`` and
    ``s2s_verifier_access_tokens_accepted_total``."""

    NAMES = (
        "s2s_verifier_access_token_rejections",
        "OAuth access tokens rejected by the s2s verifier, by reason",
        "s2s_verifier_access_tokens_accepted",
        "OAuth access tokens validated (cache misses that passed every check)",
    )
    REASONS = REJECTION_REASONS


_default_metrics: AccessTokenMetrics | None = None
_metrics_lock = threading.Lock()


def default_access_token_metrics() -> AccessTokenMetrics:
    """The process-wide instance, registered with the global registry once."""
    global _default_metrics  # noqa: PLW0603 (one registration per process)
    if _default_metrics is None:
        with _metrics_lock:
            if _default_metrics is None:
                _default_metrics = AccessTokenMetrics()
    return _default_metrics


def require_scopes(token: AccessToken, *scopes: str) -> AccessToken:
    """``token`` if it holds every one of ``scopes``; :class:`InsufficientScope` otherwise.

    >>> require_scopes(token, "billing.read")            # doctest: +SKIP
    """
    needed = frozenset(scopes)
    missing = needed - token.scopes
    if missing:
        raise InsufficientScope(
            f"the access token lacks the scope {' '.join(sorted(missing))}", required=needed
        )
    return token


class AccessTokenValidator:
    """Validates access tokens of one issuer for one audience; thread-safe.

    ``keys`` is a :class:`SigningKeySet` or a provider (a
    :class:`~s2s.verifier.access_token_fetch.JwksFetcher`, a :class:`StaticJwks`);
    ``revocations`` a lookup (an ``EtcdRevocationFeed``, a ``CaRevocationFeed``, the
    ``revocations`` of a ``JwtSource``) or, explicitly, ``no_revocation_check()``.
    ``require_binding`` refuses tokens that are not certificate-bound.
    """

    def __init__(
        self,
        keys: SigningKeySet | AccessTokenKeys,
        *,
        issuer: str,
        audience: str,
        revocations: RevocationLookup | None = None,
        require_binding: bool = False,
        leeway: timedelta = DEFAULT_LEEWAY,
        clock: Clock | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        metrics: AccessTokenMetrics | None = None,
    ) -> None:
        for name, value in (("issuer", issuer), ("audience", audience)):
            if not isinstance(value, str) or not value:
                raise InvalidConfig(f"the {name} must be a non-empty string")
        if not isinstance(leeway, timedelta) or not timedelta(0) <= leeway <= MAX_LEEWAY:
            raise InvalidConfig(f"leeway must be between 0 and {MAX_LEEWAY}")
        if cache_size < 0 or max_token_bytes < 64:
            raise InvalidConfig("cache_size must be >= 0 and max_token_bytes >= 64")
        self.keys: AccessTokenKeys = StaticJwks(keys) if isinstance(keys, SigningKeySet) else keys
        self._revocations = resolve_revocations(keys, revocations, what="AccessTokenValidator")
        self.issuer = issuer
        self.audience = audience
        self.require_binding = require_binding
        self.leeway = leeway
        self._clock = clock if clock is not None else SystemClock()
        self._now = posix_clock(self._clock)
        self._max_bytes = max_token_bytes
        self._metrics = metrics if metrics is not None else default_access_token_metrics()
        self._count_accepted = self._metrics.accepted.count
        self._cache: TokenCache[AccessToken] = TokenCache(cache_size)
        self._headers: dict[str, tuple[str, str]] = {}
        self._check_claims = AccessTokenClaimsChecker(issuer, audience, leeway).check
        # The signature checks of the keys by kid, and the key set they were made from, read
        # and replaced as one tuple: a lookup uses them only for that very key set.
        self._checks: tuple[object, dict[str, dict[str, SignatureCheck]]] = (None, {})
        self._forget = self._forget_checks

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def validate(self, token: str, *, peer_certificate: _Certificate = None) -> AccessToken:
        """The checked token; :class:`InvalidToken` (with ``.reason``) if it must be refused.

        ``peer_certificate`` (DER or a certificate) is the client certificate of the connection
        the token came over, if any. :class:`Unavailable` when there are no keys yet.
        """
        try:
            return self._validate(token, peer_certificate)
        except InvalidToken as exc:
            self._metrics.rejected(exc.reason)
            raise

    def _validate(self, token: str, peer_certificate: _Certificate) -> AccessToken:
        if not isinstance(token, str) or len(token) > self._max_bytes:
            check_token_text(token, self._max_bytes)  # says which
        now = self._now()
        keys = self.keys.current()
        try:
            revocations = self._revocations.current()
        except Unavailable as exc:
            raise stale_revocations(exc) from None
        cache = self._cache
        result = cache.hit(token, keys, revocations, now)
        if result is None:
            cache.begin_miss(token, keys, revocations, self._forget)
            result = self._validate_uncached(token, now, keys, revocations)
            self._count_accepted()
            cache.keep(token, result, result.claims["exp"], keys, revocations, now)
        if result.thumbprint is not None or self.require_binding:
            self._check_binding(result, peer_certificate)
        return result

    async def validate_async(
        self, token: str, *, peer_certificate: _Certificate = None
    ) -> AccessToken:
        """:meth:`validate`, and when the token names a key the set lacks, one (rate limited)
        refresh of the keys and a second try: the AS has rotated its key."""
        try:
            return self.validate(token, peer_certificate=peer_certificate)
        except InvalidToken as exc:
            if exc.reason != "kid":
                raise
            before = self.keys.current()
            if await self.keys.refresh() is before:
                raise
        return self.validate(token, peer_certificate=peer_certificate)

    def cache_len(self) -> int:
        return len(self._cache)

    def _validate_uncached(
        self, token: str, now: float, keys: SigningKeySet, revocations: RevocationSet
    ) -> AccessToken:
        head, body, sig = split_parts(token)
        # Every part is decoded (alphabet, canonical form) before anything is read from it.
        payload, signature = b64decode(body), b64decode(sig)
        alg_kid = self._headers.get(head)
        if alg_kid is None:  # the result depends on the segment alone; only a pass is kept
            alg_kid = _check_header(json_object(b64decode(head), "header"))
            if len(self._headers) >= _HEADER_MEMO:
                self._headers.clear()
            self._headers[head] = alg_kid
        alg, kid = alg_kid
        checked = self._check_claims(json_object(payload, "claims"), now)
        # The algorithm is bound to the key (its type, and its JWKS alg if any).
        check = self._checks_for(keys, kid).get(alg)
        if check is None:
            raise InvalidToken(f"the token algorithm {alg} does not match the key", reason="alg")
        check(token[: len(head) + 1 + len(body)].encode("ascii"), signature)
        _check_revocation(revocations, checked)
        return checked

    def _checks_for(self, keys: SigningKeySet, kid: str) -> dict[str, SignatureCheck]:
        owner, table = self._checks  # one read: the table and the key set it belongs to
        checks = table.get(kid) if owner is keys else None
        if checks is None:
            key = keys.get(kid)
            if key is None:
                raise InvalidToken(f"no key {kid[:64]!r} in the issuer's key set", reason="kid")
            checks = signature_checks(key.public_key, key.algorithms)
            with self._cache.lock:
                if self._checks[0] is keys:
                    self._checks[1][kid] = checks
        return checks

    def _forget_checks(self, keys: SigningKeySet) -> None:
        """A new key set (under the cache's lock): the checks of the old one go."""
        if self._checks[0] is not keys:
            self._checks = (keys, {})

    def _check_binding(self, token: AccessToken, peer_certificate: _Certificate) -> None:
        if token.thumbprint is None:
            if self.require_binding:
                raise InvalidToken("the token is not certificate-bound", reason="cnf")
            return
        if peer_certificate is None:
            raise InvalidToken(
                "the token is certificate-bound and came over no client certificate",
                reason="cnf",
            )
        actual = certificate_thumbprint(peer_certificate)
        if not hmac.compare_digest(actual.encode(), token.thumbprint.encode()):
            raise InvalidToken("the token is bound to another client certificate", reason="cnf")


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise InvalidToken(f"the token algorithm {str(alg)[:20]!r} is not allowed", reason="alg")
    forbidden = sorted(FORBIDDEN_HEADERS.intersection(header))
    if forbidden:
        raise InvalidToken(f"the token header must not contain {forbidden}", reason="header")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
        # RFC 9068 4: refuse other JWTs (an ID token, a JWT-SVID) presented as access tokens.
        raise InvalidToken(f"the token type {str(typ)[:20]!r} is not at+jwt", reason="typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("the token header has no key id (kid)", reason="kid")
    return alg, kid


def _check_revocation(revocations: RevocationSet, token: AccessToken) -> None:
    if revocations.is_jti_revoked(token.jti):
        raise InvalidToken("the token (jti) has been revoked", reason="revoked")
    if token.spiffe_id is not None:
        revoked_at = revocations.revoked_at(token.spiffe_id)
        if revoked_at is not None and token.issued_at < revoked_at:
            raise InvalidToken(
                f"the SPIFFE ID {token.spiffe_id} has been revoked", reason="revoked"
            )


def scopes_text(scopes: Iterable[str]) -> str:
    """Scopes as RFC 6749 section 3.3 writes them: sorted, space-separated."""
    return " ".join(sorted(scopes))
