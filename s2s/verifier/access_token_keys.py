"""The authorization server's signing keys, for local access-token validation (RFC 9068).

A :class:`SigningKeySet` is one immutable snapshot of the AS's JWKS (RFC 7517): keys chosen by
``kid`` only, each bound to the algorithms its type allows (and to its ``alg`` when the JWKS names
one), never taken from a token. Providers (:class:`AccessTokenKeys`) hand out the current
snapshot and are swapped whole: :class:`StaticJwks` holds a fixed set (tests, keys configured out
of band); :class:`~s2s.verifier.access_token_fetch.JwksFetcher` follows the AS's ``jwks_uri``.

>>> keys = SigningKeySet.from_jwks({"keys": []})
>>> keys.get("k1") is None
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from s2s.core.errors import InvalidBundle, InvalidToken
from s2s.core.jwk import check_jwt_key, public_key_from_jwk
from s2s.core.jwtsvid import algorithms_for_key

__all__ = ["AccessTokenKeys", "SigningKey", "SigningKeySet", "StaticJwks"]

# RFC 7518 6.2.2 / 6.3.2: a public JWK carrying any of these holds private key material.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SIGNATURE_KTY = frozenset({"EC", "RSA"})  # RFC 9068 tokens are RS*/PS*/ES* here, as JWT-SVIDs


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One verification key of the authorization server."""

    kid: str
    public_key: PublicKeyTypes = field(compare=False)
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class SigningKeySet:
    """An immutable snapshot of the AS's verification keys, by ``kid``."""

    keys: Mapping[str, SigningKey]

    @classmethod
    def of(cls, keys: Iterable[SigningKey]) -> SigningKeySet:
        table: dict[str, SigningKey] = {}
        for key in keys:
            if key.kid in table:
                raise InvalidBundle(f"the key id {key.kid[:64]!r} appears twice")
            table[key.kid] = key
        return cls(MappingProxyType(table))

    @classmethod
    def from_keys(cls, keys: Mapping[str, PublicKeyTypes]) -> SigningKeySet:
        """``{kid: public key}``, each bound to the algorithms of its type."""
        return cls.of(SigningKey(kid, k, _algorithms(k, kid)) for kid, k in keys.items())

    @classmethod
    def from_jwks(cls, document: object) -> SigningKeySet:
        """The signature keys of a JWK Set; :class:`InvalidBundle` if it is malformed.

        Keys for other uses (``use`` other than ``sig``, ``key_ops`` without ``verify``), of
        other types, or without a ``kid`` are left out (a key is only ever chosen by ``kid``).
        A set with private key members or the same ``kid`` twice is refused whole.
        """
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise InvalidBundle("a JWK Set is a JSON object with a 'keys' list")
        chosen: list[SigningKey] = []
        for index, entry in enumerate(document["keys"]):
            where = f"keys[{index}]"
            if not isinstance(entry, Mapping):
                raise InvalidBundle(f"{where} is not a JSON object")
            if _PRIVATE_MEMBERS.intersection(entry):
                raise InvalidBundle(f"{where} holds private key material")
            key = _signing_key(entry, where)
            if key is not None:
                chosen.append(key)
        return cls.of(chosen)

    def get(self, kid: str) -> SigningKey | None:
        return self.keys.get(kid)

    def __len__(self) -> int:
        return len(self.keys)


def _signing_key(entry: Mapping[str, Any], where: str) -> SigningKey | None:
    use, ops, kid = entry.get("use"), entry.get("key_ops"), entry.get("kid")
    if use is not None and use != "sig":
        return None
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if entry.get("kty") not in _SIGNATURE_KTY or not isinstance(kid, str) or not kid:
        return None
    public_key = public_key_from_jwk(entry, where)
    check_jwt_key(public_key, where)
    allowed = _algorithms(public_key, kid)
    alg = entry.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in allowed:
            raise InvalidBundle(f"{where}: alg {str(alg)[:20]!r} does not fit the key")
        allowed = frozenset({alg})
    return SigningKey(kid, public_key, allowed)


def _algorithms(key: PublicKeyTypes, kid: str) -> frozenset[str]:
    try:
        return algorithms_for_key(key)
    except InvalidToken as exc:
        raise InvalidBundle(f"key {kid[:64]!r}: {exc}") from None


class AccessTokenKeys(Protocol):
    """What the validator needs: the current key set, and a way to ask for a fresher one."""

    def current(self) -> SigningKeySet:
        """The current set; :class:`Unavailable` when there is none yet."""
        ...

    async def refresh(self) -> SigningKeySet:
        """A fresh set if one may be fetched now (rate limited), else the current one."""
        ...


class StaticJwks:
    """A fixed key set (tests, keys configured out of band); ``replace`` swaps it whole."""

    def __init__(self, keys: SigningKeySet) -> None:
        self._keys = keys

    def current(self) -> SigningKeySet:
        return self._keys

    async def refresh(self) -> SigningKeySet:
        return self._keys

    def replace(self, keys: SigningKeySet) -> None:
        self._keys = keys
