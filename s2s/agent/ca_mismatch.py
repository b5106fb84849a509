"""Telling a CA URL that points at the wrong thing from a CA that is away.

An outage (nothing listening, a timeout, a reset, 5xx, 429) ends by itself: the agent retries it.
A server that answered but is not the CA the agent is configured for never turns into it:

* its certificate does not chain to the agent's trust bundle, yet names an s2s CA of our trust
  domain: the bundle is out of date, e.g. exported before a root rotation
  -> :class:`TrustBundleMismatch`;
* it is an s2s CA of another trust domain -> :class:`TrustDomainMismatch`;
* it is another TLS server, a plain HTTP port, or answers 404 for the agent API (a URL with a path
  the CA does not serve) -> :class:`NotACa`.

To say which, after OpenSSL refused the chain the client looks at the server's certificate once
more over a connection that verifies nothing and sends nothing (:func:`probe_leaf`): the
certificate is only read, never trusted.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from s2s.aio import within
from s2s.core.errors import (
    CaMismatch,
    InvalidSvid,
    NotACa,
    TrustBundleMismatch,
    TrustDomainMismatch,
    Unavailable,
)
from s2s.core.reserved import CA_PATH_PREFIX
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import spiffe_id_of
from s2s.verifier.peer import PeerRejected

__all__ = ["CaMisconfigured", "from_answer", "from_tls_failure", "not_tls", "probe_leaf"]

# OpenSSL X509_V_ERR_* codes for "no path to a trusted root" (x509_vfy.h).
_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21})
# What OpenSSL says when the other end does not speak TLS (e.g. an HTTP answer to our hello).
_NOT_TLS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)
# The CA's answer for a path it does not route (s2s.ca.http_middleware).
_NO_ROUTE_MESSAGE: Final = "no such endpoint"


class CaMisconfigured(Unavailable):
    """A CA call that failed because a server at a CA URL is not our CA; ``problem`` says how.

    It is an :class:`Unavailable`, so a running agent's loops retry it and keep serving what they
    hold; the agent's first attestation raises ``problem`` instead and the agent exits.
    """

    code = "ca_misconfigured"

    def __init__(self, problem: CaMismatch, message: str | None = None) -> None:
        self.problem = problem
        super().__init__(message or str(problem))


def not_tls(error: BaseException | None) -> bool:
    """True if OpenSSL's error says the server does not speak TLS at all."""
    return isinstance(error, ssl.SSLError) and error.reason in _NOT_TLS


def from_tls_failure(
    base: str,
    error: BaseException,
    trust_domain: TrustDomain,
    leaf: x509.Certificate | None,
) -> CaMismatch | None:
    """The misconfiguration a refused handshake shows, or None if it may pass (expired, clock).

    ``error`` is what verification raised; ``leaf`` the server's certificate read by
    :func:`probe_leaf` (None if it could not be read).
    """
    if isinstance(error, PeerRejected):  # the chain verified to our bundle; its ID is wrong
        return _from_rejection(base, error, trust_domain)
    if not isinstance(error, ssl.SSLCertVerificationError):
        return None
    if error.verify_code not in _UNTRUSTED or leaf is None:
        return None
    try:
        sid = spiffe_id_of(leaf)
    except InvalidSvid:
        return NotACa(
            f"{base} is not an s2s CA: it presents a certificate for {_describe(leaf)}, "
            "not a CA SVID; check --ca-url (https://HOST:PORT of 's2s-ca serve')"
        )
    if not sid.path.startswith(CA_PATH_PREFIX):
        return NotACa(
            f"{base} is not an s2s CA: it presents the SVID of {sid}; check --ca-url "
            "(https://HOST:PORT of 's2s-ca serve')"
        )
    if sid.trust_domain != trust_domain:
        return _other_domain(base, sid.trust_domain, trust_domain)
    # The fix depends on where the bundle came from: the agent's first attestation says it.
    return TrustBundleMismatch(
        f"the certificate of the CA at {base} ({sid}) does not chain to the agent's trust bundle"
    )


def _from_rejection(base: str, error: PeerRejected, trust_domain: TrustDomain) -> CaMismatch | None:
    sid = error.spiffe_id
    if error.reason in {"foreign-root", "no-bundle"} and sid is not None:
        return _other_domain(base, sid.trust_domain, trust_domain)
    if error.reason == "unauthorized" and sid is not None:
        return NotACa(
            f"{base} is not an s2s CA: it presents the SVID of {sid}, not a CA ID of "
            f"{trust_domain}; check --ca-url"
        )
    if error.reason.startswith("svid-"):
        return NotACa(f"{base} is not an s2s CA: {error.message}; check --ca-url")
    return None  # expired, not yet valid: a clock or a CA that will renew


def _other_domain(base: str, theirs: TrustDomain, ours: TrustDomain) -> TrustDomainMismatch:
    return TrustDomainMismatch(
        f"the CA at {base} is the CA of trust domain {theirs}, but this agent is configured for "
        f"trust domain {ours}: set --trust-domain {theirs} (trust_domain in the agent's "
        f"config) with that CA's bundle, or point --ca-url at the CA of {ours}"
    )


def from_answer(
    base: str, path: str, status: int, content_type: str, error: dict[str, object] | None
) -> CaMismatch | None:
    """The misconfiguration an HTTP answer from a verified CA shows, or None.

    404/405 without the CA's JSON error (or the CA's own "no such endpoint") means the URL does
    not lead to the agent API; a 2xx answer that is not JSON is not the agent API either.
    Other statuses (5xx, 429, other 4xx) are left to the caller: they may pass.
    """
    no_route = error is None or (
        error.get("error") in {"not_found", "method_not_allowed"}
        and error.get("message") == _NO_ROUTE_MESSAGE
    )
    if status in {404, 405} and no_route:
        return NotACa(
            f"{base} answered HTTP {status} for {path}: it is not the base URL of an s2s CA's "
            "agent API; check --ca-url (https://HOST:PORT of 's2s-ca serve', no path)"
        )
    if 200 <= status < 300 and content_type != "application/json":
        return NotACa(
            f"{base}{path} sent {content_type or 'an untyped body'}, not the CA's JSON: "
            "it is not an s2s CA's agent API; check --ca-url"
        )
    return None


async def probe_leaf(base: str, timeout: float) -> x509.Certificate | None:
    """The certificate the server at ``base`` presents, read without verifying it and without
    sending a byte after the handshake; None if it cannot be read (that is an outage)."""
    url = urlsplit(base)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only read: nothing is sent, nothing is trusted
    try:
        _reader, writer = await within(
            asyncio.open_connection(url.hostname, url.port or 443, ssl=ctx), timeout
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        return None if der is None else x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    finally:
        writer.close()


def _describe(cert: x509.Certificate) -> str:
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [
            *san.get_values_for_type(x509.DNSName),
            *map(str, san.get_values_for_type(x509.UniformResourceIdentifier)),
        ]
    except (x509.ExtensionNotFound, ValueError):
        pass
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return ", ".join(names[:3]) or cert.subject.rfc4514_string() or "no name"
