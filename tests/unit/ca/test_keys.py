"""The key-encryption key file and sealed private keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.keys import KEK_SIZE, KeyEncryptionKey
from s2s.core.errors import Conflict, InvalidConfig


def test_create_writes_32_bytes_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    KeyEncryptionKey.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == KEK_SIZE


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    KeyEncryptionKey.create(path)
    before = path.read_bytes()
    with pytest.raises(Conflict, match="already exists"):
        KeyEncryptionKey.create(path)
    assert path.read_bytes() == before


def test_seal_then_open_round_trips(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.create(tmp_path / "kek.bin")
    key = ec.generate_private_key(ec.SECP256R1())
    sealed = kek.seal_private_key(key, authority_id="a1")
    reopened = KeyEncryptionKey.load(tmp_path / "kek.bin").open_private_key(
        sealed, authority_id="a1"
    )
    assert reopened.private_numbers() == key.private_numbers()  # type: ignore[union-attr]


def test_sealed_key_is_not_plaintext(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.create(tmp_path / "kek.bin")
    key = ec.generate_private_key(ec.SECP256R1())
    sealed = kek.seal_private_key(key, authority_id="a1")
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert b"PRIVATE KEY" not in sealed
    assert secret not in sealed
    assert kek.seal_private_key(key, authority_id="a1") != sealed  # fresh nonce each time


def test_open_with_other_authority_id_fails(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.create(tmp_path / "kek.bin")
    sealed = kek.seal_private_key(ec.generate_private_key(ec.SECP256R1()), authority_id="a1")
    with pytest.raises(InvalidConfig, match="cannot decrypt"):
        kek.open_private_key(sealed, authority_id="a2")


def test_open_with_other_kek_fails(tmp_path: Path) -> None:
    sealed = KeyEncryptionKey.create(tmp_path / "one").seal_private_key(
        ec.generate_private_key(ec.SECP256R1()), authority_id="a1"
    )
    with pytest.raises(InvalidConfig, match="wrong key-encryption key"):
        KeyEncryptionKey.create(tmp_path / "two").open_private_key(sealed, authority_id="a1")


def test_open_tampered_fails(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.create(tmp_path / "kek.bin")
    sealed = bytearray(
        kek.seal_private_key(ec.generate_private_key(ec.SECP256R1()), authority_id="a")
    )
    sealed[20] ^= 1
    with pytest.raises(InvalidConfig):
        kek.open_private_key(bytes(sealed), authority_id="a")
    with pytest.raises(InvalidConfig, match="malformed"):
        kek.open_private_key(b"\x01short", authority_id="a")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_load_refuses_group_or_other_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.bin"
    KeyEncryptionKey.create(path)
    os.chmod(path, mode)
    with pytest.raises(InvalidConfig, match="chmod 600"):
        KeyEncryptionKey.load(path)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_refuses_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "kek.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"k" * size)
    os.close(fd)
    with pytest.raises(InvalidConfig, match="exactly 32 bytes"):
        KeyEncryptionKey.load(path)


def test_load_refuses_missing_file_and_symlink(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="does not exist"):
        KeyEncryptionKey.load(tmp_path / "nope")
    real = tmp_path / "real"
    KeyEncryptionKey.create(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InvalidConfig):
        KeyEncryptionKey.load(link)


def test_repr_shows_no_key(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    kek = KeyEncryptionKey.create(path)
    raw = path.read_bytes()
    assert raw.hex() not in repr(kek)
    assert "kek.bin" in repr(kek)
