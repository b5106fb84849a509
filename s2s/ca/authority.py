"""The CA's signing authorities: the root, this replica's intermediate and JWT key, the bundle.

Key hierarchy (ARCHITECTURE.md section 2): one root per trust domain (ECDSA P-256, 1 year), one
intermediate per replica signed by the root (24 h), one JWT signing key per replica (random
``kid``). Private keys are sealed with the KEK in the store. Rotation follows SPIRE's schedule: the
next authority is prepared at 1/2 of the current one's life and activated when 1/6 of it remains.
A prepared JWT key joins the bundle at once (verifiers learn it before any token uses it); an old
JWT key stays until its ``not_after``, and no token it signed outlives that, so every token it
signed stays verifiable until it expires. The bundle's ``spiffe_sequence`` grows on each change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey, SigningKey
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock
from s2s.core.spiffe_id import TrustDomain
from s2s.store.records import AuthorityKind, AuthorityState

if TYPE_CHECKING:
    from s2s.store.base import Store

__all__ = [
    "Authority",
    "AuthorityInfo",
    "AuthorityKind",
    "AuthorityState",
    "JwtSigner",
    "X509Signer",
]


@dataclass(frozen=True, slots=True)
class AuthorityInfo:
    """Public view of one authority (``s2s-ca authority list``); never holds a private key.

    ``id`` is the hex subject key identifier for X.509 authorities and the ``kid`` for JWT keys;
    ``owner`` is the replica name ("" for the root).
    """

    id: str
    kind: AuthorityKind
    state: AuthorityState
    owner: str
    not_before: datetime
    not_after: datetime
    public_key: PublicKeyTypes
    certificate: x509.Certificate | None = None

    def to_json(self) -> dict[str, str]:
        """JSON-ready fields for the admin API (no key material beyond the public key id)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class X509Signer:
    """This replica's active intermediate and its key, loaded once, ready to sign leaves.

    ``chain`` is what follows a leaf on the wire (the intermediate; never the root).
    """

    authority_id: str
    certificate: x509.Certificate
    private_key: SigningKey
    chain: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class JwtSigner:
    """This replica's active JWT signing key (ES256). Tokens never outlive ``not_after``."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    algorithm: str
    not_after: datetime


class Authority:
    """Holds the signing keys of one CA replica in memory and keeps them rotated.

    Construct, then ``await start()`` (loads the root, loads or creates this replica's
    intermediate and JWT key). ``x509_signer``, ``jwt_signer`` and ``bundle`` are immutable
    snapshots swapped whole on rotation; readers need no lock. The app calls
    :meth:`rotate_if_due` periodically (every few seconds) and :meth:`refresh_bundle` when the
    store says authorities changed (other replicas).
    """

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        raise NotImplementedError

    @classmethod
    async def initialize(
        cls,
        *,
        config: CaConfig,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> AuthorityInfo:
        """Create the trust domain's root (``s2s-ca init``); :class:`Conflict` if one exists."""
        raise NotImplementedError

    async def start(self) -> None:
        """Load the root and this replica's authorities, creating them if missing.

        Raises :class:`InvalidConfig` when the store belongs to another trust domain, has no
        root (not initialized), or its keys do not open with this KEK.
        """
        raise NotImplementedError

    @property
    def trust_domain(self) -> TrustDomain:
        raise NotImplementedError

    @property
    def root(self) -> x509.Certificate:
        """The active root certificate."""
        raise NotImplementedError

    @property
    def x509_signer(self) -> X509Signer:
        """The active intermediate with its key (raises :class:`Unavailable` before start)."""
        raise NotImplementedError

    @property
    def jwt_signer(self) -> JwtSigner:
        """The active JWT signing key (raises :class:`Unavailable` before start)."""
        raise NotImplementedError

    @property
    def bundle(self) -> Bundle:
        """The current trust bundle: roots + JWT public keys of non-revoked authorities."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """True once :meth:`start` succeeded."""
        raise NotImplementedError

    async def refresh_bundle(self) -> Bundle:
        """Rebuild the bundle from the store (picks up other replicas' JWT keys)."""
        raise NotImplementedError

    async def rotate_if_due(self, now: datetime | None = None) -> bool:
        """Prepare, activate and retire authorities that are due; True if anything changed."""
        raise NotImplementedError

    def next_rotation_check(self) -> datetime:
        """The earliest instant at which :meth:`rotate_if_due` may have work to do."""
        raise NotImplementedError

    async def list_authorities(self) -> tuple[AuthorityInfo, ...]:
        """Every authority in the store, all replicas, roots first."""
        raise NotImplementedError
