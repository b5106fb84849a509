"""The OAuth 2.0 token service: client authentication, the client-credentials grant (RFC 6749
section 4.4), introspection (RFC 7662) and revocation (RFC 7009).

Client authentication, exactly one method per request:

- a JWT-SVID as ``client_assertion`` (RFC 7523 section 2.2, draft-ietf-oauth-spiffe-client-auth):
  checked against this trust domain's bundle and revocations, audience the token endpoint or the
  issuer, ``jti`` required and spent once: a used ``jti`` is kept in this replica's memory (the
  fast path) and as a mark in the store that every replica shares, until the assertion could no
  longer be accepted (``exp`` plus the validator's leeway), so a replay is refused on any replica
  and after a restart;
- the X.509-SVID of the TLS connection (RFC 8705 ``tls_client_auth``, the SPIFFE ID is the client);
  the token is then bound to that certificate (``cnf`` ``x5t#S256``);
- ``client_secret_basic`` / ``client_secret_post`` for clients without SVIDs.

A revoked access token is a ``jti`` revocation record, the same records and feeds as JWT-SVIDs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from cryptography import x509
from prometheus_client import CollectorRegistry

from s2s.ca.live_revocations import LiveRevocations
from s2s.ca.oauth_clients import ClientRegistry
from s2s.ca.oauth_keys import TokenKeyRing
from s2s.ca.revocations import RevocationService
from s2s.core.b64 import b64url_encode
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidSvid, InvalidToken, NotFound, S2SError
from s2s.core.oauth import (
    ASSERTION_TYPE,
    CLIENT_CREDENTIALS,
    ClientRecord,
    OAuthError,
    access_token_claims,
    decide_grant,
    secret_matches,
)
from s2s.core.oauth_metadata import TOKEN_PATH
from s2s.core.x509svid import spiffe_id_of
from s2s.log import F
from s2s.store.records import UsedMark
from s2s.verifier.access_token import certificate_thumbprint
from s2s.verifier.jws import b64decode, check_alg, json_object, split_compact, verify_checked
from s2s.verifier.jwt import JwtMetrics, JwtValidator

__all__ = ["AuthenticatedClient", "ClientCredentials", "IssuedToken", "TokenService", "UsedMarks"]

log = logging.getLogger(__name__)

MAX_REPLAY_ENTRIES: Final = 100_000
_MARK_PREFIX: Final = "oauth-assertion/"  # + SHA-256 of the jti: a short key of fixed alphabet


class UsedMarks(Protocol):
    """Single-use marks shared by every replica (the store)."""

    async def claim_once(self, mark: UsedMark) -> None:
        """Hold ``mark.key`` until ``mark.expires_at``; ``Conflict`` if it is held already."""
        ...


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a request presents to authenticate its client (parsed by the HTTP adapter)."""

    client_id: str | None = None  # the client_id form parameter
    basic: tuple[str, str] | None = None  # Authorization: Basic (client_id, secret)
    secret: str | None = None  # client_secret form parameter
    assertion_type: str | None = None
    assertion: str | None = None
    peer_certificate: bytes | None = None  # DER of the verified TLS client certificate
    peer_issuers: tuple[bytes, ...] = ()  # DER of the CA certificates OpenSSL verified above it

    def method(self) -> str:
        used = [
            name
            for name, present in (
                ("client_secret_basic", self.basic is not None),
                ("client_secret_post", self.secret is not None),
                ("private_key_jwt", self.assertion is not None or self.assertion_type is not None),
            )
            if present
        ]
        if len(used) > 1:
            raise OAuthError("invalid_request", "use exactly one client authentication method")
        if used:
            return used[0]
        if self.peer_certificate is not None:
            return "tls_client_auth"
        raise OAuthError("invalid_client", "client authentication is required")


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    record: ClientRecord
    method: str
    thumbprint: str | None  # set for tls_client_auth: tokens are bound to this certificate


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    bound: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


@functools.lru_cache(maxsize=256)
def _serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


class _OwnBundle:
    """The CA's own bundle as a BundleSet: assertions from other trust domains are untrusted."""

    def __init__(self, bundle: Callable[[], Bundle]) -> None:
        self._bundle = bundle
        self._seen: tuple[Bundle | None, BundleSet] = (None, BundleSet.of())

    def current(self) -> BundleSet:
        bundle = self._bundle()
        if self._seen[0] is not bundle:
            self._seen = (bundle, BundleSet.of(bundle))
        return self._seen[1]


class TokenService:
    """Issues, introspects and revokes access tokens for registered clients."""

    def __init__(
        self,
        *,
        issuer: str,
        clients: ClientRegistry,
        keys: TokenKeyRing,
        bundle: Callable[[], Bundle],
        revocations: LiveRevocations,
        revocation_service: RevocationService,
        used_marks: UsedMarks,
        clock: Clock,
        ttl: timedelta,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.issuer = issuer
        self.token_endpoint = issuer + TOKEN_PATH
        self.clients = clients
        self.keys = keys
        self._live = revocations
        self._revoke = revocation_service
        self._used = used_marks
        self._clock = clock
        self._ttl = ttl
        self._entropy = entropy
        metrics = JwtMetrics(CollectorRegistry())  # not the verifier's process-wide counters
        own = _OwnBundle(bundle)
        self._assertions = tuple(
            JwtValidator(own, aud, revocations=revocations, clock=clock, metrics=metrics)
            for aud in (self.token_endpoint, issuer)
        )
        self._seen_jti: dict[str, datetime] = {}

    # -- client authentication ---------------------------------------------------------------

    async def authenticate(self, creds: ClientCredentials) -> AuthenticatedClient:
        method = creds.method()
        if method in ("client_secret_basic", "client_secret_post"):
            if creds.basic is not None:
                client_id, secret = creds.basic
                if creds.client_id is not None and creds.client_id != client_id:
                    raise OAuthError("invalid_request", "client_id differs from the Basic user")
            else:
                client_id, secret = creds.client_id or "", creds.secret or ""
            record = await self._client(client_id)
            if record.spiffe_id is not None or not secret_matches(secret, record.secret_hashes):
                raise OAuthError("invalid_client", "client authentication failed")
            return AuthenticatedClient(record, method, None)
        if method == "private_key_jwt":
            return await self._by_assertion(creds)
        return await self._by_certificate(creds)

    async def _client(self, client_id: str) -> ClientRecord:
        try:
            return await self.clients.get(client_id)
        except NotFound:
            raise OAuthError("invalid_client", "client authentication failed") from None

    async def _by_assertion(self, creds: ClientCredentials) -> AuthenticatedClient:
        if creds.assertion_type != ASSERTION_TYPE or not creds.assertion:
            raise OAuthError(
                "invalid_request",
                f"client_assertion_type must be {ASSERTION_TYPE} with an assertion",
            )
        checked = None
        failure: InvalidToken | None = None
        for validator in self._assertions:  # audience: the token endpoint, else the issuer
            try:
                checked = validator.validate(creds.assertion).claims
                break
            except InvalidToken as exc:
                failure = exc if failure is None or failure.reason == "aud" else failure
                if exc.reason != "aud":
                    break
        if checked is None:
            reason = failure.reason if failure is not None else "invalid"
            log.info("oauth.assertion_refused", extra={F.REASON: reason})
            raise OAuthError("invalid_client", f"the client assertion was refused: {failure}")
        sid = str(checked.spiffe_id)
        if creds.client_id is not None and creds.client_id != sid:
            raise OAuthError("invalid_client", "client_id differs from the assertion's subject")
        if checked.jti is None:
            raise OAuthError("invalid_client", "the client assertion needs a jti (replay check)")
        await self._spend(checked.jti, checked.expiry + self._assertions[0].leeway, sid)
        record = await self._client(sid)
        return AuthenticatedClient(record, "private_key_jwt", None)

    async def _spend(self, jti: str, until: datetime, client: str) -> None:
        """Refuse a second use of one assertion while it could be accepted (RFC 7523 section 3,
        item 7, until ``exp`` plus the validator's leeway): this replica's memory answers for
        the jtis it saw (the fast path); a mark in the store, which every replica and a
        restarted one see, decides. A store that cannot answer refuses the request (503)."""
        now = utc(self._clock.now())
        seen = self._seen_jti.get(jti)
        if seen is None or seen <= now:
            mark = UsedMark(_MARK_PREFIX + hashlib.sha256(jti.encode()).hexdigest(), until)
            try:
                await self._used.claim_once(mark)
                seen = None
            except Conflict:
                seen = until
            self._remember(jti, until, now)
        if seen is not None:
            log.warning("oauth.assertion_replayed", extra={F.SPIFFE_ID: client})
            raise OAuthError(
                "invalid_client", "the client assertion was already used", reason="replay"
            )

    def _remember(self, jti: str, until: datetime, now: datetime) -> None:
        if len(self._seen_jti) >= MAX_REPLAY_ENTRIES:  # a cache: the store stays authoritative
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e > now}
            if len(self._seen_jti) >= MAX_REPLAY_ENTRIES:
                self._seen_jti = {}
        self._seen_jti[jti] = until

    async def _by_certificate(self, creds: ClientCredentials) -> AuthenticatedClient:
        der = creds.peer_certificate
        assert der is not None
        try:
            cert = x509.load_der_x509_certificate(der)
            sid = spiffe_id_of(cert)
        except (ValueError, InvalidSvid):
            raise OAuthError("invalid_client", "the client certificate is not an SVID") from None
        revoked = self._live.current()
        if revoked.is_serial_revoked_by_any_issuer(cert.serial_number) or (
            revoked.is_spiffe_id_revoked(sid, cert.not_valid_before_utc)
        ):
            raise OAuthError("invalid_client", "the client certificate is revoked")
        for issuer_der in creds.peer_issuers:  # a revoked intermediate cuts its leaves off
            if revoked.is_serial_revoked_by_any_issuer(_serial(issuer_der)):
                raise OAuthError("invalid_client", "a CA certificate of the client is revoked")
        if creds.client_id is not None and creds.client_id != str(sid):
            raise OAuthError("invalid_client", "client_id differs from the certificate's SPIFFE ID")
        record = await self._client(str(sid))
        return AuthenticatedClient(record, "tls_client_auth", certificate_thumbprint(der))

    # -- token endpoint ----------------------------------------------------------------------

    async def issue(
        self,
        client: AuthenticatedClient,
        *,
        grant_type: str | None,
        scope: str | None,
        audience: Sequence[str],
    ) -> IssuedToken:
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is missing")
        if grant_type != CLIENT_CREDENTIALS:
            raise OAuthError("unsupported_grant_type", f"only {CLIENT_CREDENTIALS} is supported")
        grant = decide_grant(client.record, scope=scope, audience=audience)
        signer = self.keys.signer
        now = utc(self._clock.now())
        ttl = min(self._ttl, signer.not_after - now)
        if ttl < timedelta(seconds=1):
            raise OAuthError("temporarily_unavailable", "the signing key is being rotated")
        claims = access_token_claims(
            issuer=self.issuer,
            client=client.record,
            grant=grant,
            now=now,
            ttl=ttl,
            jti=b64url_encode(self._entropy(16)),
            thumbprint=client.thumbprint,
        )
        log.info(
            "oauth.token_issued",
            extra={F.SPIFFE_ID: client.record.client_id, F.KIND: client.method},
        )
        return IssuedToken(
            signer.sign(claims),
            claims["exp"] - claims["iat"],
            claims["scope"],
            client.thumbprint is not None,
        )

    # -- introspection and revocation --------------------------------------------------------

    def _read_token(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this service signed, unexpired and unrevoked; None otherwise."""
        try:
            head, body, sig = split_compact(token)
            header = json_object(b64decode(head), "header")
            kid = header.get("kid")
            key = self.keys.public_key(kid) if isinstance(kid, str) else None
            if key is None or header.get("typ") != "at+jwt":
                return None
            check_alg(str(header.get("alg")), frozenset({"ES256"}))
            verify_checked("ES256", key, f"{head}.{body}".encode("ascii"), b64decode(sig))
            claims = json_object(b64decode(body), "claims")
        except (InvalidToken, S2SError):
            return None
        exp = claims.get("exp")
        if claims.get("iss") != self.issuer or not isinstance(exp, int):
            return None
        if datetime.fromtimestamp(exp, tz=UTC) <= utc(self._clock.now()):
            return None
        jti = claims.get("jti")
        if not isinstance(jti, str) or self._live.current().is_jti_revoked(jti):
            return None
        return claims

    def introspect(self, caller: AuthenticatedClient, token: str) -> dict[str, Any]:
        """RFC 7662 section 2.2: ``active`` and the claims, for a token issued to the caller or
        addressed to one of its audiences; ``{"active": false}`` for anything else."""
        claims = self._read_token(token)
        if claims is None:
            return {"active": False}
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        mine = claims.get("client_id") == caller.record.client_id
        if not mine and not set(auds) & set(caller.record.audiences):
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}

    async def revoke(self, caller: AuthenticatedClient, token: str) -> None:
        """RFC 7009: revoke a token issued to the caller (a ``jti`` record); an invalid, expired
        or unknown token needs nothing (section 2.2: the answer is 200 all the same)."""
        claims = self._read_token(token)
        if claims is None:
            return
        if claims.get("client_id") != caller.record.client_id:
            raise OAuthError("unauthorized_client", "this token was not issued to this client")
        await self._revoke.revoke_jti(claims["jti"], reason="oauth revocation")
