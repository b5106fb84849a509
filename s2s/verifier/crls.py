"""CRLs kept per issuer and verified against the certificate that needs them.

A trust domain has several issuing CAs at once (an intermediate per CA replica, the prepared next
one, the previous one, and the root that signs them), while a workload's bundle holds only roots.
So a CRL is verified against its issuer's certificate as soon as that certificate is known: a
bundle root, or an intermediate of our own chain, at once; any other intermediate when a peer
presents a chain through it (a chain the TLS stack and the bundle check have verified to a root
first). A CRL that cannot be verified yet waits aside ("pending"); it is never a reason to drop
the others. Once an issuer's certificate has verified one of its CRLs it is remembered, so the
issuer's next CRLs are verified on arrival.

Every verified CRL is keyed by its issuer's :func:`~s2s.core.revocation.issuer_key_id` and only
revokes serials under that issuer. It protects chains through its issuer while it is current:
past its nextUpdate plus a grace (RFC 5280 6.3.3) a chain through that issuer is refused as stale
and chains through other issuers are not affected. Refused, and logged: a CRL without nextUpdate
(RFC 5280 5.1.2.5), one whose signature fails against the issuer its authority key identifier
names, and one whose cRLNumber is lower than one already accepted for its issuer (a rollback); the
issuer's last good CRL stays in force and ages.

An issuer for which no CRL is held (a CA that publishes none, a foreign trust domain, an
intermediate so new that its first CRL has not arrived yet) leaves the revocation status of its
certificates unknown: accepted by default and counted, refused when CRLs are required.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.core.clock import Clock, SystemClock
from s2s.core.errors import InvalidConfig, InvalidRequest
from s2s.core.revocation import RevocationRecord, RevocationSet, issuer_key_id
from s2s.log import F
from s2s.verifier.feeds import RevocationsStale

__all__ = [
    "DEFAULT_CRL_GRACE",
    "ChainIssuer",
    "CrlBook",
    "CrlLookup",
    "VerifiedCrl",
]

log = logging.getLogger(__name__)

# Seconds a CRL is still used past its nextUpdate: absorbs clock skew and a refresh that is a
# little late, not an agent or publisher that stopped (the CA rebuilds at half the validity).
DEFAULT_CRL_GRACE = 300.0
_MAX_FAILED = 4096


@dataclass(frozen=True, slots=True)
class ChainIssuer:
    """An issuing certificate of a verified chain, its key id (``issuer_key_id``) and its subject
    name as DER (what a CRL names it by): worked out once per chain, not per handshake."""

    key: str
    cert: x509.Certificate
    name: bytes

    @classmethod
    def of(cls, cert: x509.Certificate) -> ChainIssuer:
        return cls(issuer_key_id(cert), cert, cert.subject.public_bytes())


@dataclass(frozen=True, slots=True)
class VerifiedCrl:
    """One issuer's CRL after its signature verified with ``issuer``."""

    issuer: ChainIssuer
    number: int | None
    this_update: datetime
    next_update: datetime
    entries: tuple[tuple[int, datetime], ...]  # (serial, revocation date)
    der: bytes

    @property
    def name(self) -> str:
        return self.issuer.cert.subject.rfc4514_string()


@dataclass(frozen=True, slots=True)
class CrlBook:
    """An immutable snapshot: verified CRLs by issuer key, pending CRLs by issuer name (DER),
    the (CRL, issuer key) pairs that failed, and the revocation set of the verified CRLs."""

    verified: Mapping[str, VerifiedCrl] = field(default_factory=dict)
    pending: Mapping[bytes, tuple[x509.CertificateRevocationList, ...]] = field(
        default_factory=dict
    )
    failed: frozenset[tuple[bytes, str]] = frozenset()
    revocations: RevocationSet = RevocationSet.EMPTY
    errors: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        crls: Iterable[x509.CertificateRevocationList],
        trusted: Iterable[x509.Certificate],
        *,
        previous: CrlBook | None = None,
        version: int = 0,
        now: datetime | None = None,
    ) -> CrlBook:
        """A book of ``crls``: each verified now against ``trusted`` (or an issuer ``previous``
        learned), or kept pending. ``errors`` lists the CRLs refused, with the reason. An issuer
        of ``previous`` that no new CRL replaces keeps its last good CRL (which ages) until the
        issuer's certificate expires (``now``; without it, until it is replaced)."""
        prior = previous or cls()
        candidates = _Candidates([*trusted, *(v.issuer.cert for v in prior.verified.values())])
        verified: dict[str, VerifiedCrl] = {}
        pending: dict[bytes, list[x509.CertificateRevocationList]] = {}
        errors: list[str] = []
        for crl in crls:
            name = crl.issuer.public_bytes()
            try:
                issuer = candidates.verify(crl)
                if issuer is None:
                    pending.setdefault(name, []).append(crl)
                    continue
                new = _verified(crl, issuer)
                _keep_newest(verified, prior.verified.get(issuer.key), new)
            except InvalidRequest as exc:
                errors.append(str(exc))
        # An issuer whose new CRL is refused, pending or missing keeps its last good one, which
        # ages: a publisher that drops a CRL must not turn its revocations into "unknown".
        for key, old in prior.verified.items():
            if key not in verified and (now is None or old.issuer.cert.not_valid_after_utc > now):
                verified[key] = old
        return cls._of(verified, {k: tuple(v) for k, v in pending.items()}, version, errors)

    @classmethod
    def _of(
        cls,
        verified: Mapping[str, VerifiedCrl],
        pending: Mapping[bytes, tuple[x509.CertificateRevocationList, ...]],
        version: int,
        errors: Sequence[str] = (),
        failed: frozenset[tuple[bytes, str]] = frozenset(),
    ) -> CrlBook:
        records = [
            RevocationRecord.for_serial(
                serial, revoked_at=at, expires_at=crl.next_update, reason="crl", issuer=key
            )
            for key, crl in verified.items()
            for serial, at in crl.entries
        ]
        revocations = RevocationSet.of(records, version=version)
        return cls(dict(verified), dict(pending), failed, revocations, tuple(errors))

    def promoted(self, issuers: Sequence[ChainIssuer]) -> CrlBook:
        """This book with the pending CRLs of ``issuers`` verified against them (``issuers``
        must come from a chain already verified to a trusted root); ``self`` if none moved."""
        if not any(i.key not in self.verified and i.name in self.pending for i in issuers):
            return self  # the common case, on every handshake through an issuer without a CRL
        verified: dict[str, VerifiedCrl] | None = None
        pending = dict(self.pending)
        failed = set(self.failed)
        for issuer in issuers:
            if issuer.key in self.verified:
                continue
            name = issuer.name
            waiting = pending.get(name, ())
            for crl in waiting:
                der = crl.public_bytes(Encoding.DER)
                if (der, issuer.key) in failed:
                    continue
                if not _signed_by(crl, issuer.cert):
                    failed.add((der, issuer.key))
                    if _names_key(crl, issuer.cert) is not False:
                        log.error(
                            "source.crl_rejected",
                            extra={F.ISSUER: issuer.cert.subject.rfc4514_string(),
                                   F.ERROR: "the CRL's signature does not verify with its issuer"},
                        )  # fmt: skip
                    continue
                try:
                    new = _verified(crl, issuer)
                except InvalidRequest as exc:
                    failed.add((der, issuer.key))
                    log.error("source.crl_rejected", extra={F.ERROR: str(exc)})
                    continue
                verified = dict(self.verified) if verified is None else verified
                _keep_newest(verified, verified.get(issuer.key), new)
                pending[name] = tuple(c for c in waiting if c is not crl)
                if not pending[name]:
                    del pending[name]
                break
        if verified is None:
            if len(failed) == len(self.failed):
                return self
            kept = frozenset(failed) if len(failed) < _MAX_FAILED else frozenset()
            return replace(self, failed=kept)
        return self._of(verified, pending, self.revocations.version, self.errors, frozenset(failed))

    def next_update(self) -> datetime | None:
        """The latest nextUpdate of the verified CRLs (None: none verified)."""
        return max((v.next_update for v in self.verified.values()), default=None)


class _Candidates:
    """Certificates that may have signed a CRL, found by subject name."""

    def __init__(self, certs: Iterable[x509.Certificate]) -> None:
        self._by_name: dict[bytes, list[x509.Certificate]] = {}
        for cert in certs:
            self._by_name.setdefault(cert.subject.public_bytes(), []).append(cert)

    def verify(self, crl: x509.CertificateRevocationList) -> ChainIssuer | None:
        """The candidate that signed ``crl``; None when no candidate could have; InvalidRequest
        when the candidate the CRL names did not sign it. A CRL names its issuer's key by its
        authority key identifier (RFC 5280 5.2.1 requires one); without it, by name alone."""
        named = False
        for cert in self._by_name.get(crl.issuer.public_bytes(), ()):
            if _signed_by(crl, cert):
                return ChainIssuer.of(cert)
            named = named or _names_key(crl, cert) is not False
        if named:
            raise InvalidRequest(
                f"the CRL of {crl.issuer.rfc4514_string()} is not signed by its issuer's key"
            )
        return None


def _verified(crl: x509.CertificateRevocationList, issuer: ChainIssuer) -> VerifiedCrl:
    if crl.next_update_utc is None:
        raise InvalidRequest(
            f"the CRL of {crl.issuer.rfc4514_string()} has no nextUpdate, so its currency "
            "cannot be checked (RFC 5280 5.1.2.5)"
        )
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return VerifiedCrl(
        issuer=issuer,
        number=number,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        entries=tuple((e.serial_number, e.revocation_date_utc) for e in crl),
        der=crl.public_bytes(Encoding.DER),
    )


def _keep_newest(into: dict[str, VerifiedCrl], old: VerifiedCrl | None, new: VerifiedCrl) -> None:
    """Install ``new`` for its issuer unless it rolls back what ``old`` (or an earlier CRL of
    this update) already says: a lower cRLNumber, or an older thisUpdate."""
    key = new.issuer.key
    for known in (old, into.get(key)):
        if known is None or known.der == new.der:
            continue
        if _older(new, known):
            into.setdefault(key, known)
            raise InvalidRequest(
                f"the CRL of {new.name} (number {new.number}, thisUpdate "
                f"{new.this_update.isoformat()}) is older than the one already accepted "
                f"(number {known.number}): refused as a rollback"
            )
    into[key] = new


def _older(new: VerifiedCrl, known: VerifiedCrl) -> bool:
    if new.number is not None and known.number is not None:
        return new.number < known.number
    return new.this_update < known.this_update


def _signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        return False


def _names_key(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool | None:
    """Whether the CRL's authority key identifier names ``cert``'s key (RFC 5280 5.2.1); None
    when the CRL has none."""
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return aki.key_identifier == ski


class CrlLookup:
    """A revocation lookup over a :class:`CrlBook` that its owner replaces (:meth:`_install`).

    :meth:`current_for_chain` is what the peer check calls: it verifies the pending CRLs of the
    chain's issuers, raises :class:`RevocationsStale` when the CRL of one of them is past
    nextUpdate + ``grace`` (or missing while ``require_crls``), and returns the revocation set.
    :meth:`current` (no chain) fails closed only when every CRL is out of date.
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        grace: float = DEFAULT_CRL_GRACE,
        require_crls: bool = False,
    ) -> None:
        if not grace >= 0:
            raise InvalidConfig("the CRL grace must be zero or a positive number of seconds")
        self.name = name
        self.grace = timedelta(seconds=float(grace))
        self.require_crls = require_crls
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._book = CrlBook()
        self._swap = threading.Lock()
        self._said_stale: set[str] = set()
        self.unknown_issuers = 0  # chains checked through an issuer with no CRL held

    @property
    def book(self) -> CrlBook:
        return self._book

    def _install(self, book: CrlBook) -> None:
        with self._swap:
            self._book = book
        for error in book.errors:
            log.error("source.crl_rejected", extra={F.ISSUER: self.name, F.ERROR: error})
        if book.pending:
            names = sorted(c[0].issuer.rfc4514_string() for c in book.pending.values())
            log.info("source.crl_pending", extra={F.ISSUER: self.name, F.ERROR: "; ".join(names)})

    def _unavailable(self) -> RevocationsStale | None:
        """Why there is nothing to answer with yet (None: there is)."""
        return None

    def current(self) -> RevocationSet:
        problem = self._unavailable()
        if problem is not None:
            raise problem
        book = self._book
        latest = book.next_update()
        now = self.clock.now()
        if latest is not None and now > latest + self.grace:
            newest = max(v.this_update for v in book.verified.values())
            raise RevocationsStale(
                f"every CRL of the {self.name} passed its nextUpdate (the latest "
                f"{latest.isoformat()}): revocations may have been missed",
                age=(now - newest).total_seconds(),
            )
        return book.revocations

    def current_for_chain(self, issuers: Sequence[ChainIssuer]) -> RevocationSet:
        problem = self._unavailable()
        if problem is not None:
            raise problem
        book = self._book
        if any(i.key not in book.verified for i in issuers) and book.pending:
            book = self._promote(book, issuers)
        now = self.clock.now()
        for issuer in issuers:
            crl = book.verified.get(issuer.key)
            if crl is None:
                self._no_crl(issuer)
            elif now > crl.next_update + self.grace:
                self._stale(crl, now)
            elif issuer.key in self._said_stale:
                self._said_stale.discard(issuer.key)
                log.warning("revocations.crl_fresh", extra={F.ISSUER: crl.name})
        return book.revocations

    def _promote(self, book: CrlBook, issuers: Sequence[ChainIssuer]) -> CrlBook:
        new = book.promoted(issuers)
        if new is book:
            return book
        with self._swap:  # compare and swap: never overwrite a newer update with an old book
            if self._book is book:
                self._book = new
        for issuer in issuers:
            if issuer.key in new.verified and issuer.key not in book.verified:
                log.info("source.crl_verified", extra={F.ISSUER: new.verified[issuer.key].name})
        return new

    def _no_crl(self, issuer: ChainIssuer) -> None:
        self.unknown_issuers += 1
        if self.require_crls:
            raise RevocationsStale(
                f"the {self.name} hold no CRL of {issuer.cert.subject.rfc4514_string()} "
                "(CRLs are required)",
                age=None,
            )

    def _stale(self, crl: VerifiedCrl, now: datetime) -> None:
        late = (now - crl.next_update).total_seconds()
        message = (
            f"the CRL of {crl.name} in the {self.name} passed its nextUpdate "
            f"({crl.next_update.isoformat()}) {late:.0f}s ago (grace "
            f"{self.grace.total_seconds():g}s): revocations may have been missed"
        )
        if crl.issuer.key not in self._said_stale:  # once per stale spell, not per handshake
            self._said_stale.add(crl.issuer.key)
            log.error("revocations.crl_stale", extra={F.ISSUER: crl.name, F.ERROR: message})
        raise RevocationsStale(message, age=(now - crl.this_update).total_seconds())
