"""The key-encryption key (KEK) and the encryption of private keys at rest.

The KEK is a file of exactly 32 random bytes, mode 0600, that the operator provides (``s2s-ca init``
creates one). Private keys are serialized as PKCS#8 DER and sealed with AES-256-GCM; the authority
id is the associated data, so a sealed key moved to another authority's record does not open.
Nothing here logs or prints key material; ``repr`` of a KEK shows only its path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from s2s.core.errors import Conflict, InvalidConfig

__all__ = ["KEK_SIZE", "SEALED_KEY_VERSION", "KeyEncryptionKey", "SigningKey"]

KEK_SIZE = 32
SEALED_KEY_VERSION = b"\x01"
_NONCE_SIZE = 12

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyEncryptionKey:
    """AES-256-GCM key that seals the CA's private keys in the store.

    Build it with :meth:`create` (new file, 0600, refuses to overwrite) or :meth:`load` (refuses a
    file readable or writable by group/other, or of the wrong size).
    """

    __slots__ = ("_aead", "_entropy", "path")

    def __init__(
        self,
        key: bytes,
        *,
        path: Path | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(key) != KEK_SIZE:
            raise InvalidConfig(f"a key-encryption key is exactly {KEK_SIZE} bytes")
        self._aead = AESGCM(key)
        self._entropy = entropy
        self.path = path

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(path={str(self.path)!r})"

    @classmethod
    def create(
        cls, path: Path, *, entropy: Callable[[int], bytes] = os.urandom
    ) -> KeyEncryptionKey:
        """Write a new KEK file (0600, ``O_EXCL``); :class:`Conflict` if it already exists."""
        key = entropy(KEK_SIZE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError as exc:
            raise Conflict(f"{path} already exists; refusing to overwrite a key file") from exc
        except OSError as exc:
            raise InvalidConfig(f"cannot create key file {path}: {exc.strerror}") from exc
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never widen
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(key, path=path, entropy=entropy)

    @classmethod
    def load(cls, path: Path, *, entropy: Callable[[int], bytes] = os.urandom) -> KeyEncryptionKey:
        """Read a KEK file, refusing group/other permissions, symlinks and a wrong size."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise InvalidConfig(f"key file {path} does not exist; run 's2s-ca init'") from exc
        except OSError as exc:
            raise InvalidConfig(f"cannot open key file {path}: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidConfig(f"key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise InvalidConfig(
                    f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                    "it must not be readable or writable by group or others (chmod 600)"
                )
            data = os.read(fd, KEK_SIZE + 1)
        finally:
            os.close(fd)
        if len(data) != KEK_SIZE:
            raise InvalidConfig(f"key file {path} must hold exactly {KEK_SIZE} bytes")
        return cls(data, path=path, entropy=entropy)

    def seal_private_key(self, key: SigningKey, *, authority_id: str) -> bytes:
        """PKCS#8 DER of ``key`` sealed under the KEK: ``version || nonce || ciphertext+tag``."""
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = self._entropy(_NONCE_SIZE)
        aad = SEALED_KEY_VERSION + authority_id.encode("utf-8")
        return SEALED_KEY_VERSION + nonce + self._aead.encrypt(nonce, der, aad)

    def open_private_key(self, sealed: bytes, *, authority_id: str) -> SigningKey:
        """Reverse :meth:`seal_private_key`; :class:`InvalidConfig` if it does not open.

        A failure means the wrong KEK, a record copied between authorities, or tampering.
        """
        if len(sealed) < 1 + _NONCE_SIZE + 16 or sealed[:1] != SEALED_KEY_VERSION:
            raise InvalidConfig(f"sealed key of authority {authority_id} is malformed")
        nonce = sealed[1 : 1 + _NONCE_SIZE]
        aad = SEALED_KEY_VERSION + authority_id.encode("utf-8")
        try:
            der = self._aead.decrypt(nonce, sealed[1 + _NONCE_SIZE :], aad)
        except InvalidTag as exc:
            raise InvalidConfig(
                f"cannot decrypt the key of authority {authority_id}: wrong key-encryption key "
                "for this data dir, or the store was tampered with"
            ) from exc
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidConfig(f"authority {authority_id} holds an unsupported key type")
        return key
