"""PemFileX509Source: SVID files on disk, reloaded on change (atomic writes, symlink swaps), and
its synchronous facade."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from verifier_support import Updates, serial_is, wait_for, write_atomically, write_svid

from s2s.core.errors import InvalidConfig
from s2s.testing import TestAuthority
from s2s.verifier.source_pem import PemFileX509Source
from s2s.verifier.sync import open_pem_source
from s2s.verifier.x509context import X509SourceLike

ME = "spiffe://example.org/me"


@pytest.fixture
def ca() -> TestAuthority:
    return TestAuthority("example.org")


async def test_pem_source_reloads_on_rotation_and_keeps_the_last_good_files(
    tmp_path: Path, ca: TestAuthority
) -> None:
    first = ca.issue_x509_svid(ME)
    paths = write_svid(tmp_path, first, ca.bundle_pem())
    async with PemFileX509Source(*paths, poll_interval=0.02) as source:
        assert source.current().default_svid.serial == first.serial
        assert source.current().default_svid.private_key is not None
        updates = Updates()
        source.subscribe(updates)
        second = ca.issue_x509_svid(ME)
        write_svid(tmp_path, second, ca.bundle_pem())
        await updates.wait(serial_is(second.serial))
        # Half-written rotation: a new chain with the old key. Kept out, reported.
        third = ca.issue_x509_svid(ME)
        write_atomically(Path(paths[0]), third.chain_pem())
        await wait_for(lambda: source.error is not None)
        assert "is not the key of" in (source.error or "")
        assert source.current().default_svid.serial == second.serial
        write_atomically(Path(paths[1]), third.key_pem())  # the key arrives: now it loads
        await updates.wait(serial_is(third.serial))
        assert source.error is None
        write_atomically(Path(paths[2]), b"garbage")
        await wait_for(lambda: source.error is not None)
        assert source.current().default_svid.serial == third.serial


def test_pem_source_follows_a_symlink_swap_as_kubernetes_secrets_do(
    tmp_path: Path, ca: TestAuthority
) -> None:
    first, second = ca.issue_x509_svid(ME), ca.issue_x509_svid(ME)
    for name, svid in (("v1", first), ("v2", second)):
        (tmp_path / name).mkdir()
        write_svid(tmp_path / name, svid, ca.bundle_pem())
    (tmp_path / "..data").symlink_to("v1")
    paths = [str(tmp_path / "..data" / n) for n in ("svid.pem", "svid.key", "bundle.pem")]
    source = PemFileX509Source(*paths)
    assert source.current().default_svid.serial == first.serial
    assert source.reload() is False
    (tmp_path / "..data.tmp").symlink_to("v2")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")  # one atomic swap of all three
    assert source.reload() is True
    assert source.current().default_svid.serial == second.serial


def test_pem_source_accepts_a_spiffe_bundle_and_refuses_bad_files(
    tmp_path: Path, ca: TestAuthority
) -> None:
    svid = ca.issue_x509_svid(ME)
    paths = write_svid(tmp_path, svid, ca.bundle().encode())
    source = PemFileX509Source(*paths)
    assert source.current().bundles.get(ca.trust_domain) == ca.bundle()
    with pytest.raises(InvalidConfig, match="cannot stat"):
        PemFileX509Source(paths[0], paths[1], str(tmp_path / "missing.pem"))
    write_atomically(Path(paths[0]), ca.issue_x509_svid(ME, two_uri_sans=True).chain_pem())
    with pytest.raises(InvalidConfig, match="not an X509-SVID"):
        PemFileX509Source(*paths)
    other = ca.issue_x509_svid(ME)
    write_svid(tmp_path, other, b"")
    with pytest.raises(InvalidConfig):
        PemFileX509Source(*paths)


def test_sync_pem_source_from_threads(tmp_path: Path, ca: TestAuthority) -> None:
    first = ca.issue_x509_svid(ME)
    paths = write_svid(tmp_path, first, ca.bundle_pem())
    with open_pem_source(*paths, poll_interval=0.02) as source:
        assert isinstance(source, X509SourceLike)
        updates = Updates()
        source.subscribe(updates)
        second = ca.issue_x509_svid(ME)
        write_svid(tmp_path, second, ca.bundle_pem())
        updates.wait_sync(serial_is(second.serial))
        seen: list[int] = []
        readers = [
            threading.Thread(target=lambda: seen.append(source.current().default_svid.serial))
            for _ in range(8)
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        assert seen == [second.serial] * 8
    source.close()  # idempotent
