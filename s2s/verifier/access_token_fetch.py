"""The authorization server's JWKS over HTTPS, kept fresh (RFC 7517, RFC 8414).

:class:`JwksFetcher` is an :class:`~s2s.verifier.access_token_keys.AccessTokenKeys` provider:
``GET jwks_uri`` over HTTPS, trusting a CA file (web PKI style, host name checked) or our trust
bundle (the CA's server SVID, its SPIFFE ID checked), refreshed every ``refresh_interval`` and,
rate limited, when a token names a ``kid`` the set lacks (the AS rotated its key). A failed
refresh keeps the last good set. :func:`fetch_metadata` reads the AS metadata and checks that it
describes the issuer asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from s2s.core.backoff import Backoff
from s2s.core.errors import InvalidBundle, InvalidConfig, S2SError, Unavailable
from s2s.core.jwk import short_error
from s2s.core.reserved import is_ca_id
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.log import F
from s2s.verifier.access_token_keys import SigningKeySet
from s2s.verifier.authorize import authorize_if
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.tls import SpiffeSSLContext, client_context
from s2s.verifier.x509context import X509SourceLike

__all__ = ["MAX_JWKS_BYTES", "JwksFetcher", "fetch_metadata", "get_json"]

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024  # a handful of keys is ~1 KiB


class JwksFetcher:
    """The AS's JWKS fetched from ``jwks_uri`` over HTTPS and kept fresh (module docstring).

    Use as ``async with JwksFetcher(...) as keys:``; entering fetches the first set (or raises
    :class:`Unavailable`) and starts the periodic refresh, leaving stops it.
    """

    def __init__(
        self,
        jwks_uri: str,
        *,
        ssl_context: ssl.SSLContext,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 10.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise InvalidConfig(f"jwks_uri must be an https:// URL, not {str(jwks_uri)[:80]!r}")
        if refresh_interval <= 0 or min_refresh_interval < 0 or timeout <= 0:
            raise InvalidConfig("refresh_interval and timeout must be > 0")
        self.jwks_uri = jwks_uri
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._rand = rand
        self._keys: SigningKeySet | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[SigningKeySet] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0  # successful fetches (tests and diagnostics)

    @classmethod
    def trusting_ca_file(cls, jwks_uri: str, ca_file: str, **kwargs: Any) -> JwksFetcher:
        """Server certificate checked against ``ca_file`` and the URL's host name."""
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfig(f"cannot load the CA file {ca_file}: {exc}") from None
        return cls(jwks_uri, ssl_context=context, **kwargs)

    @classmethod
    def over_spiffe(
        cls,
        jwks_uri: str,
        source: X509SourceLike,
        *,
        trust_domain: TrustDomain | None = None,
        **kwargs: Any,
    ) -> JwksFetcher:
        """Server chain checked against our bundle, its SPIFFE ID required to be the CA's
        (``spiffe://<td>/s2s/ca/...``); our SVID is presented."""
        td = trust_domain or source.current().default_svid.spiffe_id.trust_domain

        def is_ca(sid: SpiffeId) -> bool:
            return is_ca_id(sid, td)

        # No revocation check of the CA's own chain: the chain is checked to the bundle on every
        # connection, and a JWKS that could not be fetched would refuse every token.
        context = client_context(
            source, authorize=authorize_if(is_ca), revocations=no_revocation_check()
        )
        return cls(jwks_uri, ssl_context=context, **kwargs)

    async def __aenter__(self) -> JwksFetcher:
        try:
            await self.refresh()
        except Unavailable:
            await self.close()
            raise
        self._task = asyncio.create_task(self._run(), name="jwks-refresh")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if isinstance(self._ssl, SpiffeSSLContext):
            self._ssl.s2s.close()  # stop following the source

    def current(self) -> SigningKeySet:
        keys = self._keys
        if keys is None:
            raise Unavailable(f"no JWKS from {self.jwks_uri} yet")
        return keys

    async def refresh(self) -> SigningKeySet:
        """Fetch now unless a fetch started less than ``min_refresh_interval`` ago; concurrent
        callers share one fetch. A failure keeps (and returns) the last good set;
        :class:`Unavailable` when there has never been one."""
        if self._inflight is not None and self._inflight.done():
            self._inflight = None  # finished while its only caller was cancelled
        if self._inflight is None:
            now = asyncio.get_running_loop().time()
            recent = self._last_attempt is not None and (
                now - self._last_attempt < self.min_refresh_interval
            )
            if recent:
                return self.current()
            self._last_attempt = now
            self._inflight = asyncio.create_task(self._fetch())
        task = self._inflight
        try:
            return await asyncio.shield(task)
        except S2SError as exc:
            log.warning("jwks.refresh_failed", extra={F.ERROR: str(exc)})
            if self._keys is None:
                raise Unavailable(f"no JWKS from {self.jwks_uri} yet: {exc}") from None
            return self._keys
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    async def _run(self) -> None:
        failures = 0
        cap = self.refresh_interval
        backoff = Backoff.equal_jitter(initial=min(1.0, cap), cap=cap)
        while True:
            if failures:
                await asyncio.sleep(backoff.delay(failures, self._rand()))
            else:
                await asyncio.sleep(self.refresh_interval)
            before = self.fetches
            await self.refresh()
            failures = 0 if self.fetches != before else failures + 1

    async def _fetch(self) -> SigningKeySet:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        document = await get_json(self._session, self.jwks_uri, self._timeout)
        try:
            keys = SigningKeySet.from_jwks(document)
        except InvalidBundle as exc:
            raise Unavailable(f"{self.jwks_uri} served a bad JWK Set: {exc}") from None
        self._keys = keys
        self.fetches += 1
        log.info("jwks.fetched", extra={F.COUNT: len(keys)})
        return keys


async def get_json(
    session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout
) -> object:
    """``GET url``: a JSON answer with status 200 within :data:`MAX_JWKS_BYTES`, else
    :class:`Unavailable` saying what went wrong."""
    try:
        async with session.get(url, timeout=timeout, allow_redirects=False) as answer:
            raw = await answer.content.read(MAX_JWKS_BYTES + 1)
            status = answer.status
    except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
        raise Unavailable(
            f"{url} is unreachable: {type(exc).__name__}: {short_error(exc)}"
        ) from None
    except TimeoutError:
        raise Unavailable(f"{url} did not answer in time") from None
    if status != 200:
        raise Unavailable(f"{url} answered {status}")
    if len(raw) > MAX_JWKS_BYTES:
        raise Unavailable(f"{url}: the answer is larger than {MAX_JWKS_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise Unavailable(f"{url} answered with no JSON") from None


async def fetch_metadata(
    issuer: str, *, ssl_context: ssl.SSLContext, timeout: float = 10.0
) -> Mapping[str, Any]:
    """The RFC 8414 metadata of ``issuer``; its ``issuer`` must equal ``issuer`` exactly
    (RFC 8414 section 3.3) and its ``jwks_uri`` must be https."""
    if not issuer.startswith("https://"):
        raise InvalidConfig(f"the issuer must be an https:// URL, not {issuer[:80]!r}")
    base = issuer.rstrip("/")
    # RFC 8414 3.1: the well-known segment goes between the host and any path of the issuer.
    scheme_host, _, path = base.partition("://")[2].partition("/")
    url = f"https://{scheme_host}/.well-known/oauth-authorization-server" + (
        f"/{path}" if path else ""
    )
    connector = aiohttp.TCPConnector(ssl=ssl_context)
    async with aiohttp.ClientSession(connector=connector) as session:
        data = await get_json(session, url, aiohttp.ClientTimeout(total=timeout))
    if not isinstance(data, Mapping) or data.get("issuer") != issuer:
        raise Unavailable(f"{url} does not describe the issuer {issuer}")
    jwks_uri = data.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
        raise Unavailable(f"{url} names no https jwks_uri")
    return data
