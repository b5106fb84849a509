"""SPIFFE IDs and trust domain names, exactly as SPIFFE-ID.md section 2 defines them.

Parsing is strict: nothing is trimmed, lowercased or percent-decoded. A value that breaks a rule
raises :class:`InvalidSpiffeId` naming the rule (and, for case mistakes, the lowercase form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from s2s.core.errors import InvalidSpiffeId

__all__ = ["MAX_ID_BYTES", "MAX_TRUST_DOMAIN_BYTES", "SpiffeId", "TrustDomain"]

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048  # SPIFFE-ID.md 2.3
MAX_TRUST_DOMAIN_BYTES = 255  # SPIFFE-ID.md 2.3

_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")
# Fast path for the common, valid case; failures are re-examined slowly to name the rule.
_VALID_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A trust domain name such as ``example.org``.

    >>> td = TrustDomain.parse("example.org")
    >>> str(td), str(td.id())
    ('example.org', 'spiffe://example.org')
    """

    name: str

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse a bare trust domain name, or a SPIFFE ID with no path (``spiffe://td``)."""
        if not isinstance(text, str):
            raise InvalidSpiffeId("a trust domain must be text")
        if "://" in text:
            sid = SpiffeId.parse(text)
            if sid.path:
                raise InvalidSpiffeId("a trust domain ID has no path", value=text)
            return sid.trust_domain
        _check_trust_domain(text, whole=text)
        return cls(text)

    def id(self, path: str = "") -> SpiffeId:
        """The SPIFFE ID of this trust domain (``spiffe://td``), or of ``path`` within it."""
        if path:
            _check_path(path, whole=path)
        return SpiffeId(self, path)

    def child(self, *segments: str) -> SpiffeId:
        """The SPIFFE ID made of ``segments`` in this trust domain (each one segment, no '/')."""
        if any("/" in s for s in segments):
            raise InvalidSpiffeId("a path segment must not contain '/'", value="/".join(segments))
        return self.id("".join("/" + s for s in segments))

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A SPIFFE ID: ``spiffe://<trust domain><path>``.

    >>> sid = SpiffeId.parse("spiffe://example.org/ns/shop/sa/billing")
    >>> sid.trust_domain.name, sid.path, sid.segments
    ('example.org', '/ns/shop/sa/billing', ('ns', 'shop', 'sa', 'billing'))
    >>> SpiffeId.parse(str(sid)) == sid
    True
    """

    trust_domain: TrustDomain
    path: str
    _text: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self._text:
            object.__setattr__(self, "_text", f"{SCHEME}{self.trust_domain.name}{self.path}")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``text`` strictly; raises :class:`InvalidSpiffeId` naming the broken rule."""
        if not isinstance(text, str):
            raise InvalidSpiffeId("a SPIFFE ID must be text")
        m = _VALID_ID.fullmatch(text)
        if m is not None and _fast_ok(text, m.group(1), m.group(2)):
            return cls(TrustDomain(m.group(1)), m.group(2), text)
        _explain(text)
        raise InvalidSpiffeId("not a SPIFFE ID", value=text)  # pragma: no cover - _explain raises

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def is_root(self) -> bool:
        """True for the trust domain's own ID (no path)."""
        return not self.path

    def __str__(self) -> str:
        return self._text


def _fast_ok(text: str, td: str, path: str) -> bool:
    if len(text) > MAX_ID_BYTES or len(td) > MAX_TRUST_DOMAIN_BYTES:
        return False
    return "/./" not in path + "/" and "/../" not in path + "/"


def _explain(text: str) -> None:
    """Raise the most helpful error for an invalid ID."""
    if text == "":
        raise InvalidSpiffeId("it is empty", value=text)
    if not text.startswith(SCHEME):
        if text[: len(SCHEME)].lower() == SCHEME:
            raise InvalidSpiffeId(
                f"the scheme must be lowercase: did you mean {_lower_prefix(text)!r}?", value=text
            )
        raise InvalidSpiffeId("it must start with 'spiffe://'", value=text)
    if len(text.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidSpiffeId(f"it is longer than {MAX_ID_BYTES} bytes", value=text)
    rest = text[len(SCHEME) :]
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    _check_trust_domain(authority, whole=text)
    _check_path(path, whole=text)


def _lower_prefix(text: str) -> str:
    rest = text[len(SCHEME) :]
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    return SCHEME + authority.lower() + path


def _check_trust_domain(name: str, *, whole: str) -> None:
    if name == "":
        raise InvalidSpiffeId("the trust domain is missing", value=whole)
    for char, reason in (
        ("@", "userinfo is not allowed"),
        (":", "a port is not allowed"),
        ("?", "a query is not allowed"),
        ("#", "a fragment is not allowed"),
        ("%", "percent-encoding is not allowed"),
    ):
        if char in name:
            raise InvalidSpiffeId(f"{reason} in the trust domain", value=whole)
    if len(name.encode("utf-8")) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeId(
            f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes", value=whole
        )
    if _TD_CHARS.fullmatch(name) is None:
        lowered = name.lower()
        if lowered != name and _TD_CHARS.fullmatch(lowered) is not None:
            shown = _lower_prefix(whole) if whole.startswith(SCHEME) else lowered
            raise InvalidSpiffeId(
                f"the trust domain must be lowercase: did you mean {shown!r}?", value=whole
            )
        raise InvalidSpiffeId(
            "trust domain characters are limited to lowercase letters, digits, '.', '-' and '_'",
            value=whole,
        )


def _check_path(path: str, *, whole: str) -> None:
    if path == "":
        return
    if not path.startswith("/"):
        raise InvalidSpiffeId("the path must start with '/'", value=whole)
    for char, reason in (
        ("?", "a query is not allowed"),
        ("#", "a fragment is not allowed"),
        ("%", "percent-encoding is not allowed"),
    ):
        if char in path:
            raise InvalidSpiffeId(reason, value=whole)
    if path.endswith("/"):
        raise InvalidSpiffeId("the path must not end with '/'", value=whole)
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidSpiffeId("the path must not contain empty segments", value=whole)
        if segment in (".", ".."):
            raise InvalidSpiffeId("the path must not contain '.' or '..' segments", value=whole)
        if _SEGMENT_CHARS.fullmatch(segment) is None:
            raise InvalidSpiffeId(
                "path segment characters are limited to letters, digits, '.', '-' and '_'",
                value=whole,
            )
    if len(whole.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidSpiffeId(f"it is longer than {MAX_ID_BYTES} bytes", value=whole)
