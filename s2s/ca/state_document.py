"""One JSON document in the store's state, read through a parsed snapshot and changed by
compare-and-swap.

Several CA registries (OAuth clients, federated bundles, federation relationships) each keep
their records as one state value, so both store backends hold them and replicas agree. This is
the part they share: the stored text is parsed again only when it differs from the snapshot's; a
change is computed on the current value and swapped in with :meth:`Store.cas_state`, read again
and retried when another writer got there first, and refused with :class:`Unavailable` after a
few such losses; a document over its size cap is refused before it reaches the store; a write can
bump a topic in the same transaction. What the records mean, how they are checked, audited or
announced stays with each registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

from s2s.core.errors import Conflict, InvalidRequest, Unavailable
from s2s.store.base import Store
from s2s.store.records import Topic

__all__ = ["MAX_ATTEMPTS", "StateDocument"]

T = TypeVar("T")
R = TypeVar("R")

# Each lost race re-reads the document; losing this many in a row means writers keep colliding.
MAX_ATTEMPTS: Final = 5


def _always(_: object) -> bool:
    return True


class StateDocument(Generic[T]):
    """The document under state ``key``, parsed by ``decode`` and written by ``encode``.

    ``decode`` turns the stored text into a ``T``; a ``KeyError``, ``TypeError`` or
    ``ValueError`` from it (which includes the project's parse errors) becomes
    :class:`Unavailable` naming the document. A missing key reads as ``empty``. ``T`` values are
    shared with every reader, so they must not be changed in place: :meth:`update` hands the
    current value to ``change``, which returns a new one.
    """

    def __init__(
        self,
        *,
        store: Store,
        key: str,
        name: str,
        empty: T,
        decode: Callable[[str], T],
        encode: Callable[[T], str],
        topic: Topic | None = None,
        max_bytes: int | None = None,
        on_write: Callable[[], None] | None = None,
        attempts: int = MAX_ATTEMPTS,
    ) -> None:
        """``name`` (plural, such as "federated bundles") goes into error messages; ``topic``
        is bumped by every write :meth:`update` does not exempt; ``on_write`` is called after
        each successful swap; ``attempts`` (at least 1) bounds the retries."""
        self._store = store
        self._key = key
        self._name = name
        self._empty = empty
        self._decode = decode
        self._encode = encode
        self._topic = topic
        self._max_bytes = max_bytes
        self._on_write = on_write
        self._attempts = attempts
        self._snapshot: tuple[str | None, T] = (None, empty)
        self._generation = 0

    @property
    def snapshot(self) -> tuple[str | None, T]:
        """The text and value last read or written (``(None, empty)`` before the first)."""
        return self._snapshot

    @property
    def generation(self) -> int:
        """Moves on every successful write: a reader that saw it move while it read knows the
        snapshot holds something newer than what it read."""
        return self._generation

    async def read(self) -> tuple[str | None, T]:
        """The stored text and its value, parsed only when the text differs from the snapshot's.

        What is read becomes the snapshot unless a write through this object happened while it
        was read (then the snapshot already holds something newer)."""
        generation = self._generation
        raw = await self._store.get_state(self._key)
        value = self._parsed(raw)
        if generation == self._generation:
            self._snapshot = (raw, value)
        return raw, value

    async def update(
        self, change: Callable[[T], tuple[T, R]], *, bump: Callable[[R], bool] = _always
    ) -> R:
        """Apply ``change`` to the current value and store the result by compare-and-swap.

        ``change`` returns the new value and a result that this returns; it runs again on the
        newer value when another writer won the race, and what it raises propagates (nothing is
        written). A new value that encodes to the stored text is not written. ``bump(result)``
        False writes without bumping the topic. After :data:`MAX_ATTEMPTS` lost races this
        raises :class:`Unavailable`; a document longer than ``max_bytes`` is
        :class:`InvalidRequest`."""
        for _ in range(self._attempts):
            raw, value = await self.read()
            new, result = change(value)
            text = self._encode(new)
            if self._max_bytes is not None and len(text) > self._max_bytes:
                raise InvalidRequest(
                    f"the {self._name} would take more than {self._max_bytes} bytes; "
                    f"delete {self._name} that are no longer needed"
                )
            if text == raw:
                return result
            topic = self._topic if bump(result) else None
            try:
                await self._store.cas_state(self._key, raw, text, topic=topic)
            except Conflict:
                continue
            self._generation += 1
            self._snapshot = (text, new)  # write-through: this object sees it at once
            if self._on_write is not None:
                self._on_write()
            return result
        raise Unavailable(f"the {self._name} changed too often to update; try again")

    def _parsed(self, raw: str | None) -> T:
        cached_raw, cached = self._snapshot
        if raw == cached_raw:
            return cached
        if raw is None:
            return self._empty
        try:
            return self._decode(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"the stored {self._name} are unreadable: {exc}") from exc
