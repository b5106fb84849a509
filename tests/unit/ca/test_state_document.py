"""StateDocument on a real SQLite store: the stored text is parsed only when it changed, a lost
compare-and-swap (another replica on the same database file) is retried on the newer value, too
many lost races are Unavailable, the size cap refuses before writing, the topic moves only for the
writes that ask for it, an unchanged document is not written, a corrupt one is Unavailable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from s2s.ca.config import CaConfig
from s2s.ca.state_document import MAX_ATTEMPTS, StateDocument
from s2s.core.errors import Conflict, InvalidRequest, Unavailable
from s2s.store.records import Topic
from s2s.store.sqlite import SqliteStore

KEY = "test/names"
TOPIC = Topic.OAUTH_CLIENTS
Names = tuple[str, ...]


class Codec:
    """A tuple of names as ``{"names": [...]}``, counting how often text is parsed."""

    def __init__(self) -> None:
        self.decoded = 0

    def decode(self, raw: str) -> Names:
        self.decoded += 1
        names = json.loads(raw)["names"]
        if not all(isinstance(n, str) for n in names):
            raise TypeError("names must be strings")
        return tuple(names)

    @staticmethod
    def encode(names: Names) -> str:
        return json.dumps({"names": list(names)})


def _doc(
    store: SqliteStore,
    codec: Codec | None = None,
    *,
    max_bytes: int | None = None,
    on_write: Callable[[], None] | None = None,
) -> StateDocument[Names]:
    codec = codec or Codec()
    return StateDocument[Names](
        store=store,
        key=KEY,
        name="test names",
        empty=(),
        decode=codec.decode,
        encode=codec.encode,
        topic=TOPIC,
        max_bytes=max_bytes,
        on_write=on_write,
    )


def _adding(name: str) -> Callable[[Names], tuple[Names, int]]:
    def add(names: Names) -> tuple[Names, int]:
        return (*names, name), len(names) + 1

    return add


@pytest.fixture
async def replica(config: CaConfig, store: SqliteStore) -> AsyncIterator[SqliteStore]:
    """Another connection to the same database file: a second CA replica."""
    other = await SqliteStore.open(config.store_path)
    yield other
    await other.close()


async def test_missing_document_reads_empty_and_update_creates_it(store: SqliteStore) -> None:
    doc = _doc(store)
    assert await doc.read() == (None, ())
    assert await doc.update(_adding("a")) == 1
    assert await store.get_state(KEY) == '{"names": ["a"]}'
    assert doc.snapshot == ('{"names": ["a"]}', ("a",))


async def test_text_is_parsed_only_when_it_changed(store: SqliteStore) -> None:
    codec = Codec()
    doc = _doc(store, codec)
    await store.cas_state(KEY, None, Codec.encode(("a",)))
    assert (await doc.read())[1] == ("a",)
    assert (await doc.read())[1] == ("a",)
    assert codec.decoded == 1
    # twin: another writer changed the text: parsed again
    await store.cas_state(KEY, Codec.encode(("a",)), Codec.encode(("a", "b")))
    assert (await doc.read())[1] == ("a", "b")
    assert codec.decoded == 2


async def test_a_write_through_needs_no_parse(store: SqliteStore) -> None:
    codec = Codec()
    doc = _doc(store, codec)
    generation = doc.generation
    await doc.update(_adding("a"))
    assert doc.generation == generation + 1
    assert (await doc.read())[1] == ("a",)
    assert codec.decoded == 0


async def test_a_lost_race_is_retried_on_the_newer_value(
    store: SqliteStore, replica: SqliteStore
) -> None:
    mine, theirs = _doc(store), _doc(replica)
    seen: list[Names] = []

    async def race() -> None:
        await theirs.update(_adding("theirs"))

    def add(names: Names) -> tuple[Names, int]:
        seen.append(names)
        return (*names, "mine"), len(names) + 1

    # the other replica's write lands between our read and our swap: the first swap loses
    real_cas = store.cas_state

    async def cas_after_a_rival(
        key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        if len(seen) == 1:
            await race()
        await real_cas(key, expected, new, topic=topic)

    store.cas_state = cas_after_a_rival  # type: ignore[method-assign]
    assert await mine.update(add) == 2
    assert seen == [(), ("theirs",)]
    assert json.loads(await replica.get_state(KEY) or "")["names"] == ["theirs", "mine"]


async def test_too_many_lost_races_are_unavailable(
    store: SqliteStore, replica: SqliteStore
) -> None:
    mine, theirs = _doc(store), _doc(replica)
    calls: list[Names] = []
    real_cas = store.cas_state

    async def always_beaten(
        key: str, expected: str | None, new: str | None, *, topic: Topic | None = None
    ) -> None:
        await theirs.update(_adding(f"theirs-{len(calls)}"))
        await real_cas(key, expected, new, topic=topic)

    def add(names: Names) -> tuple[Names, int]:
        calls.append(names)
        return (*names, "mine"), 0

    store.cas_state = always_beaten  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="test names changed too often"):
        await mine.update(add)
    assert len(calls) == MAX_ATTEMPTS
    assert "mine" not in json.loads(await replica.get_state(KEY) or "")["names"]


async def test_a_conflict_raised_by_the_change_is_not_retried(store: SqliteStore) -> None:
    calls: list[Names] = []

    def refuse(names: Names) -> tuple[Names, int]:
        calls.append(names)
        raise Conflict("already there")

    with pytest.raises(Conflict, match="already there"):
        await _doc(store).update(refuse)
    assert len(calls) == 1
    assert await store.get_state(KEY) is None


async def test_the_size_cap_refuses_before_writing(store: SqliteStore) -> None:
    limit = len(Codec.encode(("abc",)))
    doc = _doc(store, max_bytes=limit)
    assert await doc.update(_adding("abc")) == 1  # exactly at the cap: accepted
    with pytest.raises(InvalidRequest, match=f"more than {limit} bytes"):
        await doc.update(_adding("d"))
    assert await store.get_state(KEY) == Codec.encode(("abc",))
    assert doc.snapshot[1] == ("abc",)


async def test_the_topic_moves_only_when_asked(store: SqliteStore) -> None:
    doc = _doc(store)
    before = await store.revision(TOPIC)
    await doc.update(_adding("a"))
    bumped = await store.revision(TOPIC)
    assert bumped != before
    await doc.update(_adding("b"), bump=lambda result: result > 5)  # twin: told not to
    assert await store.revision(TOPIC) == bumped
    assert (await doc.read())[1] == ("a", "b")


async def test_an_unchanged_document_is_not_written(store: SqliteStore) -> None:
    writes: list[None] = []
    doc = _doc(store, on_write=lambda: writes.append(None))
    await doc.update(_adding("a"))
    assert len(writes) == 1
    revision = await store.revision(TOPIC)
    assert await doc.update(lambda names: (names, "same")) == "same"
    assert len(writes) == 1
    assert await store.revision(TOPIC) == revision


async def test_a_corrupt_document_is_unavailable(store: SqliteStore) -> None:
    for text in ("{", '{"other": []}', '{"names": [1]}', "[]"):
        await store.cas_state(KEY, await store.get_state(KEY), text)
        with pytest.raises(Unavailable, match="stored test names are unreadable"):
            await _doc(store).read()
    await store.cas_state(KEY, "[]", '{"names": ["ok"]}')  # twin: readable again
    assert (await _doc(store).read())[1] == ("ok",)


async def test_a_read_racing_a_write_keeps_the_written_snapshot(store: SqliteStore) -> None:
    doc = _doc(store)
    real_get_state = store.get_state
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow_get_state(key: str) -> str | None:
        raw = await real_get_state(key)
        if not reading.is_set():
            reading.set()
            await release.wait()
        return raw

    store.get_state = slow_get_state  # type: ignore[method-assign]
    slow = asyncio.create_task(doc.read())
    await reading.wait()
    store.get_state = real_get_state  # type: ignore[method-assign]
    await doc.update(_adding("new"))
    release.set()
    assert (await slow)[1] == ()  # what that read saw
    assert doc.snapshot[1] == ("new",)  # but the newer write stays the snapshot
