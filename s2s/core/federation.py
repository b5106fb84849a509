"""SPIFFE Federation without I/O: relationships, the checks on a fetched bundle, refresh timing.

A federation relationship (SPIFFE_Federation.md 5.1) names a foreign trust domain, the URL of
its bundle endpoint and the endpoint profile: ``https_web`` (Web PKI) or ``https_spiffe`` (the
endpoint presents an X509-SVID with a configured SPIFFE ID). A fetched bundle is accepted only
when it parses, is within the size limit, names no other trust domain in its X.509 authorities
and does not go back in ``spiffe_sequence`` against the last bundle fetched from the endpoint.

>>> rel = FederationRelationship.create(
...     TrustDomain.parse("b.test"), "https://b.test:8443/bundle", EndpointProfile.HTTPS_SPIFFE,
...     SpiffeId.parse("spiffe://b.test/s2s/bundle-endpoint"), now=EPOCH)
>>> rel.self_serving, FederationRelationship.from_json(rel.to_json()) == rel
(True, True)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509

from s2s.core.backoff import Backoff
from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.clock import utc
from s2s.core.errors import InvalidBundle, InvalidConfig, InvalidRequest, InvalidSpiffeId
from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "DEFAULT_REFRESH_HINT",
    "EPOCH",
    "MAX_ENDPOINT_URL",
    "EndpointProfile",
    "FederationRelationship",
    "RefreshPolicy",
    "RefreshStatus",
    "check_endpoint_url",
    "validate_fetched_bundle",
]

MAX_ENDPOINT_URL: Final = 2048
# SPIFFE_Trust_Domain_and_Bundle.md 4.1.2 / SPIFFE_Federation.md 4.1: five minutes without a hint.
DEFAULT_REFRESH_HINT: Final = dt.timedelta(minutes=5)
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_ERROR: Final = 500


class EndpointProfile(StrEnum):
    """How a bundle endpoint is authenticated (SPIFFE_Federation.md 5.2)."""

    HTTPS_WEB = "https_web"
    HTTPS_SPIFFE = "https_spiffe"


def check_endpoint_url(url: object) -> str:
    """``url`` if it is a bundle endpoint URL (5.2.1.1, 5.2.2.1): ``https``, a host, no userinfo.

    >>> check_endpoint_url("https://td.example:8443/bundle")
    'https://td.example:8443/bundle'
    >>> check_endpoint_url("http://td.example/bundle")
    Traceback (most recent call last):
    ...
    s2s.core.errors.InvalidRequest: the bundle endpoint URL must use https: 'http://td.example/bundle'
    """
    if not isinstance(url, str) or not url or len(url) > MAX_ENDPOINT_URL:
        raise InvalidRequest(f"the bundle endpoint URL must be text of 1-{MAX_ENDPOINT_URL} chars")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidRequest("the bundle endpoint URL must not contain spaces or control chars")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"the bundle endpoint URL is malformed: {exc}") from None
    if parts.scheme != "https":
        raise InvalidRequest(f"the bundle endpoint URL must use https: {url[:200]!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidRequest("the bundle endpoint URL must not carry userinfo")
    if not parts.hostname:
        raise InvalidRequest(f"the bundle endpoint URL needs a host: {url[:200]!r}")
    if not parts.hostname.startswith("["):
        try:
            parts.hostname.encode("idna")  # what an HTTP client will send (RFC 5891 labels)
        except UnicodeError:
            raise InvalidRequest(f"the bundle endpoint URL has a bad host: {url[:200]!r}") from None
    if parts.fragment:
        raise InvalidRequest("the bundle endpoint URL must not have a fragment")
    if port == 0:
        raise InvalidRequest("the bundle endpoint URL has port 0")
    return url


@dataclass(frozen=True, slots=True)
class RefreshStatus:
    """What the last refreshes of a relationship did (written by the refresher)."""

    last_attempt_at: dt.datetime | None = None
    last_success_at: dt.datetime | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive, since the last success
    next_refresh_at: dt.datetime | None = None

    def succeeded(self, now: dt.datetime, next_at: dt.datetime) -> RefreshStatus:
        return RefreshStatus(now, now, None, 0, next_at)

    def failed(self, now: dt.datetime, error: str, next_at: dt.datetime) -> RefreshStatus:
        return replace(
            self,
            last_attempt_at=now,
            last_error=error[:_MAX_ERROR],
            failures=self.failures + 1,
            next_refresh_at=next_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_success_at": _iso(self.last_success_at),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_refresh_at": _iso(self.next_refresh_at),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RefreshStatus:
        failures = doc.get("failures", 0)
        error = doc.get("last_error")
        if not isinstance(failures, int) or failures < 0:
            raise InvalidRequest("failures must be a non-negative integer")
        if error is not None and not isinstance(error, str):
            raise InvalidRequest("last_error must be text")
        return cls(
            _time(doc.get("last_attempt_at")),
            _time(doc.get("last_success_at")),
            error,
            failures,
            _time(doc.get("next_refresh_at")),
        )


@dataclass(frozen=True, slots=True)
class FederationRelationship:
    """A federation relationship with one foreign trust domain (the registry's record)."""

    trust_domain: TrustDomain
    bundle_endpoint_url: str
    profile: EndpointProfile
    endpoint_spiffe_id: SpiffeId | None
    created_at: dt.datetime
    updated_at: dt.datetime
    status: RefreshStatus = RefreshStatus()

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidRequest("trust_domain must be a TrustDomain")
        check_endpoint_url(self.bundle_endpoint_url)
        if not isinstance(self.profile, EndpointProfile):
            raise InvalidRequest("profile must be https_web or https_spiffe")
        if self.profile is EndpointProfile.HTTPS_SPIFFE:
            sid = self.endpoint_spiffe_id
            if not isinstance(sid, SpiffeId):
                raise InvalidRequest("an https_spiffe relationship needs the endpoint's SPIFFE ID")
            if sid.is_root():
                raise InvalidRequest("the endpoint SPIFFE ID needs a path (it is an X509-SVID)")
        elif self.endpoint_spiffe_id is not None:
            raise InvalidRequest("an https_web endpoint is authenticated by Web PKI: no SPIFFE ID")
        for name in ("created_at", "updated_at"):
            if getattr(self, name).utcoffset() is None:
                raise InvalidRequest(f"{name} must be an aware datetime")

    @classmethod
    def create(
        cls,
        trust_domain: TrustDomain,
        url: str,
        profile: EndpointProfile,
        endpoint_spiffe_id: SpiffeId | None,
        *,
        now: dt.datetime,
    ) -> FederationRelationship:
        now = utc(now)
        return cls(trust_domain, url, profile, endpoint_spiffe_id, now, now)

    @property
    def self_serving(self) -> bool:
        """The endpoint's SVID is of the trust domain it serves (SPIFFE_Federation.md 5.2.2.2)."""
        sid = self.endpoint_spiffe_id
        return sid is not None and sid.trust_domain == self.trust_domain

    def to_json(self) -> dict[str, Any]:
        sid = self.endpoint_spiffe_id
        return {
            "trust_domain": str(self.trust_domain),
            "bundle_endpoint_url": self.bundle_endpoint_url,
            "profile": self.profile.value,
            "endpoint_spiffe_id": None if sid is None else str(sid),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "status": self.status.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FederationRelationship:
        """Parse a stored or submitted record; ``InvalidRequest`` says what is wrong."""
        if not isinstance(doc, Mapping):
            raise InvalidRequest("a federation relationship must be a JSON object")
        try:
            td = TrustDomain.parse(_text(doc, "trust_domain"))
            raw_sid = doc.get("endpoint_spiffe_id")
            sid = None if raw_sid is None else SpiffeId.parse(_text(doc, "endpoint_spiffe_id"))
        except InvalidSpiffeId as exc:
            raise InvalidRequest(str(exc)) from None
        try:
            profile = EndpointProfile(str(doc.get("profile")))
        except ValueError:
            raise InvalidRequest("profile must be https_web or https_spiffe") from None
        status = doc.get("status") or {}
        if not isinstance(status, Mapping):
            raise InvalidRequest("status must be an object")
        created = _time(doc.get("created_at")) or EPOCH
        return cls(
            td,
            _text(doc, "bundle_endpoint_url"),
            profile,
            sid,
            created,
            _time(doc.get("updated_at")) or created,
            RefreshStatus.from_json(status),
        )


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} must be non-empty text")
    return value


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


def _time(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("times must be ISO 8601 text")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"not an ISO 8601 time: {value[:64]!r}") from None
    if parsed.utcoffset() is None:
        raise InvalidRequest("times must carry a UTC offset")
    return utc(parsed)


# ---- a fetched bundle ----------------------------------------------------------------------


def validate_fetched_bundle(
    trust_domain: TrustDomain,
    body: bytes,
    *,
    previous: Bundle | None,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> Bundle:
    """The bundle of ``trust_domain`` in a bundle endpoint's answer, or :class:`InvalidBundle`.

    ``previous`` is the last bundle fetched from this endpoint (None after a bundle set by hand:
    SPIFFE_Federation.md 4.2 makes the next refresh replace it whatever its sequence). A bundle
    carries no trust domain name, so an X.509 authority naming another trust domain in its URI
    SAN is refused: that document holds another trust domain's keys.
    """
    if not isinstance(body, bytes | bytearray):
        raise InvalidBundle("the bundle endpoint's answer must be bytes")
    if len(body) > max_bytes:
        raise InvalidBundle(f"the bundle document is larger than {max_bytes} bytes")
    bundle = Bundle.decode(trust_domain, bytes(body))
    for cert in bundle.x509_authorities:
        named = _spiffe_trust_domains(cert)
        if named and named != {trust_domain}:
            others = ", ".join(sorted(str(td) for td in named))
            raise InvalidBundle(
                f"the bundle for {trust_domain} holds an authority of trust domain {others}"
            )
    if previous is not None and bundle.sequence < previous.sequence:
        raise InvalidBundle(
            f"the bundle sequence of {trust_domain} went backwards "
            f"({bundle.sequence} after {previous.sequence})"
        )
    return bundle


def _spiffe_trust_domains(cert: x509.Certificate) -> set[TrustDomain]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    except ValueError as exc:  # a malformed extension
        raise InvalidBundle(f"an X.509 authority has an unreadable SAN: {exc}") from None
    found: set[TrustDomain] = set()
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.lower().startswith("spiffe://"):
            try:
                found.add(SpiffeId.parse(uri).trust_domain)
            except InvalidSpiffeId as exc:
                raise InvalidBundle(f"an X.509 authority has a bad SPIFFE ID: {exc}") from None
    return found


# ---- when to refresh -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to fetch a federated bundle again.

    After a success: at the bundle's refresh hint (five minutes without one), kept within
    [``minimum``, ``maximum``] and jittered down by up to 10% so many CAs do not poll in step.
    After a failure: capped exponential backoff from ``minimum`` up to that same interval, never
    faster (SPIFFE_Federation.md 6.2: retry at the next polling interval, not aggressively).

    >>> p = RefreshPolicy(minimum=dt.timedelta(seconds=30), maximum=dt.timedelta(hours=1))
    >>> [p.after_success(h, rand=0.0).total_seconds() for h in (600, None, 1)]
    [600.0, 300.0, 30.0]
    >>> p.after_failure(1, 600, rand=0.0), p.after_failure(20, 600, rand=0.999) <= p.interval(600)
    (datetime.timedelta(seconds=30), True)
    """

    minimum: dt.timedelta = dt.timedelta(seconds=30)
    maximum: dt.timedelta = dt.timedelta(hours=1)
    default: dt.timedelta = DEFAULT_REFRESH_HINT

    def __post_init__(self) -> None:
        if not dt.timedelta(0) < self.minimum <= self.maximum:
            raise InvalidConfig("federation refresh needs 0 < minimum <= maximum")

    def interval(self, hint: int | None) -> dt.timedelta:
        wanted = self.default if hint is None else dt.timedelta(seconds=hint)
        return min(max(wanted, self.minimum), self.maximum)

    def after_success(self, hint: int | None, *, rand: float) -> dt.timedelta:
        interval = self.interval(hint)
        return max(self.minimum, interval * (1.0 - 0.1 * rand))

    def after_failure(self, failures: int, hint: int | None, *, rand: float) -> dt.timedelta:
        cap = self.interval(hint).total_seconds()
        low = self.minimum.total_seconds()
        backoff = Backoff(initial=low, cap=cap, low=1.0, high=1.5, floor=low)
        return dt.timedelta(seconds=backoff.delay(max(failures - 1, 0), rand))
