"""Fetching a foreign trust domain's bundle from its bundle endpoint (SPIFFE_Federation.md 5.2).

``https_spiffe``: the server must present an X509-SVID with the relationship's endpoint SPIFFE ID
that chains to the bundle we hold for that ID's trust domain (the last fetched one for a
self-serving endpoint, so a rotated remote root is followed). It is checked inside the handshake,
like every SPIFFE peer here, with :class:`~s2s.verifier.peer.PeerVerifier`. ``https_web``: the
server certificate must chain to the Web PKI roots (the system's, or the configured file) and
name the URL's host (RFC 6125). Redirects are followed (at most three), each target checked as
an endpoint URL and authenticated the same way. The answer is read up to the size limit.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Final
from urllib.parse import urljoin

import aiohttp

from s2s.core.bundle import MAX_BUNDLE_BYTES, BundleSet
from s2s.core.clock import Clock
from s2s.core.errors import InvalidBundle, InvalidConfig, NotAuthorized, S2SError, Unavailable
from s2s.core.federation import EndpointProfile, FederationRelationship, check_endpoint_url
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier.peer import PeerRejected, PeerVerifier

__all__ = ["MAX_REDIRECTS", "BundleFetcher"]

MAX_REDIRECTS: Final = 3
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


class _EndpointSSLObject(ssl.SSLObject):
    """Runs the SPIFFE check on the endpoint's chain as the last step of the handshake."""

    _endpoint_verifier: ClassVar[PeerVerifier]

    def do_handshake(self) -> None:
        super().do_handshake()
        self._endpoint_verifier.verify(self)


class BundleFetcher:
    """GETs bundle documents; one short-lived HTTPS session per fetch (fetches are minutes apart,
    and each must use the newest bundle to authenticate the endpoint)."""

    def __init__(
        self,
        *,
        clock: Clock,
        web_ca_file: Path | None = None,
        timeout: float = 10.0,
        max_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self._clock = clock
        self._web_ca_file = web_ca_file
        self._timeout = timeout
        self._max_bytes = max_bytes

    def context(
        self, relationship: FederationRelationship, endpoint_trust: BundleSet | None
    ) -> ssl.SSLContext:
        """The client TLS context that authenticates ``relationship``'s endpoint."""
        if relationship.profile is EndpointProfile.HTTPS_WEB:
            return self._web_context()
        sid = relationship.endpoint_spiffe_id
        assert sid is not None
        bundle = None if endpoint_trust is None else endpoint_trust.get(sid.trust_domain)
        if bundle is None or not bundle.x509_authorities:
            raise Unavailable(
                f"no bundle of {sid.trust_domain} to authenticate the bundle endpoint {sid} with "
                f"(set one with s2s-ca bundle set --trust-domain {sid.trust_domain})"
            )
        trust = BundleSet.of(bundle)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the endpoint is identified by its SPIFFE ID
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=bundle.x509_pem().decode("ascii"))
        verifier = PeerVerifier(lambda: trust, authorize=_exactly(sid), clock=self._clock)
        ctx.sslobject_class = type(
            "EndpointSSLObject", (_EndpointSSLObject,), {"_endpoint_verifier": verifier}
        )
        return ctx

    def _web_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(
                cafile=None if self._web_ca_file is None else str(self._web_ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfig(
                f"cannot load the Web PKI roots {self._web_ca_file}: {exc}"
            ) from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def fetch(
        self, relationship: FederationRelationship, endpoint_trust: BundleSet | None
    ) -> bytes:
        """The body the endpoint answers with (at most ``max_bytes``), or an error saying why:
        :class:`NotAuthorized` (the endpoint failed authentication), :class:`InvalidBundle`
        (too large), :class:`Unavailable` (unreachable, an HTTP error, a timeout)."""
        ctx = self.context(relationship, endpoint_trust)
        url = relationship.bundle_endpoint_url
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for _hop in range(MAX_REDIRECTS + 1):
                    async with session.get(
                        url, ssl=ctx, allow_redirects=False, headers={"Accept": "application/json"}
                    ) as response:
                        if response.status in _REDIRECTS:
                            url = _redirect(url, response.headers.get("Location"))
                            continue
                        if response.status != 200:
                            raise Unavailable(
                                f"the bundle endpoint answered HTTP {response.status}"
                            )
                        return await self._read(response)
                raise Unavailable(f"the bundle endpoint redirected more than {MAX_REDIRECTS} times")
        except S2SError:
            raise
        except (aiohttp.ClientError, ssl.SSLError, OSError, TimeoutError, ValueError) as exc:
            raise _translate(exc, url) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self._max_bytes:
            raise InvalidBundle(f"the bundle document is larger than {self._max_bytes} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > self._max_bytes:
                raise InvalidBundle(f"the bundle document is larger than {self._max_bytes} bytes")
        return bytes(body)


def _exactly(expected: SpiffeId) -> Callable[[SpiffeId], bool]:
    def check(peer: SpiffeId) -> bool:
        return peer == expected

    return check


def _redirect(url: str, location: str | None) -> str:
    if not location:
        raise Unavailable("the bundle endpoint redirected without a Location")
    try:
        return check_endpoint_url(urljoin(url, location))
    except S2SError as exc:
        raise Unavailable(f"the bundle endpoint redirected to a bad URL: {exc}") from None


def _translate(exc: BaseException, url: str) -> S2SError:
    """The reason a fetch failed, for ``federation show``: a refused endpoint certificate names
    the check that refused it."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, PeerRejected):
            return NotAuthorized(f"the bundle endpoint {url} was refused: {cause}")
        nested = getattr(cause, "certificate_error", None) or getattr(cause, "os_error", None)
        if isinstance(nested, BaseException):
            cause = nested
            continue
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = getattr(cause, "verify_message", None) or cause.reason or str(cause)
            return NotAuthorized(f"the bundle endpoint {url} was refused: {detail}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, TimeoutError):
        return Unavailable(f"the bundle endpoint {url} did not answer in time")
    return Unavailable(f"cannot fetch the bundle from {url}: {exc}")
