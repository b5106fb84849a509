"""Fixtures for verifier integration tests. OpenSSL reads the wall clock, so authorities here
issue on real time."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from s2s.testing import TestAuthority
from s2s.verifier.metrics import PeerMetrics


@pytest.fixture(scope="module")
def ca() -> TestAuthority:
    return TestAuthority("example.org")


@pytest.fixture(scope="module")
def other_ca() -> TestAuthority:
    """A second trust domain (federated in some tests)."""
    return TestAuthority("other.org")


@pytest.fixture
def metrics() -> PeerMetrics:
    return PeerMetrics(CollectorRegistry())
