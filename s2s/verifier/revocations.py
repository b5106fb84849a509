"""Revocation inputs for the verifier: anything with ``current() -> RevocationSet``.

:class:`InMemoryRevocations` holds a set its owner replaces. :class:`CrlFileRevocations` follows
a CRL file (PEM with one or more CRLs, or one DER CRL): it is re-read when its size, mtime or
inode changes. Its CRLs are kept per issuer and verified against their issuer's certificate, as
:mod:`s2s.verifier.crls` describes: a CRL whose issuer is not known yet waits until a peer chain
through that issuer is checked, and an issuer's CRL past its nextUpdate (plus a grace) refuses
only the chains through that issuer, with reason ``revocations-stale``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig, InvalidRequest, InvalidSvid
from s2s.core.revocation import RevocationRecord, RevocationSet, StaticRevocations
from s2s.core.x509svid import check_ca_certificate
from s2s.verifier.crls import DEFAULT_CRL_GRACE, CrlBook, CrlLookup
from s2s.verifier.feeds import RevocationsStale

__all__ = [
    "CrlFileRevocations",
    "InMemoryRevocations",
    "crl_issuers",
    "parse_crls",
]

log = logging.getLogger(__name__)
_MAX_CRL_BYTES = 16 * 1024 * 1024


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


class CrlFileRevocations(CrlLookup):
    """Revocations read from a CRL file and followed as the file changes.

    ``trusted`` returns the CA certificates that verify CRLs at once (typically the bundle's
    roots and the intermediates of our own SVID chain); a PEM file may also carry the
    intermediates that signed its CRLs, accepted when a trusted certificate issued them
    (:func:`crl_issuers`). Other CRLs wait for a peer chain through their issuer. The file is
    checked for changes at most every ``check_interval`` seconds, inside the lookups;
    :meth:`refresh` forces a check. A file that stops parsing keeps the last good CRLs, which
    age: a chain through an issuer whose CRL is past nextUpdate + ``grace`` seconds (read from
    ``clock``) is refused as stale until the file holds a current CRL of that issuer again.
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
        require_crls: bool = False,
    ) -> None:
        self.path = Path(path)
        super().__init__(
            f"CRL file {self.path}", clock=clock, grace=grace, require_crls=require_crls
        )
        self._trusted = trusted
        self._interval = check_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._version = 0
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.error: str | None = None
        try:
            self._install(self._load())
        except InvalidRequest as exc:
            raise InvalidConfig(f"CRL file {self.path}: {exc}") from exc

    def _unavailable(self) -> RevocationsStale | None:
        if self._monotonic() >= self._next_check:
            self.refresh()
        return None

    @property
    def next_update(self) -> datetime | None:
        """The earliest nextUpdate of the verified CRLs in use (None: none verified yet)."""
        return min((v.next_update for v in self.book.verified.values()), default=None)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when new CRLs were installed."""
        with self._lock:
            self._next_check = self._monotonic() + self._interval
            try:
                if self._file_stamp() == self._stamp:
                    return False
                book = self._load()
            except InvalidRequest as exc:
                self.error = str(exc)
                log.error("crl.reload_failed", extra={"path": str(self.path), "error": str(exc)})
                return False
            self._install(book)
            self.error = None
            log.info(
                "crl.reloaded",
                extra={"path": str(self.path), "entries": len(book.revocations)},
            )
            return True

    def _file_stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise InvalidRequest(f"cannot stat {self.path}: {exc.strerror}") from exc
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> CrlBook:
        stamp = self._file_stamp()
        try:
            with self.path.open("rb") as f:
                data = f.read(_MAX_CRL_BYTES + 1)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(data) > _MAX_CRL_BYTES:
            raise InvalidRequest(f"{self.path} is larger than {_MAX_CRL_BYTES} bytes")
        crls = parse_crls(data)
        if not crls:
            raise InvalidRequest("no CRL found")
        book = CrlBook.build(
            crls,
            crl_issuers(data, self._trusted()),
            previous=self.book,
            version=self._version + 1,
            now=self.clock.now(),
        )
        if len(book.errors) == len(crls):  # nothing usable: keep the last good CRLs
            raise InvalidRequest("; ".join(book.errors))
        self._version += 1
        self._stamp = stamp
        return book
