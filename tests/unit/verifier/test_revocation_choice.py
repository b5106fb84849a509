"""revocations= is an explicit choice: the source's own by default, an explicit lookup, or
no_revocation_check(); a source without revocations and no choice is a clear InvalidConfig."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig, InvalidToken
from s2s.core.revocation import RevocationLookup, RevocationRecord, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.aiohttp import spiffe_connector
from s2s.verifier.authorize import authorize_any
from s2s.verifier.jwt import JwtMetrics, JwtValidator
from s2s.verifier.pyopenssl import PyOpenSSLTls
from s2s.verifier.revocation_choice import NoRevocationCheck, no_revocation_check
from s2s.verifier.revocations import InMemoryRevocations
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import client_context, server_context
from s2s.verifier.x509context import X509Callback, X509Context

ID = "spiffe://example.org/svc"


class SourceWithRevocations:
    """A real, small X.509 source carrying its own revocations (as X509Source does)."""

    def __init__(self, inner: StaticX509Source, revocations: RevocationLookup) -> None:
        self._inner = inner
        self.revocations = revocations

    def current(self) -> X509Context:
        return self._inner.current()

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return self._inner.subscribe(callback)


class BundlesWithRevocations:
    """A bundle lookup carrying its own revocations (as JwtSource does)."""

    def __init__(self, bundles: BundleSet, revocations: RevocationLookup) -> None:
        self._bundles = bundles
        self.revocations = revocations

    def current(self) -> BundleSet:
        return self._bundles


@pytest.fixture
def static(authority: TestAuthority) -> StaticX509Source:
    return StaticX509Source(
        X509Context((authority.issue_x509_svid(ID),), BundleSet.of(authority.bundle()))
    )


def _verifier_revocations(kind: str, source: Any, **kw: Any) -> Any:
    """Build the ``kind`` entry point over ``source``; return the lookup its verifier uses."""
    if kind == "server_context":
        return server_context(source, authorize=authorize_any(), **kw).s2s.verifier.revocations
    if kind == "client_context":
        return client_context(source, authorize=authorize_any(), **kw).s2s.verifier.revocations
    if kind == "pyopenssl":
        tls = PyOpenSSLTls(source, server_side=True, authorize=authorize_any(), **kw)
        tls.close()
        return tls.verifier.revocations
    raise AssertionError(kind)


KINDS = ["server_context", "client_context", "pyopenssl"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_source_without_revocations_needs_an_explicit_choice(
    kind: str, static: StaticX509Source
) -> None:
    with pytest.raises(InvalidConfig) as info:
        _verifier_revocations(kind, static)
    message = str(info.value)
    assert "StaticX509Source carries no revocations" in message
    assert "revocations=<a lookup>" in message
    assert "revocations=no_revocation_check()" in message


@pytest.mark.parametrize("kind", KINDS)
def test_the_explicit_opt_out_is_accepted(kind: str, static: StaticX509Source) -> None:
    used = _verifier_revocations(kind, static, revocations=no_revocation_check())
    assert isinstance(used, NoRevocationCheck)
    assert used.current() is RevocationSet.EMPTY


@pytest.mark.parametrize("kind", KINDS)
def test_an_explicit_lookup_is_used(kind: str, static: StaticX509Source) -> None:
    lookup = InMemoryRevocations()
    assert _verifier_revocations(kind, static, revocations=lookup) is lookup


@pytest.mark.parametrize("kind", KINDS)
def test_the_sources_own_revocations_are_the_default_and_an_explicit_one_wins(
    kind: str, static: StaticX509Source
) -> None:
    own, explicit = InMemoryRevocations(), InMemoryRevocations()
    source = SourceWithRevocations(static, own)
    assert _verifier_revocations(kind, source) is own
    assert _verifier_revocations(kind, source, revocations=explicit) is explicit


@pytest.mark.parametrize("kind", KINDS)
def test_something_that_is_not_a_lookup_is_refused(kind: str, static: StaticX509Source) -> None:
    with pytest.raises(InvalidConfig, match="must be a revocation lookup"):
        _verifier_revocations(kind, static, revocations=RevocationSet.EMPTY)


async def test_spiffe_connector_needs_the_same_choice(static: StaticX509Source) -> None:
    with pytest.raises(InvalidConfig, match=r"spiffe_connector: StaticX509Source carries no"):
        spiffe_connector(static, authorize=authorize_any())
    connector = spiffe_connector(
        static, authorize=authorize_any(), revocations=no_revocation_check()
    )
    await connector.close()
    own = InMemoryRevocations()
    connector = spiffe_connector(SourceWithRevocations(static, own), authorize=authorize_any())
    try:
        assert connector._ssl.s2s.verifier.revocations is own  # type: ignore[union-attr]
    finally:
        await connector.close()


def _validator(bundles: Any, **kw: Any) -> JwtValidator:
    clock = kw.pop("clock", None)
    return JwtValidator(bundles, "aud", metrics=JwtMetrics(CollectorRegistry()), clock=clock, **kw)


def test_jwt_validator_over_bare_bundles_needs_an_explicit_choice(
    authority: TestAuthority,
) -> None:
    bundles = BundleSet.of(authority.bundle())
    with pytest.raises(InvalidConfig) as info:
        _validator(bundles)
    assert "JwtValidator: BundleSet carries no revocations" in str(info.value)
    assert "revocations=no_revocation_check()" in str(info.value)
    assert _validator(bundles, revocations=no_revocation_check())  # twin: the explicit opt-out


def test_jwt_validator_uses_the_sources_revocations_unless_given_others(
    authority: TestAuthority, fake_clock: FakeClock
) -> None:
    own, explicit = InMemoryRevocations(), InMemoryRevocations()
    source = BundlesWithRevocations(BundleSet.of(authority.bundle()), own)
    token = authority.issue_jwt_svid(ID, "aud", jti="j1")
    by_default = _validator(source, clock=fake_clock)
    by_choice = _validator(source, revocations=explicit, clock=fake_clock)
    assert by_default.validate(token).spiffe_id.path == "/svc"
    now = fake_clock.now()
    own.add(RevocationRecord.for_jti("j1", revoked_at=now, expires_at=now + dt.timedelta(hours=1)))
    with pytest.raises(InvalidToken) as info:
        by_default.validate(token)
    assert info.value.reason == "revoked"
    assert by_choice.validate(token).spiffe_id.path == "/svc"  # the explicit lookup wins
