"""The CA's in-memory signers and the synchronous signing core (build, sign, check).

:class:`X509Signer` (an intermediate and its key) issues leaves; :class:`JwtSigner` (a JWT key
with its ``kid``) mints JWT-SVIDs. Both are immutable snapshots that :class:`Authority` swaps whole
on rotation. Nothing here touches the store, the clock or the audit log: the async services do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from s2s.ca.keys import KeyEncryptionKey, SigningKey
from s2s.core.b64 import b64url_encode
from s2s.core.errors import InvalidConfig, InvalidRequest, InvalidSvid
from s2s.core.jwtsvid import build_jwt_claims
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509leaf import LeafLayout
from s2s.core.x509svid import X509Svid
from s2s.core.x509templates import check_public_key, is_ec_public_key, is_rsa_public_key
from s2s.log import F
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState

__all__ = [
    "JWT_ALGORITHM",
    "MAX_AUDIENCES",
    "MAX_AUDIENCE_CHARS",
    "MAX_CSR_BYTES",
    "MAX_LEAF_LAYOUTS",
    "AuthorityInfo",
    "JwtSigner",
    "JwtSvid",
    "X509Signer",
    "check_audiences",
    "parse_csr",
    "x509_authority_record",
]

log = logging.getLogger(__name__)

JWT_ALGORITHM = "ES256"
MAX_LEAF_LAYOUTS = 10_000  # leaf templates remembered per intermediate (one per entry in use)
MAX_CSR_BYTES = 16 * 1024
MAX_AUDIENCES = 16
MAX_AUDIENCE_CHARS = 512
_ES256 = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class AuthorityInfo:
    """Public view of one authority (``s2s-ca authority list``); never holds a private key.

    ``id`` is the hex subject key identifier for X.509 authorities and the ``kid`` for JWT keys;
    ``owner`` is the replica name ("" for the root).
    """

    id: str
    kind: AuthorityKind
    state: AuthorityState
    owner: str
    not_before: datetime
    not_after: datetime
    public_key: PublicKeyTypes
    certificate: x509.Certificate | None = None

    @classmethod
    def from_record(cls, record: AuthorityRecord) -> AuthorityInfo:
        cert: x509.Certificate | None = None
        if record.kind is AuthorityKind.JWT:
            public_key = serialization.load_der_public_key(record.public_der)
        else:
            cert = x509.load_der_x509_certificate(record.public_der)
            public_key = cert.public_key()
        return cls(
            id=record.id,
            kind=record.kind,
            state=record.state,
            owner=record.owner,
            not_before=record.not_before,
            not_after=record.not_after,
            public_key=public_key,
            certificate=cert,
        )

    def to_json(self) -> dict[str, str]:
        """JSON-ready fields for the admin API (no key material)."""
        out = {
            "id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "owner": self.owner,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }
        if self.certificate is not None:
            out["serial"] = format(self.certificate.serial_number, "x")
        return out


@dataclass(frozen=True, slots=True)
class X509Signer:
    """This replica's active intermediate and its key, loaded once, ready to sign leaves.

    ``chain`` is what follows a leaf on the wire (the intermediate; never the root).
    """

    authority_id: str
    certificate: x509.Certificate
    private_key: SigningKey
    chain: tuple[x509.Certificate, ...]
    # (SPIFFE ID, DNS names, RSA key?) -> the leaf layout under this intermediate (a memo)
    layouts: dict[tuple[SpiffeId, tuple[str, ...], bool], LeafLayout] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def issue(
        self,
        public_key: CertificateIssuerPublicKeyTypes,
        spiffe_id: SpiffeId,
        *,
        ttl: timedelta,
        now: datetime,
        serial: int,
        dns_names: Sequence[str] = (),
        backdate: timedelta,
        hint: str = "",
    ) -> X509Svid:
        """Build, sign and check one leaf. A profile violation is our bug: it is
        logged and raised (:class:`InvalidSvid`), never returned.

        The leaf comes from this intermediate's DER layout for (SPIFFE ID, DNS names, key kind)
        (:class:`LeafLayout`): built with the builder and checked against the X509-SVID
        profile once, then filled in per leaf (serial, validity, key, key identifier).
        """
        if isinstance(dns_names, str) or not all(isinstance(d, str) for d in dns_names):
            raise InvalidRequest("dns_names must be a sequence of names, not one string")
        template = (spiffe_id, tuple(dns_names), is_rsa_public_key(public_key))
        layout = self.layouts.get(template)
        if layout is None or layout.issuer is not self.certificate:  # never another issuer's
            layout = self._layout(template, now)
        cert = layout.issue(
            public_key,
            issuer_key=self.private_key,
            serial=serial,
            now=now,
            ttl=ttl,
            backdate=backdate,
        )
        return X509Svid(spiffe_id, (cert, *self.chain), hint=hint)

    def _layout(
        self, template: tuple[SpiffeId, tuple[str, ...], bool], now: datetime
    ) -> LeafLayout:
        spiffe_id, dns_names, rsa_key = template
        try:
            layout = LeafLayout.for_template(
                spiffe_id=spiffe_id,
                dns_names=dns_names,
                rsa_key=rsa_key,
                issuer=self.certificate,
                issuer_key=self.private_key,
                chain=self.chain,
                now=now,
            )
        except InvalidSvid:
            log.exception("issuance.profile_violation", extra={F.SPIFFE_ID: str(spiffe_id)})
            raise
        if len(self.layouts) >= MAX_LEAF_LAYOUTS:
            self.layouts.clear()  # more templates than entries in use: start again
        self.layouts[template] = layout
        return layout


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A minted JWT-SVID. ``token`` is a secret: never log it."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    jti: str

    def __repr__(self) -> str:
        return f"JwtSvid(spiffe_id={self.spiffe_id!s}, audience={self.audience}, jti={self.jti})"


@dataclass(frozen=True, slots=True)
class JwtSigner:
    """This replica's active JWT signing key (ES256, P-256). Tokens never outlive ``not_after``.

    The JWS header (``alg``, ``kid``, ``typ: JWT``) is encoded once; :meth:`mint` signs the
    compact JWS directly (RFC 7515 3.1, ES256 as RFC 7518 3.4: raw ``r || s``).
    """

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    algorithm: str
    not_after: datetime
    issuer: str | None = None  # ``iss`` of every token (the jwt_issuer setting), if set
    _header: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        if self.algorithm != JWT_ALGORITHM or not isinstance(self.private_key.curve, ec.SECP256R1):
            raise InvalidConfig(f"JWT key {self.kid}: only ES256 with a P-256 key is supported")
        header = {"alg": self.algorithm, "kid": self.kid, "typ": "JWT"}
        object.__setattr__(self, "_header", b64url_encode(_json(header)))

    def mint(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        *,
        ttl: timedelta,
        now: datetime,
        jti: str,
        agent: SpiffeId | None = None,
    ) -> JwtSvid:
        """One JWT-SVID (for ``agent``, if it asked); the TTL is clipped so the token never
        outlives this key."""
        audiences = check_audiences(audience)
        ttl = min(ttl, self.not_after - now)
        if ttl <= timedelta(0):
            raise InvalidRequest("the JWT signing key has expired; the CA must rotate it first")
        claims = build_jwt_claims(
            spiffe_id=spiffe_id, audience=audiences, now=now, ttl=ttl, jti=jti, agent=agent
        )
        if self.issuer is not None:
            claims["iss"] = self.issuer  # OIDC federation (AWS, GCP, Vault) needs it
        signing_input = f"{self._header}.{b64url_encode(_json(claims))}"
        r, s = decode_dss_signature(self.private_key.sign(signing_input.encode("ascii"), _ES256))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return JwtSvid(
            token=f"{signing_input}.{b64url_encode(signature)}",
            spiffe_id=spiffe_id,
            audience=audiences,
            issued_at=datetime.fromtimestamp(claims["iat"], tz=UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], tz=UTC),
            jti=jti,
        )


def parse_csr(csr_der: bytes) -> CertificateIssuerPublicKeyTypes:
    """The public key of a DER PKCS#10 CSR whose self-signature verifies and whose key is
    supported (``check_public_key``). Everything else in the CSR is ignored: the CA takes the
    SPIFFE ID, DNS names and TTL from the registration entry. :class:`InvalidRequest` otherwise.
    """
    if not isinstance(csr_der, bytes | bytearray) or not csr_der:
        raise InvalidRequest("the CSR is missing (expected DER bytes)")
    if len(csr_der) > MAX_CSR_BYTES:
        raise InvalidRequest(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(bytes(csr_der))
        public_key = csr.public_key()
    except ValueError as exc:
        raise InvalidRequest(f"the CSR is not a valid DER PKCS#10 request: {exc}") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd keys
        raise InvalidRequest(f"the CSR key cannot be used: {exc}") from exc
    check_public_key(public_key)
    try:
        valid = _csr_signature_valid(csr, public_key)
    except Exception as exc:
        raise InvalidRequest(f"the CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise InvalidRequest("the CSR signature does not verify (it must be signed by its own key)")
    return cast(ec.EllipticCurvePublicKey | rsa.RSAPublicKey, public_key)  # check_public_key


def _csr_signature_valid(csr: x509.CertificateSigningRequest, public_key: object) -> bool:
    """``csr.is_signature_valid``; for ECDSA with SHA-256/384 the key parsed above verifies it
    directly (``is_signature_valid`` parses the key a second time: ~9 us of ~80)."""
    ecdsa = _CSR_ECDSA.get(csr.signature_algorithm_oid)
    if ecdsa is None or not is_ec_public_key(public_key):
        return csr.is_signature_valid
    try:
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes, ecdsa)
    except InvalidSignature:
        return False
    return True


_CSR_ECDSA = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384()),
}


def check_audiences(audience: Sequence[str]) -> tuple[str, ...]:
    """1 to MAX_AUDIENCES distinct, non-empty audience strings (order kept)."""
    if isinstance(audience, str):
        raise InvalidRequest("audience must be a list of strings, not one string")
    auds = tuple(dict.fromkeys(audience))
    if not 0 < len(auds) <= MAX_AUDIENCES:
        raise InvalidRequest(f"a JWT-SVID needs 1 to {MAX_AUDIENCES} audiences")
    for aud in auds:
        if not isinstance(aud, str) or not 0 < len(aud) <= MAX_AUDIENCE_CHARS:
            raise InvalidRequest(
                f"each audience is a non-empty string of at most {MAX_AUDIENCE_CHARS} characters"
            )
    return auds


def x509_authority_record(
    cert: x509.Certificate,
    *,
    key: SigningKey,
    kek: KeyEncryptionKey,
    kind: AuthorityKind,
    state: AuthorityState,
    owner: str = "",
    issuer_id: str = "",
) -> AuthorityRecord:
    """The store record of a CA certificate: id = hex SKI, key sealed under the KEK."""
    aid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    return AuthorityRecord(
        id=aid,
        kind=kind,
        state=state,
        public_der=cert.public_bytes(serialization.Encoding.DER),
        encrypted_key=kek.seal_private_key(key, authority_id=aid),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        owner=owner,
        issuer_id=issuer_id,
    )


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
