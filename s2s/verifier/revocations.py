"""Revocation inputs for the verifier: anything with ``current() -> RevocationSet``.

:class:`InMemoryRevocations` holds a set its owner replaces. :class:`CrlFileRevocations` follows
a CRL file (PEM with one or more CRLs, or one DER CRL): it is re-read when its size, mtime or
inode changes, each CRL's signature must verify with a trusted CA certificate whose subject is the
CRL's issuer, and a file that stops parsing or verifying keeps the last good set.

CRLs are only trusted while current (RFC 5280 6.3.3): once the earliest ``nextUpdate`` of the
CRLs a lookup holds has passed, plus a small grace (:data:`DEFAULT_CRL_GRACE`), its ``current()``
raises :class:`~s2s.verifier.feeds.RevocationsStale`, as a stale feed does, and the peer check and
the JWT validator reject with reason ``revocations-stale`` until a newer CRL arrives
(:class:`CrlFreshness`, shared with the Workload API source's lookup).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, InvalidRequest, InvalidSvid
from s2s.core.revocation import (
    RevocationKind,
    RevocationRecord,
    RevocationSet,
    StaticRevocations,
)
from s2s.core.x509svid import check_ca_certificate
from s2s.log import F
from s2s.verifier.feeds import RevocationsStale

__all__ = [
    "DEFAULT_CRL_GRACE",
    "CrlFileRevocations",
    "CrlFreshness",
    "CrlSet",
    "InMemoryRevocations",
    "crl_issuers",
    "load_crl_set",
    "parse_crls",
    "revocation_set_from_crls",
]

log = logging.getLogger(__name__)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_MAX_CRL_BYTES = 16 * 1024 * 1024
# Seconds a CRL is still used past its nextUpdate: absorbs clock skew and a refresh that is a
# little late, not an agent or publisher that stopped (the CA rebuilds at half the validity).
DEFAULT_CRL_GRACE = 300.0


class InMemoryRevocations(StaticRevocations):
    """A revocation set replaced whole by its owner (:meth:`replace`); readers need no lock."""

    __slots__ = ("_lock",)

    def __init__(self, initial: RevocationSet | None = None) -> None:
        super().__init__(initial)
        self._lock = threading.Lock()

    def add(self, *records: RevocationRecord) -> RevocationSet:
        """Add records (a new set with a bumped version) and return it."""
        with self._lock:
            old = self.current()
            new = RevocationSet.of((*old.records(), *records), version=old.version + 1)
            self.replace(new)
            return new


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """One DER CRL, or every CRL in a PEM file; InvalidRequest if nothing parses."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            blocks = data.split(b"-----END X509 CRL-----")[:-1]
            return [x509.load_pem_x509_crl(b + b"-----END X509 CRL-----\n") for b in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise InvalidRequest(f"not a CRL (PEM or DER): {exc}") from exc


def crl_issuers(data: bytes, trusted: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """``trusted`` plus the CA certificates in a PEM CRL file that a trusted one issued.

    A CA with several intermediates can publish one file: each CRL next to the intermediate that
    signed it. An intermediate counts only if a trusted certificate directly signed it and it may
    sign (cA=true, keyCertSign); it need not be one of ours.
    """
    anchors = list(trusted)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return anchors
    try:
        extra = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidRequest(f"a certificate in the CRL file does not parse: {exc}") from exc
    accepted = list(anchors)
    for cert in extra:
        if any(_issued_by(cert, anchor) for anchor in anchors):
            try:
                check_ca_certificate(cert)
            except InvalidSvid as exc:
                raise InvalidRequest(f"a certificate in the CRL file cannot sign: {exc}") from exc
            accepted.append(cert)
    return accepted


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def revocation_set_from_crls(
    crls: Iterable[x509.CertificateRevocationList],
    trusted: Iterable[x509.Certificate],
    *,
    version: int = 0,
) -> RevocationSet:
    """The serials revoked by ``crls``, each CRL checked against a trusted issuer's signature."""
    issuers = list(trusted)
    records: list[RevocationRecord] = []
    for crl in crls:
        _check_signature(crl, issuers)
        expires = crl.next_update_utc or _FAR_FUTURE
        for entry in crl:
            records.append(
                RevocationRecord(
                    kind=RevocationKind.SERIAL,
                    value=f"{entry.serial_number:x}",
                    revoked_at=entry.revocation_date_utc,
                    expires_at=expires,
                    reason="crl",
                )
            )
    return RevocationSet.of(records, version=version)


def _check_signature(crl: x509.CertificateRevocationList, issuers: list[x509.Certificate]) -> None:
    for ca in issuers:
        if ca.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return
        except (InvalidSignature, TypeError, ValueError):
            continue
    raise InvalidRequest(
        f"the CRL of {crl.issuer.rfc4514_string()} is not signed by a trusted CA certificate"
    )


@dataclass(frozen=True, slots=True)
class CrlSet:
    """Verified CRLs reduced to what a lookup needs: the serials they revoke and when they stop
    being current (the earliest ``nextUpdate``; ``this_update`` is the oldest ``thisUpdate``)."""

    revocations: RevocationSet
    this_update: datetime
    next_update: datetime


def load_crl_set(
    crls: Iterable[x509.CertificateRevocationList],
    trusted: Iterable[x509.Certificate],
    *,
    version: int = 0,
) -> CrlSet:
    """:func:`revocation_set_from_crls` plus the currency window; InvalidRequest when there is
    no CRL, or a CRL has no ``nextUpdate`` (RFC 5280 5.1.2.5 requires it: without it nobody can
    tell that the CRL is out of date)."""
    crls = list(crls)
    if not crls:
        raise InvalidRequest("no CRL found")
    next_updates = []
    for crl in crls:
        if crl.next_update_utc is None:
            raise InvalidRequest(
                f"the CRL of {crl.issuer.rfc4514_string()} has no nextUpdate, so its currency "
                "cannot be checked (RFC 5280 5.1.2.5)"
            )
        next_updates.append(crl.next_update_utc)
    revocations = revocation_set_from_crls(crls, trusted, version=version)
    return CrlSet(
        revocations,
        this_update=min(crl.last_update_utc for crl in crls),
        next_update=min(next_updates),
    )


class CrlFreshness:
    """Hands out a :class:`CrlSet`'s revocations only while it is current (RFC 5280 6.3.3).

    Past ``next_update + grace`` :meth:`check` raises :class:`RevocationsStale` (``age``: seconds
    since the oldest ``thisUpdate``), logging ``revocations.crl_stale`` once per stale spell and
    ``revocations.crl_fresh`` when a current set is checked again.
    """

    def __init__(self, name: str, *, clock: Clock | None = None, grace: float = DEFAULT_CRL_GRACE):
        if not grace >= 0:
            raise InvalidConfig("the CRL grace must be zero or a positive number of seconds")
        self.name = name
        self.grace = timedelta(seconds=float(grace))
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._said_stale = False

    def check(self, crls: CrlSet) -> RevocationSet:
        now = self.clock.now()
        if now <= crls.next_update + self.grace:
            if self._said_stale:
                self._said_stale = False
                log.warning("revocations.crl_fresh", extra={F.ISSUER: self.name})
            return crls.revocations
        late = (now - crls.next_update).total_seconds()
        message = (
            f"the {self.name} passed its nextUpdate ({crls.next_update.isoformat()}) {late:.0f}s "
            f"ago (grace {self.grace.total_seconds():g}s): revocations may have been missed"
        )
        if not self._said_stale:  # once per stale spell, not once per handshake
            self._said_stale = True
            log.error("revocations.crl_stale", extra={F.ISSUER: self.name, F.ERROR: message})
        raise RevocationsStale(message, age=(now - crls.this_update).total_seconds())


class CrlFileRevocations:
    """Revocations read from a CRL file and followed as the file changes.

    ``trusted`` returns the CA certificates allowed to sign CRLs (typically the bundle's roots
    and the intermediates of our own SVID chain); a PEM file may also carry the intermediates
    that signed its CRLs, accepted when a trusted certificate issued them (:func:`crl_issuers`).
    The file is checked for changes at most every ``check_interval`` seconds, inside
    :meth:`current`; :meth:`refresh` forces a check. Every CRL must carry a ``nextUpdate``;
    once the earliest has passed by more than ``grace`` seconds (read from ``clock``),
    :meth:`current` raises :class:`RevocationsStale` until the file holds current CRLs again
    (a stale file at start is not a config error: it fails closed and recovers the same way).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        trusted: Callable[[], Iterable[x509.Certificate]],
        check_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
        grace: float = DEFAULT_CRL_GRACE,
    ) -> None:
        self.path = Path(path)
        self._trusted = trusted
        self._interval = check_interval
        self._monotonic = monotonic
        self._freshness = CrlFreshness(f"CRL file {self.path}", clock=clock, grace=grace)
        self._lock = threading.Lock()
        self._version = 0
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.error: str | None = None
        try:
            self._current = self._load()
        except InvalidRequest as exc:
            raise InvalidConfig(f"CRL file {self.path}: {exc}") from exc

    def current(self) -> RevocationSet:
        """The revoked serials; :class:`RevocationsStale` once the CRLs are past nextUpdate."""
        if self._monotonic() >= self._next_check:
            self.refresh()
        return self._freshness.check(self._current)

    @property
    def next_update(self) -> datetime:
        """The earliest nextUpdate of the CRLs in use."""
        return self._current.next_update

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when a new set was installed."""
        with self._lock:
            self._next_check = self._monotonic() + self._interval
            try:
                if self._file_stamp() == self._stamp:
                    return False
                self._current = self._load()
            except InvalidRequest as exc:
                self.error = str(exc)
                log.error("crl.reload_failed", extra={"path": str(self.path), "error": str(exc)})
                return False
            self.error = None
            log.info(
                "crl.reloaded",
                extra={"path": str(self.path), "entries": len(self._current.revocations)},
            )
            return True

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise InvalidRequest(f"cannot stat {self.path}: {exc.strerror}") from exc
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> CrlSet:
        stamp = self._file_stamp()
        try:
            with self.path.open("rb") as f:
                data = f.read(_MAX_CRL_BYTES + 1)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(data) > _MAX_CRL_BYTES:
            raise InvalidRequest(f"{self.path} is larger than {_MAX_CRL_BYTES} bytes")
        self._version += 1
        issuers = crl_issuers(data, self._trusted())
        result = load_crl_set(parse_crls(data), issuers, version=self._version)
        self._stamp = stamp
        return result
