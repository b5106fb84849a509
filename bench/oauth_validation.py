"""Local access-token validation (RFC 9068), in-process, beside a raw ES256 verify in the same run.

Validations per CPU-second on one core (pinned to CPU 1 when it exists; timed with the thread's
CPU clock, so other processes on a shared machine do not count):

* ``AccessTokenValidator`` uncached (``cache_size=0``: header, claims, key by kid, signature,
  revocation lookups) next to one raw ``cryptography`` ES256 verify of the same token;
* cached (a hit: two snapshot identity checks and a dict lookup) next to uncached;
* a cached certificate-bound token with its client certificate (the cnf ``x5t#S256`` check runs
  on every call: one SHA-256 of the DER certificate, as the middleware passes it, and a
  constant-time compare) next to a
  cached bearer token;
* PyJWT ``decode`` of the same token (signature, aud, iss, exp) next to the raw verify, as a
  reference point for what a generic JOSE library costs.

The raw verify, the uncached validation and PyJWT are measured in alternating rounds (medians),
so that a noisy stretch of the shared machine does not fall on one of them only.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from bench._harness import Figure, pinned, time_per_op
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.testing import TestAuthority
from s2s.testing_oauth import AUDIENCE, ISSUER, TestTokenIssuer
from s2s.verifier.access_token import AccessTokenValidator, certificate_thumbprint


def _per_cpu_s(fn: Callable[[], object], min_time: float) -> float:
    return 1 / time_per_op(fn, min_time=min_time, timer=time.thread_time)


def _interleaved(fns: list[Callable[[], object]], *, min_time: float, rounds: int) -> list[float]:
    """Rates per CPU-second of ``fns``, measured in alternating rounds (medians): a noisy
    stretch of a shared machine hits each of them alike, so their ratios hold."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, samples, strict=True):
            out.append(_per_cpu_s(fn, min_time / 3))
    return [statistics.median(out) for out in samples]


def _revocations() -> StaticRevocations:
    """A realistic, non-empty set: 1,000 revoked jtis (lookups are O(1) either way)."""
    now = dt.datetime.now(dt.UTC)
    records = [
        RevocationRecord.for_jti(
            f"revoked-{i}", revoked_at=now, expires_at=now + dt.timedelta(hours=1)
        )
        for i in range(1000)
    ]
    return StaticRevocations(RevocationSet.of(records))


def run(quick: bool) -> list[Figure]:
    min_time = 0.05 if quick else 0.3
    issuer = TestTokenIssuer()
    ca = TestAuthority("example.org")
    leaf = ca.issue_x509_svid("spiffe://example.org/ns/shop/sa/checkout").leaf
    cert = leaf.public_bytes(Encoding.DER)  # as the aiohttp middleware reads it from the TLS object
    token = issuer.mint()
    bound = issuer.mint(thumbprint=certificate_thumbprint(cert))
    revocations = _revocations()

    def validator(cache_size: int) -> AccessTokenValidator:
        return AccessTokenValidator(
            issuer.key_set(),
            issuer=ISSUER,
            audience=AUDIENCE,
            revocations=revocations,
            cache_size=cache_size,
        )

    uncached, cached = validator(0), validator(10_000)
    cached.validate(token)
    cached.validate(bound, peer_certificate=cert)

    head, body, sig = token.split(".")
    signing_input = f"{head}.{body}".encode()
    raw = jwt.utils.base64url_decode(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = issuer.key.public_key()
    ecdsa = ec.ECDSA(hashes.SHA256())
    with pinned(1):
        raw_rate, uncached_rate, pyjwt_rate = _interleaved(
            [
                lambda: public.verify(der, signing_input, ecdsa),
                lambda: uncached.validate(token),
                lambda: jwt.decode(
                    token, public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
                ),
            ],
            min_time=min_time,
            rounds=5 if quick else 9,
        )
        cached_rate = _per_cpu_s(lambda: cached.validate(token), min_time)
        bound_rate = _per_cpu_s(lambda: cached.validate(bound, peer_certificate=cert), min_time)
    assert uncached.cache_hits == 0
    assert cached.cache_hits > 0
    raw_name = "raw cryptography ES256 verify"
    return [
        Figure("access token validate, uncached", uncached_rate, "ops/s", raw_name, raw_rate),
        Figure("PyJWT decode (sig+aud+iss+exp) alone", pyjwt_rate, "ops/s", raw_name, raw_rate),
        Figure("access token validate, cached hit", cached_rate, "ops/s",
               "access token validate, uncached", uncached_rate),
        Figure("cert-bound token, cached hit + cnf check", bound_rate, "ops/s",
               "access token validate, cached hit", cached_rate),
    ]  # fmt: skip
