"""The version counter behind ``IdentityProvider.version`` / ``wait_for_update``.

Shared by :class:`~s2s.agent.cache.SvidCache` and
:class:`~s2s.agent.static_provider.StaticIdentityProvider`: every change bumps the version and
wakes the Workload API streams waiting on the previous one.
"""

from __future__ import annotations

import asyncio

__all__ = ["Versioned"]


class Versioned:
    """A version that moves on every change, and a wait for it to move."""

    def __init__(self) -> None:
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    async def wait_for_update(self, after_version: int) -> int:
        while self._version == after_version:
            await self._changed.wait()
        return self._version

    def _bump(self) -> None:
        self._version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()
