"""Fixtures for the Workload API tests: a real server on a real Unix socket.

The socket directory is made under /tmp with mode 0755 (pytest's own tmp dirs are 0700, which
would keep the uid-65534 workloads of these tests out).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from s2s.agent.attestor import UnixAttestor
from s2s.agent.static_provider import StaticIdentityProvider
from s2s.agent.workload_api import WorkloadApiServer
from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.testing import TestAuthority


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s2s-wl-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def provider(authority: TestAuthority, fake_clock: FakeClock) -> StaticIdentityProvider:
    """Bundles of ``authority``; JWT-SVIDs signed by it; nothing registered yet."""
    return StaticIdentityProvider(
        bundles=BundleSet.of(authority.bundle()),
        jwt_signer=authority.issue_jwt_svid,
        clock=fake_clock,
    )


@pytest.fixture
async def server(
    provider: StaticIdentityProvider, socket_dir: Path
) -> AsyncIterator[WorkloadApiServer]:
    async with WorkloadApiServer(
        provider=provider, attestor=UnixAttestor(), socket_path=str(socket_dir / "agent.sock")
    ) as srv:
        yield srv
