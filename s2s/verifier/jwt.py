"""JWT-SVID validation (JWT-SVID.md): strict compact JWS, keys bound to algorithms, a result cache.

A token is checked in this order, cheapest and least trusting first: size, the result cache,
compact form (exactly three strict base64url parts), the JOSE header (:func:`check_jwt_header`),
the claims (:func:`check_jwt_claims`: ``sub``, ``aud``, ``exp``; before the signature, so an
expired or misaddressed token costs no verify, and nothing is trusted until the signature holds),
the key chosen by ``kid`` within the bundle of the ``sub`` trust domain, the algorithm bound to that
key's type (never taken from the token alone), the signature (``cryptography`` directly), and
revocation by ``jti`` and by SPIFFE ID.

Successful validations are cached by token string in a bounded LRU: an entry is used only with the
very bundle and revocation snapshots it was validated against (both are immutable and swapped
whole, so identity tells a change), is dropped at the token's ``exp``, and the whole cache is
cleared when either snapshot changes. A hit costs a dict lookup and a few identity checks.
Public keys are kept per bundle snapshot the same way, each as the signature checks of the
algorithms bound to it (:func:`~s2s.verifier.jws.signature_checks`: what depends on the key alone
is worked out once): the key table belongs to one snapshot and a lookup uses it only when
validating against that very snapshot, so a thread that still holds an older snapshot (one that
had a key since dropped) can never hand that key to a thread validating against the newer one.

The JWS compact form and signature checks live in :mod:`s2s.verifier.jws`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY

from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, InvalidToken, Unavailable
from s2s.core.jwtsvid import (
    DEFAULT_LEEWAY,
    MAX_LEEWAY,
    JwtClaimsChecker,
    JwtSvidClaims,
    algorithms_for_key,
    check_jwt_header,
)
from s2s.core.revocation import RevocationLookup, RevocationSet
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.verifier.jws import (
    DEFAULT_MAX_TOKEN_BYTES,
    SignatureCheck,
    b64decode,
    json_object,
    signature_checks,
    split_parts,
)
from s2s.verifier.py_spiffe import bundles_of
from s2s.verifier.revocation_choice import resolve_revocations
from s2s.verifier.token_cache import (
    TokenCache,
    check_token_text,
    posix_clock,
    stale_revocations,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "REJECTION_REASONS",
    "AcceptedCounter",
    "BundleLookup",
    "JwtMetrics",
    "JwtValidator",
    "ValidatedJwt",
]

DEFAULT_CACHE_SIZE = 10_000
REJECTION_REASONS = (
    "malformed", "alg", "typ", "header", "kid", "sub", "aud",
    "exp", "signature", "revoked", "too-large", "untrusted", "revocations-stale",
)  # fmt: skip
_HEADER_MEMO = 256  # distinct JOSE header segments remembered (a few per signing key)
# The key's signature checks by algorithm (jws.signature_checks), and its not-after instant.
_KeyEntry = tuple[dict[str, SignatureCheck], "float | None"]


class BundleLookup(Protocol):
    """Anything that holds the current bundle set (a ``JwtSource``, for one)."""

    def current(self) -> BundleSet: ...


@dataclass(frozen=True, slots=True)
class ValidatedJwt:
    """A JWT-SVID that passed every check."""

    spiffe_id: SpiffeId
    claims: JwtSvidClaims

    @property
    def expiry(self) -> datetime:
        return self.claims.expiry


_NEW = object.__new__
_SET_ID = ValidatedJwt.__dict__["spiffe_id"].__set__
_SET_CLAIMS = ValidatedJwt.__dict__["claims"].__set__


class AcceptedCounter:
    """A counter without labels, counted by one C call and read when scraped.

    ``count()`` is ``next`` on an ``itertools.count`` (atomic under the GIL, ~40 ns), where a
    ``prometheus_client`` ``Counter.inc()`` takes a lock and several Python calls (~0.5 us):
    too much for a validation that costs ~80 us in all. Registered as a collector that reports
    the count as a counter named ``name`` (``name_total`` in the exposition).
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._counter = itertools.count()
        self.count: Callable[[], int] = self._counter.__next__
        registry.register(self)

    def inc(self) -> None:
        self.count()

    def value(self) -> int:
        # The repr is "count(N)", N the next value to hand out: the number of counts so far.
        return int(repr(self._counter)[6:-1])

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value())


class JwtMetrics:
    """``s2s_verifier_jwt_rejections_total{reason}`` and ``s2s_verifier_jwts_accepted_total``.

    A subclass names other counters (``NAMES``: rejections name and help, accepted name and
    help) and the reasons it knows up front (``REASONS``).
    """

    NAMES = (
        "s2s_verifier_jwt_rejections",
        "JWT-SVIDs rejected by the s2s verifier, by reason",
        "s2s_verifier_jwts_accepted",
        "JWT-SVIDs validated (cache misses that passed every check)",
    )
    REASONS: tuple[str, ...] = REJECTION_REASONS

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        rejected_name, rejected_help, accepted_name, accepted_help = self.NAMES
        self.rejections = Counter(rejected_name, rejected_help, ["reason"], registry=reg)
        self.accepted = AcceptedCounter(accepted_name, accepted_help, reg)
        self._by_reason = {reason: self.rejections.labels(reason) for reason in self.REASONS}

    def rejected(self, reason: str) -> None:
        child = self._by_reason.get(reason)
        (child if child is not None else self.rejections.labels(reason)).inc()

    def rejection_count(self, reason: str) -> float:
        """The current count for ``reason`` (tests and diagnostics)."""
        return float(self.rejections.labels(reason)._value.get())


_default_metrics: JwtMetrics | None = None
_metrics_lock = threading.Lock()


def default_jwt_metrics() -> JwtMetrics:
    """The process-wide instance, registered with the global registry once."""
    global _default_metrics  # noqa: PLW0603 (one registration per process)
    if _default_metrics is None:
        with _metrics_lock:
            if _default_metrics is None:
                _default_metrics = JwtMetrics()
    return _default_metrics


class JwtValidator:
    """Validates JWT-SVIDs for one audience against a bundle set; thread-safe.

    ``bundles`` is a :class:`BundleSet` or anything with ``current() -> BundleSet`` (a
    ``JwtSource``); ``revocations`` anything with ``current() -> RevocationSet``. Left out,
    ``revocations`` is the source's own (``JwtSource.revocations``: the agent's revocations,
    by ``jti`` and by SPIFFE ID); a bundle set or source without any needs a lookup or
    ``revocations=no_revocation_check()`` (:class:`InvalidConfig` otherwise). py-spiffe's
    ``JwtSource`` is accepted as ``bundles`` (:mod:`s2s.verifier.py_spiffe`).
    """

    def __init__(
        self,
        bundles: BundleSet | BundleLookup,
        audience: str,
        *,
        revocations: RevocationLookup | None = None,
        leeway: timedelta = DEFAULT_LEEWAY,
        clock: Clock | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        metrics: JwtMetrics | None = None,
    ) -> None:
        if not isinstance(audience, str) or not audience:
            raise InvalidConfig("the audience must be a non-empty string")
        if not isinstance(leeway, timedelta) or not timedelta(0) <= leeway <= MAX_LEEWAY:
            raise InvalidConfig(f"leeway must be between 0 and {MAX_LEEWAY}")
        if cache_size < 0 or max_token_bytes < 64:
            raise InvalidConfig("cache_size must be >= 0 and max_token_bytes >= 64")
        self._revocations = resolve_revocations(bundles, revocations, what="JwtValidator")
        if isinstance(bundles, BundleSet):
            self._bundles: BundleLookup = _StaticBundles(bundles)
        else:  # a py-spiffe JwtSource is accepted as is
            self._bundles = bundles_of(bundles, what="JwtValidator")
        self.audience = audience
        self.leeway = leeway
        self._clock = clock if clock is not None else SystemClock()
        self._now = posix_clock(self._clock)
        self._claims = JwtClaimsChecker(audience, leeway)
        self._check_claims = self._claims.check
        self._headers: dict[str, tuple[str, str]] = {}
        self._max_bytes = max_token_bytes
        self._metrics = metrics if metrics is not None else default_jwt_metrics()
        self._count_accepted = self._metrics.accepted.count
        self._lock = threading.Lock()
        self._cache: TokenCache[ValidatedJwt] = TokenCache(cache_size, lock=self._lock)
        self._entries = self._cache.entries  # the hit path reads it without a call
        self._forget = self._forget_keys  # bound once, not on every miss
        # The key table and the snapshot it was filled from, read and replaced as one tuple.
        # Keyed by (trust domain name, kid): a str hashes once, a TrustDomain on every lookup.
        self._keys: tuple[object, dict[tuple[str, str], _KeyEntry]] = (None, {})
        self.cache_hits = 0

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def validate(self, token: str) -> ValidatedJwt:
        """The SPIFFE ID and claims of ``token``; InvalidToken (with ``.reason``) if rejected."""
        try:
            return self._validate(token)
        except InvalidToken as exc:
            self._metrics.rejected(exc.reason)
            raise

    def cache_len(self) -> int:
        return len(self._entries)

    def _validate(self, token: str) -> ValidatedJwt:
        if not isinstance(token, str) or len(token) > self._max_bytes:
            check_token_text(token, self._max_bytes)  # says which
        now = self._now()
        bundles = self._bundles.current()
        try:
            revocations = self._revocations.current()
        except Unavailable as exc:  # a stale feed: what is revoked is unknown, so fail closed
            raise stale_revocations(exc) from None
        # Lock-free hit: an entry counts only if it was validated against these very snapshots.
        entry = self._entries.get(token)
        if entry is not None and entry[1] is bundles and entry[2] is revocations and now < entry[3]:
            try:  # noqa: SIM105 (contextlib.suppress costs ~0.3 us on the hot path)
                self._entries.move_to_end(token)
            except KeyError:  # evicted meanwhile by another thread
                pass
            self.cache_hits += 1
            return entry[0]
        return self._validate_miss(token, now, bundles, revocations)

    def _validate_miss(
        self, token: str, now: float, bundles: BundleSet, revocations: RevocationSet
    ) -> ValidatedJwt:
        cache = self._cache
        cache.begin_miss(token, bundles, revocations, self._forget)
        result = self._validate_uncached(token, now, bundles, revocations)
        self._count_accepted()
        cache.keep(token, result, result.claims.claims["exp"], bundles, revocations, now)
        return result

    def _forget_keys(self, bundles: BundleSet) -> None:
        """A new bundle snapshot (under the lock): the key table of the old one goes."""
        if self._keys[0] is not bundles:
            self._keys = (bundles, {})

    def _validate_uncached(
        self, token: str, now: float, bundles: BundleSet, revocations: RevocationSet
    ) -> ValidatedJwt:
        head, body, sig = split_parts(token)
        # Every part is decoded (its alphabet and canonical form checked) before anything is
        # read from the token: a malformed token is refused as such, whatever it says.
        payload, signature = b64decode(body), b64decode(sig)
        alg_kid = self._headers.get(head)
        if alg_kid is None:
            alg_kid = self._check_header(head)
        alg, kid = alg_kid
        # Claims are checked before the (costly) signature: an expired or misaddressed token is
        # refused without spending a verify. Nothing here acts on them until the signature holds.
        checked = self._check_claims(json_object(payload, "claims"), now=now)
        # The algorithm is bound to the key (its type and size), never taken from the token alone.
        check = self._key_for(bundles, checked.spiffe_id.trust_domain, kid, now).get(alg)
        if check is None:
            raise InvalidToken(f"the token algorithm {alg} does not match the key", reason="alg")
        check(token[: len(head) + 1 + len(body)].encode("ascii"), signature)
        _check_revocation(revocations, checked)
        result = _NEW(ValidatedJwt)  # through the slots: the frozen __init__ costs twice as much
        _SET_ID(result, checked.spiffe_id)
        _SET_CLAIMS(result, checked)
        return result

    def _check_header(self, head: str) -> tuple[str, str]:
        """``alg`` and ``kid`` of a header segment, remembered once it passed its checks: a
        signer sends the same few headers over and over, and the result depends on nothing else."""
        header = json_object(b64decode(head), "header")
        alg_kid = (check_jwt_header(header), header["kid"])
        headers = self._headers
        if len(headers) >= _HEADER_MEMO:
            headers.clear()  # many distinct headers: start again rather than track order
        headers[head] = alg_kid
        return alg_kid

    def _key_for(
        self, bundles: BundleSet, td: TrustDomain, kid: str, now: float
    ) -> dict[str, SignatureCheck]:
        owner, keys = self._keys  # one read: the table and the snapshot it belongs to
        entry = keys.get((td.name, kid)) if owner is bundles else None
        if entry is None:
            bundle = bundles.get(td)
            if bundle is None:
                raise InvalidToken(f"no bundle for trust domain {td}", reason="untrusted")
            authority = bundle.jwt_authority(kid)
            if authority is None:
                # A kid of another trust domain is unknown here: keys never cross trust domains.
                raise InvalidToken(
                    f"no JWT authority {kid[:64]!r} in the bundle of {td}", reason="kid"
                )
            key, not_after = authority.public_key, authority.not_after
            expires = None if not_after is None else not_after.timestamp()
            entry = (signature_checks(key, algorithms_for_key(key)), expires)
            with self._lock:
                if self._keys[0] is bundles:
                    self._keys[1][(td.name, kid)] = entry
        if entry[1] is not None and now > entry[1]:
            raise InvalidToken(f"the JWT authority {kid[:64]!r} of {td} has expired", reason="kid")
        return entry[0]


class _StaticBundles:
    def __init__(self, bundles: BundleSet) -> None:
        self._bundles = bundles

    def current(self) -> BundleSet:
        return self._bundles


def _check_revocation(revocations: RevocationSet, claims: JwtSvidClaims) -> None:
    if claims.jti is not None and revocations.is_jti_revoked(claims.jti):
        raise InvalidToken("the token (jti) has been revoked", reason="revoked")
    # An ID record revokes what was issued before it; a token without iat may have been issued
    # at any time, so any record for the ID covers it.
    issued_at = claims.issued_at
    revoked_at = revocations.revoked_at(claims.spiffe_id)
    if revoked_at is not None and (issued_at is None or issued_at < revoked_at):
        raise InvalidToken(f"the SPIFFE ID {claims.spiffe_id} has been revoked", reason="revoked")
    if claims.agent is not None:
        revoked_at = revocations.revoked_at(claims.agent)
        if revoked_at is not None and (issued_at is None or issued_at < revoked_at):
            raise InvalidToken(
                f"the agent {claims.agent} that obtained the token has been revoked",
                reason="revoked",
            )
