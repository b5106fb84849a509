"""Shared fixtures: a fake clock at the current second and a test authority that reads it.

Certificates must also be valid for real TLS stacks, which read the wall clock, so the fake clock
starts at the real current time; tests move it forward to expire credentials.
"""

from __future__ import annotations

import datetime as dt

import pytest

from s2s.core.clock import FakeClock
from s2s.testing import TestAuthority


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
def authority(fake_clock: FakeClock) -> TestAuthority:
    """A TestAuthority for ``example.org`` issuing at ``fake_clock.now()``."""
    return TestAuthority("example.org", clock=fake_clock)
