"""Helpers for the JWT-SVID validator tests: hand-made tokens and a validator harness."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from prometheus_client import CollectorRegistry

from s2s.core.bundle import BundleSet
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidToken, Unavailable
from s2s.core.revocation import RevocationKind, RevocationRecord, RevocationSet
from s2s.testing import TestAuthority
from s2s.verifier.jwt import (
    JwtMetrics,
    JwtValidator,
)

AUD = "spiffe://example.org/api"
WORKLOAD = "spiffe://example.org/billing"
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(header: dict[str, Any], claims: dict[str, Any] | bytes, key: Any, alg: str) -> str:
    """A compact JWS made by hand, so any header/key/algorithm mismatch can be built."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}".encode()
    digest = _HASHES[alg[2:]]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        sig = key.sign(signing_input, pss, digest)
    else:
        sig = key.sign(signing_input, padding.PKCS1v15(), digest)
    return f"{signing_input.decode()}.{b64(sig)}"


class Harness:
    """A validator over two trust domains; tests swap ``bundles`` and ``revocations`` whole."""

    def __init__(self, clock: FakeClock, authority: TestAuthority) -> None:
        self.clock = clock
        self.ca = authority
        self.other = TestAuthority("other.org", clock=clock)
        self.bundles = BundleSet.of(authority.bundle(), self.other.bundle())
        self.revocations = RevocationSet.EMPTY
        self.revocations_stale = False
        self.metrics = JwtMetrics(CollectorRegistry())
        self.validator = JwtValidator(
            Lookup(lambda: self.bundles),
            AUD,
            revocations=Lookup(self._current_revocations),
            clock=clock,
            metrics=self.metrics,
        )

    def _current_revocations(self) -> RevocationSet:
        if self.revocations_stale:
            raise Unavailable("the revocation feed has not confirmed its set for 40 s")
        return self.revocations

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(self.clock.now().timestamp())
        return {"sub": WORKLOAD, "aud": AUD, "exp": now + 300, "iat": now, **extra}

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "ES256", "kid": self.ca.jwt_kid, "typ": "JWT", **extra}

    def reject(self, token: Any, reason: str) -> InvalidToken:
        """Assert the validator rejects ``token`` for ``reason`` and counts it."""
        before = self.metrics.rejection_count(reason)
        with pytest.raises(InvalidToken) as info:
            self.validator.validate(token)
        assert info.value.reason == reason, str(info.value)
        assert self.metrics.rejection_count(reason) == before + 1
        return info.value


class Lookup:
    """A real, tiny BundleLookup / RevocationLookup: whatever the harness holds now."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self.current = get


def revocation_record(
    h: Harness, kind: RevocationKind, value: str, at: dt.datetime | None = None
) -> RevocationRecord:
    revoked_at = at if at is not None else h.clock.now()
    return RevocationRecord(kind, value, revoked_at, revoked_at + dt.timedelta(hours=1))
