"""JWT-SVIDs for the Workload API: minted by the CA, cached per (SPIFFE ID, audience set).

A cached token is served until half of its lifetime has passed; then a new one is minted. When the
CA cannot be reached a token past half-life but not yet expired is still served (it is valid),
so a CA outage shorter than half a JWT lifetime is invisible to workloads. Concurrent requests for
the same key share one CA call. Validation (``ValidateJWTSVID``) uses the verifier's
:class:`~s2s.verifier.jwt.JwtValidator`, one per audience, against the agent's bundles and the
agent's revocation feed: a token revoked by ``jti`` or by SPIFFE ID (issued before the record) is
refused with reason ``revoked``, and while the feed is stale (or has never synced) every token is
refused with reason ``revocations-stale`` (fail closed; the Workload API answers UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from s2s.agent.ca_client import CaClient
from s2s.agent.ca_wire import AgentUnknown
from s2s.agent.metrics import AgentMetrics
from s2s.core.b64 import b64url_decode
from s2s.core.clock import Clock
from s2s.core.errors import S2SError, Unavailable
from s2s.core.jwtsvid import AGENT_CLAIM
from s2s.core.revocation import RevocationLookup, RevocationSet
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.jwt import BundleLookup, JwtValidator
from s2s.verifier.revocation_choice import no_revocation_check

__all__ = ["MAX_JWT_CACHE", "MAX_VALIDATORS", "JwtSvidCache"]

MAX_JWT_CACHE: Final = 10_000
MAX_VALIDATORS: Final = 256

_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
_Key = tuple[SpiffeId, frozenset[str]]
EntryFor = Callable[[SpiffeId], str | None]  # the id of a current entry for a SPIFFE ID


class JwtSvidCache:
    """Mints, caches and validates JWT-SVIDs for one agent."""

    def __init__(
        self,
        *,
        client: CaClient,
        clock: Clock,
        bundles: BundleLookup,
        entry_for: EntryFor,
        metrics: AgentMetrics,
        on_unknown: Callable[[], Awaitable[None]] | None = None,
        revocations: RevocationLookup | None = None,
    ) -> None:
        """``revocations``: what ValidateJWTSVID checks tokens against (the agent's feed);
        None checks none (tests and tools without a feed)."""
        self._client = client
        self._clock = clock
        self._bundles = bundles
        self._entry_for = entry_for
        self._metrics = metrics
        self._on_unknown = on_unknown
        self._revocations = revocations
        self._tokens: dict[_Key, tuple[str, datetime, datetime]] = {}  # token, half-life, exp
        self._pending: dict[_Key, asyncio.Future[str]] = {}
        self._validators: dict[str, JwtValidator] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    async def fetch(self, spiffe_id: SpiffeId, audience: tuple[str, ...]) -> str:
        """A JWT-SVID for ``spiffe_id`` and ``audience``; :class:`Unavailable` if none is had."""
        key = (spiffe_id, frozenset(audience))
        now = self._clock.now()
        cached = self._tokens.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._mint(key, audience))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        try:
            return await asyncio.shield(pending)
        except Unavailable:
            if cached is not None and self._clock.now() < cached[2]:
                return cached[0]
            raise

    def keep_only(self, live: Iterable[SpiffeId]) -> None:
        """Forget tokens of SPIFFE IDs this agent no longer holds an entry for."""
        ids = frozenset(live)
        self._tokens = {k: v for k, v in self._tokens.items() if k[0] in ids}

    def drop_signed_by(self, kids: frozenset[str]) -> int:
        """Forget cached tokens whose header names a kid in ``kids`` (a tainted or revoked JWT
        key): the next fetch mints a fresh one. Returns how many were dropped."""
        if not kids:
            return 0
        kept = {k: v for k, v in self._tokens.items() if _kid_of(v[0]) not in kids}
        dropped = len(self._tokens) - len(kept)
        self._tokens = kept
        return dropped

    def drop_revoked(self, revoked: RevocationSet) -> int:
        """Forget cached tokens revoked by ``jti`` or by SPIFFE ID (``iat`` before the record's
        instant; no ``iat``: any record): the next fetch mints a fresh one."""
        kept = {k: v for k, v in self._tokens.items() if not _is_revoked(v[0], k[0], revoked)}
        dropped = len(self._tokens) - len(kept)
        self._tokens = kept
        return dropped

    def validate(self, token: str, audience: str) -> tuple[SpiffeId, Mapping[str, Any]]:
        """Validate against the agent's bundles and revocations; ``InvalidToken`` (with
        ``.reason``: ``revoked``, ``revocations-stale``, ...) if rejected."""
        validator = self._validators.get(audience)
        if validator is None:
            if len(self._validators) >= MAX_VALIDATORS:
                self._validators.clear()
            validator = JwtValidator(
                self._bundles,
                audience,
                # No feed (tests, tools): nothing to check, said explicitly.
                revocations=no_revocation_check()
                if self._revocations is None
                else self._revocations,
                clock=self._clock,
            )
            self._validators[audience] = validator
        result = validator.validate(token)
        return result.spiffe_id, result.claims.claims

    async def _mint(self, key: _Key, audience: tuple[str, ...]) -> str:
        spiffe_id = key[0]
        entry_id = self._entry_for(spiffe_id)
        if entry_id is None:
            raise Unavailable(f"no current entry for {spiffe_id}")
        try:
            answer = await self._client.mint_jwt(entry_id, audience)
        except S2SError as exc:
            self._metrics.count_ca_error("jwt", exc.code)
            if isinstance(exc, AgentUnknown) and self._on_unknown is not None:
                await self._on_unknown()
            raise Unavailable(f"cannot get a JWT-SVID for {spiffe_id} now: {exc}") from exc
        if answer.spiffe_id != spiffe_id:
            raise Unavailable(f"the CA minted a JWT-SVID for {answer.spiffe_id}, not {spiffe_id}")
        now = self._clock.now()
        self._make_room(now)
        self._tokens[key] = (answer.token, now + (answer.expires_at - now) / 2, answer.expires_at)
        self._metrics.count_rotation("jwt")
        return answer.token

    def _make_room(self, now: datetime) -> None:
        if len(self._tokens) >= MAX_JWT_CACHE:
            self._tokens = {k: v for k, v in self._tokens.items() if v[2] > now}
            if len(self._tokens) >= MAX_JWT_CACHE:
                self._tokens.clear()


def _is_revoked(token: str, spiffe_id: SpiffeId, revoked: RevocationSet) -> bool:
    try:
        body = token.split(".")[1]
        claims = json.loads(b64url_decode(body))
    except (ValueError, UnicodeDecodeError, IndexError):
        return True  # our own CA's token that we cannot read: mint afresh
    jti, iat = claims.get("jti"), claims.get("iat")
    if isinstance(jti, str) and revoked.is_jti_revoked(jti):
        return True
    issued = _EARLIEST
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            issued = datetime.fromtimestamp(iat, UTC)
    agent = claims.get(AGENT_CLAIM)
    if isinstance(agent, str) and revoked.is_spiffe_id_revoked(agent, issued):
        return True  # this agent was revoked after minting it
    return revoked.is_spiffe_id_revoked(spiffe_id, issued)


def _kid_of(token: str) -> str | None:
    """The ``kid`` of a compact JWS header (our own CA's tokens; None if unreadable)."""
    try:
        header = token.split(".", 1)[0]
        doc = json.loads(b64url_decode(header))
        kid = doc.get("kid") if isinstance(doc, dict) else None
        return kid if isinstance(kid, str) else None
    except (ValueError, UnicodeDecodeError):
        return None
