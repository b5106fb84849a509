"""New authority records: a fresh P-256 key, its certificate (root, intermediate) or ``kid`` (JWT),
the key sealed with the KEK. Nothing is stored here; :class:`~s2s.ca.authority.Authority` does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.keys import KeyEncryptionKey, SigningKey
from s2s.ca.signers import x509_authority_record
from s2s.core.b64 import b64url_encode
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509templates import (
    intermediate_template,
    root_template,
    serial_from_entropy,
    sign_certificate,
)
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState

__all__ = ["new_intermediate_record", "new_jwt_record", "new_root_record"]


def new_root_record(
    *,
    trust_domain: TrustDomain,
    kek: KeyEncryptionKey,
    ttl: timedelta,
    now: datetime,
    entropy: Callable[[int], bytes],
    state: AuthorityState,
) -> AuthorityRecord:
    """A self-signed root with its key sealed."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = root_template(
        trust_domain=trust_domain,
        public_key=key.public_key(),
        now=now,
        ttl=ttl,
        serial=serial_from_entropy(entropy(16)),
    )
    return x509_authority_record(
        sign_certificate(builder, key), key=key, kek=kek, kind=AuthorityKind.X509_ROOT, state=state
    )


def new_intermediate_record(
    *,
    trust_domain: TrustDomain,
    root: x509.Certificate,
    root_key: SigningKey,
    root_id: str,
    kek: KeyEncryptionKey,
    ttl: timedelta,
    now: datetime,
    entropy: Callable[[int], bytes],
    state: AuthorityState,
    owner: str,
) -> AuthorityRecord:
    """An intermediate of replica ``owner`` signed by the root ``root_id``."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = intermediate_template(
        trust_domain=trust_domain,
        public_key=key.public_key(),
        issuer=root,
        now=now,
        ttl=ttl,
        serial=serial_from_entropy(entropy(16)),
    )
    cert = sign_certificate(builder, root_key)
    return x509_authority_record(
        cert,
        key=key,
        kek=kek,
        kind=AuthorityKind.X509_INTERMEDIATE,
        state=state,
        owner=owner,
        issuer_id=root_id,
    )


def new_jwt_record(
    *,
    kek: KeyEncryptionKey,
    ttl: timedelta,
    now: datetime,
    entropy: Callable[[int], bytes],
    state: AuthorityState,
    owner: str,
    root_not_after: datetime | None,
) -> AuthorityRecord:
    """A JWT signing key of replica ``owner`` with a random ``kid``; it never outlives the root."""
    key = ec.generate_private_key(ec.SECP256R1())
    kid = b64url_encode(entropy(18))
    not_after = now + ttl
    if root_not_after is not None:
        not_after = min(not_after, root_not_after)
    return AuthorityRecord(
        id=kid,
        kind=AuthorityKind.JWT,
        state=state,
        public_der=key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        encrypted_key=kek.seal_private_key(key, authority_id=kid),
        not_before=now,
        not_after=not_after,
        owner=owner,
    )
