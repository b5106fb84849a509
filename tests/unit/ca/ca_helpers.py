"""Helpers and fixtures for the CA service tests: a real SQLite store and KEK in tmp_path, a fake
clock. ``conftest.py`` registers the fixtures; tests import the helpers from here."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from s2s.ca.attestation import AgentAttestor
from s2s.ca.audit import AuditLog
from s2s.ca.authority import Authority
from s2s.ca.config import CaConfig
from s2s.ca.issuance import Issuer
from s2s.ca.keys import KeyEncryptionKey
from s2s.ca.registry import Registry
from s2s.core.clock import FakeClock
from s2s.core.revocation import StaticRevocations
from s2s.core.spiffe_id import TrustDomain
from s2s.store.sqlite import SqliteStore

TD = TrustDomain.parse("example.org")


def make_csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    uri: str | None = None,
    tamper: bool = False,
) -> bytes:
    """A DER CSR signed by ``key`` (new P-256 by default); ``tamper`` breaks its signature."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")])
    )
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    der = builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)
    if tamper:
        der = der[:-1] + bytes([der[-1] ^ 0x01])
    return der


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
def config(tmp_path: Path) -> CaConfig:
    return CaConfig(trust_domain=TD, data_dir=tmp_path)


@pytest.fixture
def kek(config: CaConfig) -> KeyEncryptionKey:
    return KeyEncryptionKey.create(config.kek_path)


@pytest.fixture
async def store(config: CaConfig) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(config.store_path)
    yield s
    await s.close()


@dataclasses.dataclass
class Ca:
    """The CA's service objects, wired as app.py would wire them."""

    config: CaConfig
    store: SqliteStore
    kek: KeyEncryptionKey
    clock: FakeClock
    authority: Authority
    registry: Registry
    issuer: Issuer
    attestor: AgentAttestor
    revocations: StaticRevocations


async def build_ca(
    config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock
) -> Ca:
    """Start the services on an initialized store (what a restart does)."""
    audit = AuditLog()
    authority = Authority(config=config, store=store, kek=kek, clock=clock)
    await authority.start()
    revocations = StaticRevocations()
    registry = Registry(
        config=config, store=store, clock=clock, audit=audit, revocations=revocations
    )
    issuer = Issuer(
        config=config,
        authority=authority,
        registry=registry,
        store=store,
        clock=clock,
        audit=audit,
        revocations=revocations,
    )
    attestor = AgentAttestor(authority=authority, registry=registry, issuer=issuer, audit=audit)
    return Ca(config, store, kek, clock, authority, registry, issuer, attestor, revocations)


@pytest.fixture
async def ca(config: CaConfig, store: SqliteStore, kek: KeyEncryptionKey, clock: FakeClock) -> Ca:
    await Authority.initialize(config=config, store=store, kek=kek, clock=clock)
    return await build_ca(config, store, kek, clock)
