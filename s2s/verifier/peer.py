"""Verify a TLS peer's SPIFFE identity after OpenSSL accepted its chain.

OpenSSL verified signatures against the context's trust store, which is the *union* of every
bundle we hold. That is not enough for SPIFFE (X509-SVID.md 5: a chain must verify to the bundle
of the peer's own trust domain), so :func:`verify_peer` re-checks the verified chain: its root
belongs to the bundle of the leaf's trust domain, the leaf and its CAs pass the X509-SVID profile,
every certificate is inside its validity window, none is revoked, and the authorizer accepts the
ID. Facts derived from a chain are cached by its DER in a :class:`ChainCache`, so a known chain
costs a few dict lookups; every check shares :data:`DEFAULT_CHAIN_CACHE` unless given its own.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509

from s2s.core.bundle import BundleSet
from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, InvalidSvid, NotAuthorized, Unavailable
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import check_x509_svid, spiffe_id_of
from s2s.core.x509templates import DEFAULT_BACKDATE
from s2s.verifier.crls import ChainIssuer, CrlLookup
from s2s.verifier.metrics import PeerMetrics, default_metrics

__all__ = [
    "DEFAULT_CHAIN_CACHE",
    "ChainCache",
    "PeerRejected",
    "PeerVerifier",
    "classify_ssl_error",
    "verified_chain_der",
    "verify_chain",
    "verify_peer",
]

_CACHE_LIMIT = 4096
_ONE_SECOND = timedelta(seconds=1)
# OpenSSL X509_V_ERR_* codes (x509_vfy.h) -> our reasons.
_VERIFY_CODES = {
    2: "untrusted-root",  # unable to get issuer certificate
    9: "not-yet-valid",
    10: "expired",
    18: "untrusted-root",  # self-signed leaf
    19: "untrusted-root",  # self-signed certificate in chain
    20: "untrusted-root",  # unable to get local issuer certificate
    21: "untrusted-root",  # unable to verify the first certificate
    23: "revoked",
    24: "svid-ca-basic-constraints",  # invalid CA certificate
    26: "svid-leaf-eku",  # unsupported certificate purpose
}


class PeerRejected(NotAuthorized, ssl.SSLCertVerificationError):
    """A TLS peer whose SPIFFE identity was not accepted; ``reason`` says why.

    It is an :class:`ssl.SSLCertVerificationError` too, so asyncio, aiohttp and blocking
    sockets treat it as a failed certificate verification.
    """

    code = "peer_rejected"

    def __init__(self, message: str, *, reason: str, spiffe_id: SpiffeId | None = None) -> None:
        self.reason = reason
        self.spiffe_id = spiffe_id
        self.message = message
        super().__init__(message)
        self.verify_code = 0
        self.verify_message = reason

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


# A rejection is cached as (message, reason) and raised fresh each time.
_Rejection = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _ChainFacts:
    spiffe_id: SpiffeId
    root: x509.Certificate
    serials: tuple[int, ...]  # of every certificate of the chain
    issuers: tuple[ChainIssuer, ...]  # the issuer of each (the root is its own), same order
    issued_at: datetime
    not_before: datetime  # latest NotBefore of the chain
    not_after: datetime  # earliest NotAfter of the chain
    profile_error: _Rejection | None  # reported after the root check (more telling first)


class ChainCache:
    """What the checks derived from each chain (by its DER), and the chain verified in the full
    handshake behind each TLS 1.2 session id. Each map holds at most ``limit`` items and is
    emptied when full: rotation replaces chains wholesale, so a full reset is simplest (a resumed
    session it forgot is refused and the client retries in full). Not locked: dict reads and
    writes are atomic, and a lost insert only costs a recomputation."""

    def __init__(self, limit: int = _CACHE_LIMIT) -> None:
        if limit < 1:
            raise InvalidConfig(f"a chain cache holds at least one chain, not {limit}")
        self.limit = limit
        self._facts: dict[tuple[bytes, ...], _ChainFacts | _Rejection] = {}
        self._sessions: dict[bytes, tuple[bytes, ...]] = {}

    @property
    def chains(self) -> int:
        """How many chains' facts are held."""
        return len(self._facts)

    @property
    def sessions(self) -> int:
        """How many TLS session ids are held."""
        return len(self._sessions)

    def facts(self, chain: tuple[bytes, ...]) -> _ChainFacts | _Rejection:
        """The facts of ``chain`` (derived once, then served from the cache)."""
        facts = self._facts.get(chain)
        if facts is None:
            facts = _derive_facts(chain)
            if len(self._facts) >= self.limit:
                self._facts.clear()
            self._facts[chain] = facts
        return facts

    def remember_session(self, session_id: bytes, chain: tuple[bytes, ...]) -> None:
        if len(self._sessions) >= self.limit:
            self._sessions.clear()
        self._sessions[session_id] = chain

    def session_chain(self, session_id: bytes) -> tuple[bytes, ...] | None:
        """The chain verified when the session ``session_id`` was created, if remembered."""
        return self._sessions.get(session_id)

    def clear(self) -> None:
        self._facts.clear()
        self._sessions.clear()


DEFAULT_CHAIN_CACHE: Final = ChainCache()


def verified_chain_der(ssl_object: Any) -> list[bytes]:
    """The chain OpenSSL verified (leaf first, root last) as DER; empty if there is none."""
    getter = getattr(ssl_object, "get_verified_chain", None)  # public since Python 3.13
    if getter is None:
        getter = ssl_object._sslobj.get_verified_chain  # 3.11/3.12: on the C object
    chain = getter() or []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]


def verify_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
    *,
    bundles: BundleSet,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    now: datetime,
    cache: ChainCache = DEFAULT_CHAIN_CACHE,
) -> SpiffeId:
    """Return the authenticated, authorized SPIFFE ID of the peer of a completed handshake.

    Raises :class:`PeerRejected` naming the reason (see the module docstring).
    """
    chain = verified_chain_der(ssl_object)
    if chain:
        # Only TLS 1.2 sessions can be resumed here (the contexts issue no TLS 1.3 tickets);
        # reading ``.session`` is costly (over 100 µs on TLS 1.3), so skip it otherwise.
        if ssl_object.version() == "TLSv1.2" and (session_id := _session_id(ssl_object)):
            cache.remember_session(session_id, tuple(chain))
    else:
        session_id = _session_id(ssl_object)
        leaf = ssl_object.getpeercert(binary_form=True)
        if leaf is None:
            raise PeerRejected("the peer presented no certificate", reason="no-certificate")
        # A resumed TLS 1.2 session carries no verified chain: use the chain verified in full
        # when OpenSSL created the session, and run every current check on it again.
        known = cache.session_chain(session_id) if session_id else None
        if known is None or known[0] != leaf:
            raise PeerRejected(
                "the session was resumed without a verified chain", reason="resumed-session"
            )
        chain = list(known)
    return verify_chain(
        chain, bundles=bundles, authorize=authorize, revocations=revocations, now=now, cache=cache
    )


def verify_chain(
    chain_der: Sequence[bytes],
    *,
    bundles: BundleSet,
    authorize: Callable[[SpiffeId], bool],
    revocations: RevocationLookup | None = None,
    now: datetime,
    cache: ChainCache = DEFAULT_CHAIN_CACHE,
) -> SpiffeId:
    """:func:`verify_peer` on a chain that OpenSSL already verified (leaf first, root last).

    It checks no signature: never pass a chain a peer merely *presented*.
    """
    facts = cache.facts(tuple(chain_der))
    if isinstance(facts, tuple):
        raise PeerRejected(facts[0], reason=facts[1])
    sid = facts.spiffe_id
    _check_root(facts, bundles)
    if facts.profile_error is not None:
        message, reason = facts.profile_error
        raise PeerRejected(message, reason=reason, spiffe_id=sid)
    if now < facts.not_before:
        raise PeerRejected(f"a certificate of {sid} is not yet valid", reason="not-yet-valid")
    if now > facts.not_after:
        raise PeerRejected(f"a certificate of {sid} has expired", reason="expired")
    if revocations is not None:
        _check_revocation(facts, revocations)
    if not authorize(sid):
        raise PeerRejected(f"{sid} is not authorized", reason="unauthorized", spiffe_id=sid)
    return sid


def _session_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes:
    session = ssl_object.session
    return b"" if session is None else session.id


def classify_ssl_error(exc: ssl.SSLError) -> str:
    """The rejection reason for an error OpenSSL raised while verifying the peer."""
    if isinstance(exc, PeerRejected):
        return exc.reason
    code = getattr(exc, "verify_code", None)
    if isinstance(code, int) and code in _VERIFY_CODES:
        return _VERIFY_CODES[code]
    if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no-certificate"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "untrusted-root"
    return "handshake-failed"


def _derive_facts(chain: tuple[bytes, ...]) -> _ChainFacts | _Rejection:
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return ("the peer's chain does not parse", "svid-malformed")
    if len(certs) < 2:
        return ("the peer's certificate is a trust anchor, not an SVID", "svid-leaf-path")
    try:
        sid = spiffe_id_of(certs[0])
    except InvalidSvid as exc:
        return (f"the peer's SVID is invalid: {exc}", f"svid-{exc.rule}")
    problem: _Rejection | None = None
    try:
        check_x509_svid(certs[:-1])  # the root is trusted by bundle membership, not by profile
    except InvalidSvid as exc:
        problem = (f"the peer's SVID is invalid: {exc}", f"svid-{exc.rule}")
    return _ChainFacts(
        spiffe_id=sid,
        root=certs[-1],
        serials=tuple(c.serial_number for c in certs),
        issuers=tuple(ChainIssuer.of(c) for c in (*certs[1:], certs[-1])),
        # notBefore is backdated by the CA and cut to whole seconds (docs/architecture.md):
        # read as is, an SVID issued just after a SPIFFE ID revocation would be cut off with the
        # old ones. (The CA also revokes each older certificate by serial, which is exact.)
        issued_at=certs[0].not_valid_before_utc + DEFAULT_BACKDATE + _ONE_SECOND,
        not_before=max(c.not_valid_before_utc for c in certs),
        not_after=min(c.not_valid_after_utc for c in certs),
        profile_error=problem,
    )


def _check_root(facts: _ChainFacts, bundles: BundleSet) -> None:
    td = facts.spiffe_id.trust_domain
    bundle = bundles.get(td)
    if bundle is not None and facts.root in bundle.x509_authorities:
        return
    for other in bundles:
        if other.trust_domain != td and facts.root in other.x509_authorities:
            raise PeerRejected(
                f"{facts.spiffe_id} chains to a root of trust domain {other.trust_domain}, "
                f"not of {td}",
                reason="foreign-root",
                spiffe_id=facts.spiffe_id,
            )
    if bundle is None:
        raise PeerRejected(f"no bundle for trust domain {td}", reason="no-bundle")
    raise PeerRejected(
        f"{facts.spiffe_id} chains to a root that is not in the bundle of {td}",
        reason="untrusted-root",
        spiffe_id=facts.spiffe_id,
    )


def _check_revocation(facts: _ChainFacts, revocations: RevocationLookup) -> None:
    try:
        if isinstance(revocations, CrlLookup):  # CRLs are verified against the chain's issuers
            current = revocations.current_for_chain(facts.issuers[:-1])
        else:
            current = revocations.current()
    except Unavailable as exc:  # a stale feed: what is revoked is unknown, so fail closed
        raise PeerRejected(
            f"cannot check whether {facts.spiffe_id} is revoked: {exc}",
            reason="revocations-stale",
            spiffe_id=facts.spiffe_id,
        ) from None
    if not len(current):
        return
    if current.has_serials():
        for index, (serial, issuer) in enumerate(zip(facts.serials, facts.issuers, strict=True)):
            if current.is_serial_revoked(serial, issuer.key):
                which = "leaf" if index == 0 else "CA certificate"
                raise PeerRejected(
                    f"the peer's {which} {serial:x} is revoked",
                    reason="revoked",
                    spiffe_id=facts.spiffe_id,
                )
    if current.is_spiffe_id_revoked(facts.spiffe_id, facts.issued_at):
        raise PeerRejected(
            f"SVIDs of {facts.spiffe_id} issued before its revocation are rejected",
            reason="revoked",
            spiffe_id=facts.spiffe_id,
        )


class PeerVerifier:
    """:func:`verify_peer` bound to a source of bundles, an authorizer, revocations and a clock.

    Counts every acceptance and every rejection (by reason) in ``metrics``.
    """

    def __init__(
        self,
        bundles: Callable[[], BundleSet],
        *,
        authorize: Callable[[SpiffeId], bool],
        revocations: RevocationLookup | None = None,
        clock: Clock | None = None,
        metrics: PeerMetrics | None = None,
        cache: ChainCache = DEFAULT_CHAIN_CACHE,
    ) -> None:
        self._bundles = bundles
        self.authorize = authorize
        self.revocations = revocations
        self._clock: Clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self.cache = cache

    def verify(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
        """The peer's SPIFFE ID, or :class:`PeerRejected` (counted)."""
        return self._counted(verify_peer, ssl_object)

    def verify_chain(self, chain_der: Sequence[bytes]) -> SpiffeId:
        """:meth:`verify` for a chain already verified by OpenSSL (leaf first, root last)."""
        return self._counted(verify_chain, chain_der)

    def _counted(self, check: Callable[..., SpiffeId], peer: Any) -> SpiffeId:
        """``check(peer, ...)`` with this verifier's settings, the outcome counted."""
        try:
            sid = check(
                peer,
                bundles=self._bundles(),
                authorize=self.authorize,
                revocations=self.revocations,
                now=self._clock.now(),
                cache=self.cache,
            )
        except PeerRejected as exc:
            self.metrics.rejected(exc.reason)
            raise
        self.metrics.accepted.inc()
        return sid

    def handshake_failed(self, exc: ssl.SSLError) -> ssl.SSLError:
        """Turn OpenSSL's verification failure into a counted :class:`PeerRejected`.

        Errors that are not about the peer's certificate (our own certificate refused by the
        peer, a protocol mismatch, a reset) are returned unchanged and not counted.
        """
        reason = classify_ssl_error(exc)
        if reason == "handshake-failed":
            return exc
        self.metrics.rejected(reason)
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return PeerRejected(f"the peer's certificate was refused: {detail}", reason=reason)
