"""Which revocations a verifier checks: the source's own, one given explicitly, or none by choice.

Every verifier entry point (the TLS contexts, the aiohttp connector, the pyOpenSSL contexts,
:class:`~s2s.verifier.jwt.JwtValidator`) takes ``revocations=``. Left out, it means *the
source's own revocations*: :attr:`X509Source.revocations` (the agent's CRLs), the
``revocations`` of the sync facades, :attr:`JwtSource.revocations` (the agent's revocation
stream). A lookup that says it cannot serve (``unsupported``: the agent does not serve the
stream) is not a default either. A source that carries none (``StaticX509Source``,
``PemFileX509Source``, a bare ``BundleSet``) has nothing to default to, and silently checking
nothing would accept revoked credentials, so the caller must choose, as they choose an
authorizer: pass a lookup (``EtcdRevocationFeed``, ``CaRevocationFeed``,
``CrlFileRevocations``, ...) or opt out with ``revocations=no_revocation_check()``. Otherwise
:func:`resolve_revocations` raises :class:`InvalidConfig` naming both.

>>> no_revocation_check().current() is RevocationSet.EMPTY
True
"""

from __future__ import annotations

from s2s.core.errors import InvalidConfig
from s2s.core.revocation import RevocationLookup, RevocationSet

__all__ = ["NoRevocationCheck", "no_revocation_check", "resolve_revocations", "source_revocations"]


class NoRevocationCheck:
    """A lookup that revokes nothing: the explicit choice not to check revocations."""

    __slots__ = ()

    def current(self) -> RevocationSet:
        return RevocationSet.EMPTY

    def __repr__(self) -> str:
        return "no_revocation_check()"


_NO_CHECK = NoRevocationCheck()


def no_revocation_check() -> NoRevocationCheck:
    """Opt out of revocation checking, explicitly (tests, or a service whose peers are checked
    some other way). Revoked SVIDs and JWT-SVIDs are accepted until they expire."""
    return _NO_CHECK


def source_revocations(source: object) -> RevocationLookup | None:
    """The revocation lookup ``source`` carries (its ``revocations`` attribute), if any."""
    own = getattr(source, "revocations", None)
    return own if own is not None and callable(getattr(own, "current", None)) else None


def resolve_revocations(
    source: object, revocations: RevocationLookup | None, *, what: str
) -> RevocationLookup:
    """``revocations`` if given, else the source's own; :class:`InvalidConfig` if neither."""
    if revocations is not None:
        if not callable(getattr(revocations, "current", None)):
            raise InvalidConfig(
                f"{what}: revocations= must be a revocation lookup (with current()), "
                f"not {type(revocations).__name__}"
            )
        return revocations
    own = source_revocations(source)
    if own is not None:
        unsupported = getattr(own, "unsupported", None)  # e.g. the agent does not serve them
        if isinstance(unsupported, str) and unsupported:
            raise InvalidConfig(
                f"{what}: the revocations of {type(source).__name__} cannot be used: "
                f"{unsupported}; pass revocations=<a lookup> (an EtcdRevocationFeed, a "
                "CaRevocationFeed, ...) or, to accept revoked credentials, "
                "revocations=no_revocation_check()"
            )
        return own
    raise InvalidConfig(
        f"{what}: {type(source).__name__} carries no revocations, so nothing would be checked: "
        "pass revocations=<a lookup> (an EtcdRevocationFeed, a CaRevocationFeed, "
        "CrlFileRevocations, ...) or, to accept revoked credentials, "
        "revocations=no_revocation_check()"
    )
