"""Fixtures for the verifier unit tests."""

from __future__ import annotations

import pytest
from jwt_support import Harness

from s2s.core.clock import FakeClock
from s2s.testing import TestAuthority


@pytest.fixture
def h(fake_clock: FakeClock, authority: TestAuthority) -> Harness:
    """A JWT-SVID validator over two trust domains (see :class:`jwt_support.Harness`)."""
    return Harness(fake_clock, authority)
