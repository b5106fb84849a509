"""A small in-memory :class:`~s2s.agent.workload_api.IdentityProvider` for tests and benchmarks.

Identities are put in by hand (``put(key, selectors, svid)``) instead of coming from a CA; bundles
and CRLs are set whole. Every change bumps :attr:`version` and wakes the Workload API streams.
JWT-SVIDs come from an injected signer and are cached per (SPIFFE ID, audience set) until half of
their lifetime has passed, as the agent's cache does. Mutate it from the event loop's thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from s2s.agent.versioned import Versioned
from s2s.core.b64 import b64url_decode
from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import Unavailable
from s2s.core.selectors import Selector, matches
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.verifier.jwt import JwtValidator
from s2s.verifier.revocation_choice import no_revocation_check

__all__ = ["JwtSigner", "JwtValidatorFn", "StaticIdentityProvider", "validate_jwt_svid"]

JwtSigner = Callable[[SpiffeId, tuple[str, ...]], str]
JwtValidatorFn = Callable[[str, str, BundleSet], tuple[SpiffeId, Mapping[str, Any]]]


class StaticIdentityProvider(Versioned):
    """Identities, bundles and CRLs held in memory."""

    def __init__(
        self,
        *,
        bundles: BundleSet | None = None,
        jwt_signer: JwtSigner | None = None,
        validator: JwtValidatorFn | None = None,
        clock: Clock | None = None,
        crls: Iterable[bytes] = (),
    ) -> None:
        super().__init__()
        self._entries: dict[str, tuple[frozenset[Selector], X509Svid]] = {}
        self._bundles = bundles if bundles is not None else BundleSet()
        self._crls = tuple(crls)
        self._signer = jwt_signer
        self._validator = validator
        self._clock = clock or SystemClock()
        self._jwt_cache: dict[tuple[SpiffeId, frozenset[str]], tuple[str, datetime]] = {}

    # -- mutation ---------------------------------------------------------------------------

    def put(self, key: str, selectors: Iterable[Selector | str], svid: X509Svid) -> None:
        """Add or replace the identity ``key``: ``svid`` for callers with all ``selectors``."""
        parsed = frozenset(s if isinstance(s, Selector) else Selector.parse(s) for s in selectors)
        self._entries[key] = (parsed, svid)
        self._bump()

    def remove(self, key: str) -> None:
        del self._entries[key]
        self._jwt_cache.clear()
        self._bump()

    def set_bundles(self, bundles: BundleSet) -> None:
        self._bundles = bundles
        self._bump()

    def set_crls(self, crls: Iterable[bytes]) -> None:
        self._crls = tuple(crls)
        self._bump()

    # -- IdentityProvider -------------------------------------------------------------------

    def svids_for(self, selectors: frozenset[Selector]) -> tuple[X509Svid, ...]:
        return tuple(svid for sel, svid in self._entries.values() if matches(sel, selectors))

    def bundles(self) -> BundleSet:
        return self._bundles

    def bundles_for(self, selectors: frozenset[Selector]) -> BundleSet:
        """Every bundle set here, for any caller (this provider has no entries to scope by)."""
        return self.bundles()

    def crls(self) -> tuple[bytes, ...]:
        return self._crls

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: tuple[str, ...]) -> str:
        if self._signer is None:
            raise Unavailable("this provider has no JWT signer")
        key = (spiffe_id, frozenset(audience))
        now = self._clock.now()
        cached = self._jwt_cache.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        token = self._signer(spiffe_id, audience)
        self._jwt_cache[key] = (token, _half_life(token))
        return token

    def validate_jwt(self, token: str, audience: str) -> tuple[SpiffeId, Mapping[str, Any]]:
        if self._validator is not None:
            return self._validator(token, audience, self._bundles)
        return validate_jwt_svid(token, audience, self._bundles, clock=self._clock)


def validate_jwt_svid(
    token: str, audience: str, bundles: BundleSet, *, clock: Clock
) -> tuple[SpiffeId, Mapping[str, Any]]:
    """Validate with the verifier's :class:`JwtValidator` (one audience per call, no cache).
    This provider holds no revocations, so none are checked (said explicitly)."""
    validator = JwtValidator(
        bundles, audience, revocations=no_revocation_check(), clock=clock, cache_size=0
    )
    checked = validator.validate(token)
    return checked.spiffe_id, checked.claims.claims


def _half_life(token: str) -> datetime:
    """When a cached token should be replaced: halfway between ``iat`` and ``exp``."""
    payload = token.split(".")[1]
    claims = json.loads(b64url_decode(payload))
    exp = float(claims["exp"])
    iat = float(claims.get("iat", exp))
    return datetime.fromtimestamp(iat + (exp - iat) / 2, tz=UTC)
