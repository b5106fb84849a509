"""The agent's revocation follower keeps fetching CRLs after a revocation until they list it,
and fetches them only for a newly revoked serial."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from polling import until

import s2s.agent.revocations as follower_module
from s2s.agent.revocations import RevocationFollower, listed_serials
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.verifier.feeds import RevocationFeed

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())


def crl(*serials: int, number: int = 1) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .last_update(NOW)
        .next_update(NOW + timedelta(hours=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class Answers:
    """A CA client that answers the CRL fetches in turn (the last answer repeats)."""

    def __init__(self, *answers: tuple[bytes, ...]) -> None:
        self.answers = list(answers)
        self.fetches = 0

    async def fetch_crls(self) -> tuple[bytes, ...]:
        self.fetches += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Cache:
    """What the follower needs of the SVID cache: its CRLs and dropping revoked SVIDs."""

    def __init__(self, crls: tuple[bytes, ...] = ()) -> None:
        self._crls = crls

    def crls(self) -> tuple[bytes, ...]:
        return self._crls

    def set_crls(self, crls: tuple[bytes, ...]) -> None:
        self._crls = crls

    def drop_revoked(self, revoked: RevocationSet) -> int:
        return 0


def revoked(*serials: int) -> RevocationSet:
    until = NOW + timedelta(hours=1)
    return RevocationSet.of(
        [RevocationRecord.for_serial(s, revoked_at=NOW, expires_at=until) for s in serials]
    )


def follower(client: Answers, cache: Cache) -> RevocationFollower:
    return RevocationFollower(feed=RevocationFeed(), cache=cache, client=client)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_module, "CRL_RETRY_START", 0.001)


async def test_crls_that_changed_without_the_new_serial_are_fetched_again() -> None:
    # The CA re-signed its CRLs (a new intermediate) before it added the new record: the bytes
    # change, the serial is not there yet. The follower must not stop at that answer.
    cache = Cache((crl(1, number=1),))
    client = Answers((crl(1, number=2),), (crl(1, 7, number=3),))
    f = follower(client, cache)
    f._changed(revoked(1, 7))
    await f._refresh_crls(expect_change=True)
    assert 7 in listed_serials(cache.crls())
    assert client.fetches == 2


async def test_crls_that_already_list_the_serial_are_fetched_once() -> None:
    cache = Cache((crl(1),))
    client = Answers((crl(1, 7, number=2),))
    f = follower(client, cache)
    f._changed(revoked(1, 7))
    await f._refresh_crls(expect_change=True)
    assert client.fetches == 1


async def test_a_serial_that_never_appears_is_given_up_after_the_retries() -> None:
    cache = Cache((crl(1),))
    client = Answers((crl(1, number=2),))
    f = follower(client, cache)
    f._changed(revoked(1, 7))
    await f._refresh_crls(expect_change=True)
    assert client.fetches == follower_module.CRL_RETRIES
    # given up on: the next (periodic) refresh does not retry for it again
    f._changed(revoked(1, 7))
    await f._refresh_crls(expect_change=True)
    assert client.fetches == follower_module.CRL_RETRIES + 1


def test_listed_serials_skips_what_does_not_parse() -> None:
    assert listed_serials([crl(3, 4), b"not a crl"]) == {3, 4}


class Pushed(RevocationFeed):
    """A feed that publishes the sets a test puts in its queue."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[RevocationSet] = asyncio.Queue()

    async def _run(self) -> None:
        while True:
            self._publish(await self.queue.get())


async def fetched(client: Answers, count: int) -> None:
    await until(lambda: client.fetches >= count, f"{count} CRL fetches", timeout=5)


async def test_only_a_newly_revoked_serial_wakes_a_crl_fetch() -> None:
    cache = Cache()
    client = Answers((crl(1, 7),))
    feed = Pushed()
    f = RevocationFollower(feed=feed, cache=cache, client=client)  # type: ignore[arg-type]
    task = asyncio.create_task(f.run())
    try:
        await fetched(client, 1)  # the first fetch, at start
        await feed.queue.put(revoked(1))
        await fetched(client, 2)  # serial 1 is new
        until = NOW + timedelta(hours=1)
        jti = RevocationRecord.for_jti("a-jwt-id", revoked_at=NOW, expires_at=until)
        await feed.queue.put(RevocationSet.of([*revoked(1).records(), jti]))
        await feed.queue.put(RevocationSet.of([jti]))  # serial 1's record expired: no new serial
        await asyncio.sleep(0.3)
        assert client.fetches == 2
        await feed.queue.put(revoked(1, 7))
        await fetched(client, 3)  # serial 7 is new
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
