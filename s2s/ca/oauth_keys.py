"""The token service's own signing keys (ES256), apart from the JWT-SVID keys.

One key set per trust domain, kept in the store as one document (state key ``oauth/keys``) that
replicas update by compare-and-swap; each private key sealed with the KEK like an authority's.
Rotation follows the JWT-SVID keys' schedule: a key is prepared at half its life and published at
once (verifiers fetch it before any token uses it), it becomes the signing key when a sixth of the
current key's life remains, and an old key stays published until its ``not_after``. No token
outlives the key that signed it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from s2s.ca.keys import KeyEncryptionKey
from s2s.core.b64 import b64url_encode
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidConfig, Unavailable
from s2s.core.oauth_metadata import ACCESS_TOKEN_ALGORITHM, signing_jwks
from s2s.log import F
from s2s.store.base import Store

__all__ = ["KEYS_STATE", "AccessTokenSigner", "TokenKeyRing"]

log = logging.getLogger(__name__)

KEYS_STATE: Final = "oauth/keys"
_ES256 = ec.ECDSA(hashes.SHA256())
_SEAL_PREFIX: Final = "oauth:"  # the KEK's associated data: a sealed key opens only as this kid


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    state: str  # prepared | active | old
    not_before: datetime
    not_after: datetime
    public_der: bytes
    sealed: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "state": self.state,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "public": base64.b64encode(self.public_der).decode(),
            "sealed": base64.b64encode(self.sealed).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> _Key:
        return cls(
            kid=doc["kid"],
            state=doc["state"],
            not_before=datetime.fromisoformat(doc["not_before"]),
            not_after=datetime.fromisoformat(doc["not_after"]),
            public_der=base64.b64decode(doc["public"]),
            sealed=base64.b64decode(doc["sealed"]),
        )


@dataclass(frozen=True, slots=True)
class AccessTokenSigner:
    """The active key: signs compact JWS with header ``typ: at+jwt`` (RFC 9068 section 2.1)."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    not_after: datetime
    _header: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        header = {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self.kid, "typ": "at+jwt"}
        object.__setattr__(self, "_header", b64url_encode(_compact(header)))

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = f"{self._header}.{b64url_encode(_compact(claims))}"
        r, s = decode_dss_signature(self.private_key.sign(signing_input.encode("ascii"), _ES256))
        return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class TokenKeyRing:
    """The token service's keys: ``signer`` (the active key) and ``jwks()`` (every published key).
    ``await start()`` once, then :meth:`rotate_if_due` on the authority loop's schedule."""

    def __init__(
        self,
        *,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        ttl: timedelta,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._store = store
        self._kek = kek
        self._clock = clock
        self._ttl = ttl
        self._entropy = entropy
        self._raw: str | None = None
        self._signer: AccessTokenSigner | None = None
        self._jwks = b'{"keys":[]}'
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}

    async def start(self) -> None:
        await self.rotate_if_due()

    @property
    def signer(self) -> AccessTokenSigner:
        if self._signer is None or self._signer.not_after <= utc(self._clock.now()):
            raise Unavailable("the token service has no current signing key yet")
        return self._signer

    def jwks(self) -> bytes:
        return self._jwks

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._public.get(kid)

    async def rotate_if_due(self) -> bool:
        """Prepare, activate and drop keys that are due (compare-and-swap with other replicas);
        reload the published set. True if this call changed the stored set."""
        for _ in range(5):
            raw = await self._store.get_state(KEYS_STATE)
            keys = _decode(raw)
            now = utc(self._clock.now())
            updated = self._rotated(keys, now)
            if updated == keys:
                self._load(raw, keys)
                return False
            new_raw = json.dumps({"keys": [k.to_json() for k in updated]}, sort_keys=True)
            try:
                await self._store.cas_state(KEYS_STATE, raw, new_raw)
            except Conflict:
                continue  # another replica rotated meanwhile: read again
            self._load(new_raw, updated)
            log.info("oauth.keys_rotated", extra={F.COUNT: len(updated)})
            return True
        raise Unavailable("the token service keys changed too often to rotate; retrying later")

    def _rotated(self, keys: list[_Key], now: datetime) -> list[_Key]:
        keys = [k for k in keys if k.not_after > now]  # expired: no token of theirs is valid
        active = [k for k in keys if k.state == "active"]
        prepared = [k for k in keys if k.state == "prepared"]
        current = active[-1] if active else None
        if current is not None:
            life = current.not_after - current.not_before
            if now < current.not_after - life / 6:
                if prepared or now < current.not_before + life / 2:
                    return keys
                return [*keys, self._new_key("prepared", now)]
        # no usable key, or time to switch: the prepared key (or a new one) becomes active
        nxt = prepared[0] if prepared else self._new_key("prepared", now)
        out = [replace(k, state="old") if k.state == "active" else k for k in keys]
        out = [k for k in out if k.kid != nxt.kid]
        return [*out, replace(nxt, state="active")]

    def _new_key(self, state: str, now: datetime) -> _Key:
        key = ec.generate_private_key(ec.SECP256R1())
        kid = b64url_encode(self._entropy(18))
        return _Key(
            kid=kid,
            state=state,
            not_before=now,
            not_after=now + self._ttl,
            public_der=key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            sealed=self._kek.seal_private_key(key, authority_id=_SEAL_PREFIX + kid),
        )

    def _load(self, raw: str | None, keys: list[_Key]) -> None:
        if raw == self._raw and self._signer is not None:
            return
        public: dict[str, ec.EllipticCurvePublicKey] = {}
        signer = None
        for k in keys:
            loaded = serialization.load_der_public_key(k.public_der)
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise InvalidConfig(f"token service key {k.kid} is not an EC key")
            public[k.kid] = loaded
            if k.state == "active":
                private = self._kek.open_private_key(k.sealed, authority_id=_SEAL_PREFIX + k.kid)
                if not isinstance(private, ec.EllipticCurvePrivateKey):
                    raise InvalidConfig(f"token service key {k.kid} is not an EC key")
                signer = AccessTokenSigner(kid=k.kid, private_key=private, not_after=k.not_after)
        self._public = public
        self._jwks = signing_jwks(public.items())
        self._signer = signer
        self._raw = raw

    def next_check(self) -> datetime:
        """When :meth:`rotate_if_due` may have work next (the authority loop waits at most so)."""
        signer = self._signer
        now = utc(self._clock.now())
        if signer is None:
            return now
        start = signer.not_after - self._ttl
        times = [start + self._ttl / 2, signer.not_after - self._ttl / 6]
        future = [t for t in times if t > now]
        return min(future) if future else now


def _decode(raw: str | None) -> list[_Key]:
    if raw is None:
        return []
    try:
        return [_Key.from_json(k) for k in json.loads(raw)["keys"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidConfig(f"the stored token service keys are malformed: {exc}") from exc


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
