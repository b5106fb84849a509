"""A small SPIFFE test authority: real roots, intermediates, X509-SVIDs, JWT-SVIDs and bundles.

For tests only, never a production path. Every credential is minted at run time, so expiry and bad
profiles are arguments rather than checked-in files::

    ca = TestAuthority("example.org")
    svid = ca.issue_x509_svid("spiffe://example.org/billing")
    bad = ca.issue_x509_svid("spiffe://example.org/billing", two_uri_sans=True)
    foreign = TestAuthority("example.org").issue_x509_svid("spiffe://example.org/billing")

The good path uses the production templates of :mod:`s2s.core.x509svid`; bad profiles are made by
re-signing a good certificate with one extension changed, so each option breaks exactly one rule.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtensionOID

from s2s.core.bundle import Bundle, JwtAuthority
from s2s.core.clock import Clock
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.core.x509templates import (
    intermediate_template,
    leaf_template,
    root_template,
    serial_from_entropy,
    sign_certificate,
)

__all__ = ["IssuerKey", "TestAuthority", "new_key"]

IssuerKey = CertificateIssuerPrivateKeyTypes
ROOT_TTL = dt.timedelta(days=365)
INTERMEDIATE_TTL = dt.timedelta(days=30)
# CA certificates start a day before the authority's "now", so expired leaves still chain.
CA_HEADSTART = dt.timedelta(days=1)
_KID_ALPHABET = string.ascii_letters + string.digits


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (the default key type everywhere in s2s)."""
    return ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    return serial_from_entropy(os.urandom(16))


class TestAuthority:
    """A trust domain's CA for tests: a root, an intermediate and a JWT signing key.

    Time comes from, in order: the ``now`` argument of a method, ``clock.now()``, the fixed ``now``
    given here, the wall clock. CA certificates start a day before that time and last a year.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        trust_domain: str | TrustDomain = "example.org",
        *,
        now: dt.datetime | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.trust_domain = (
            trust_domain
            if isinstance(trust_domain, TrustDomain)
            else TrustDomain.parse(trust_domain)
        )
        self._now = now
        self._clock = clock
        start = self._time(None) - CA_HEADSTART
        self.root_key: IssuerKey = new_key()
        self.root = sign_certificate(
            root_template(
                trust_domain=self.trust_domain,
                public_key=self.root_key.public_key(),
                now=start,
                ttl=ROOT_TTL,
                serial=_serial(),
            ),
            self.root_key,
        )
        self.intermediate, self.intermediate_key = self.new_intermediate(now=start)
        self.jwt_key = new_key()
        self.jwt_kid = "".join(secrets.choice(_KID_ALPHABET) for _ in range(32))

    def _time(self, now: dt.datetime | None) -> dt.datetime:
        if now is not None:
            return now
        if self._clock is not None:
            return self._clock.now()
        return self._now if self._now is not None else dt.datetime.now(dt.UTC)

    def new_intermediate(
        self,
        *,
        ttl: dt.timedelta = INTERMEDIATE_TTL,
        now: dt.datetime | None = None,
        key: IssuerKey | None = None,
    ) -> tuple[x509.Certificate, IssuerKey]:
        """A fresh intermediate CA signed by this authority's root, with its key."""
        key = key or new_key()
        cert = sign_certificate(
            intermediate_template(
                trust_domain=self.trust_domain,
                public_key=key.public_key(),
                issuer=self.root,
                now=self._time(now),
                ttl=ttl,
                serial=_serial(),
            ),
            self.root_key,
        )
        return cert, key

    def issue_x509_svid(
        self,
        spiffe_id: str | SpiffeId,
        *,
        ttl: dt.timedelta = dt.timedelta(minutes=5),
        now: dt.datetime | None = None,
        key: IssuerKey | None = None,
        dns_names: Sequence[str] = (),
        include_intermediate: bool = True,
        two_uri_sans: bool = False,
        no_uri_san: bool = False,
        ca_leaf: bool = False,
        expired: bool = False,
        not_yet_valid: bool = False,
        missing_key_usage: bool = False,
        cert_sign_usage: bool = False,
        issuer: TestAuthority | None = None,
        intermediate: tuple[x509.Certificate, IssuerKey] | None = None,
        hint: str = "",
    ) -> X509Svid:
        """Mint an X509-SVID; each ``bool`` option breaks one rule of the profile.

        ``expired`` ends the leaf a minute before ``now``; ``not_yet_valid`` starts it an hour
        after. ``issuer`` signs with another authority's intermediate (a foreign root) while the
        SPIFFE ID stays as given. ``intermediate`` signs with a specific (cert, key) of this one.
        """
        sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        key = key or new_key()
        ca_cert, ca_key = intermediate or (
            (issuer.intermediate, issuer.intermediate_key)
            if issuer is not None
            else (self.intermediate, self.intermediate_key)
        )
        at = self._time(now)
        if expired:
            at -= ttl + dt.timedelta(minutes=1)
        elif not_yet_valid:
            at += dt.timedelta(hours=1)
        # The template checks the ID against its issuer; a foreign issuer is swapped in afterwards.
        template_issuer = self.intermediate if issuer is not None else ca_cert
        leaf = sign_certificate(
            leaf_template(
                spiffe_id=sid,
                public_key=key.public_key(),
                issuer=template_issuer,
                now=at,
                ttl=ttl,
                serial=_serial(),
                dns_names=dns_names,
                backdate=dt.timedelta(seconds=30) if not not_yet_valid else dt.timedelta(0),
            ),
            ca_key if issuer is None else self.intermediate_key,
        )
        changes = _profile_changes(
            leaf,
            sid,
            two_uri_sans=two_uri_sans,
            no_uri_san=no_uri_san,
            ca_leaf=ca_leaf,
            missing_key_usage=missing_key_usage,
            cert_sign_usage=cert_sign_usage,
        )
        if changes or issuer is not None:
            leaf = _resign(leaf, ca_cert, ca_key, changes)
        chain = (leaf, ca_cert) if include_intermediate else (leaf,)
        return X509Svid(sid, chain, key, hint)

    def bundle(self) -> Bundle:
        """This trust domain's bundle: the root and the JWT key, sequence 1."""
        return Bundle(
            trust_domain=self.trust_domain,
            x509_authorities=(self.root,),
            jwt_authorities=(JwtAuthority(self.jwt_kid, self.jwt_key.public_key()),),
            sequence=1,
        )

    def bundle_pem(self) -> bytes:
        """The root certificate as PEM (a CA file for openssl or ssl)."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issue_jwt_svid(
        self,
        spiffe_id: str | SpiffeId,
        audience: str | Sequence[str],
        *,
        ttl: dt.timedelta = dt.timedelta(minutes=5),
        now: dt.datetime | None = None,
        extra_headers: Mapping[str, Any] | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        drop_claims: Iterable[str] = (),
        alg: str = "ES256",
        key: Any = None,
        kid: str | None = None,
        jti: str | None = None,
    ) -> str:
        """Mint a JWT-SVID (ES256, ``kid`` and ``typ: JWT`` headers) signed by the JWT key.

        ``extra_headers`` values of None remove a header (``{"typ": None}``, ``{"kid": None}``);
        ``alg="none"`` makes an unsigned token. Times are whole seconds (``exp`` = now + ttl).
        """
        at = self._time(now)
        auds = [audience] if isinstance(audience, str) else list(audience)
        claims: dict[str, Any] = {
            "sub": str(spiffe_id),
            "aud": auds[0] if len(auds) == 1 else auds,
            "exp": int((at + ttl).timestamp()),
            "iat": int(at.timestamp()),
        }
        if jti is not None:
            claims["jti"] = jti
        claims.update(extra_claims or {})
        for name in drop_claims:
            claims.pop(name, None)
        headers: dict[str, Any] = {"kid": kid or self.jwt_kid, "typ": "JWT"}
        headers.update(extra_headers or {})
        # PyJWT drops a falsy typ itself; any other None header is removed here.
        headers = {k: v for k, v in headers.items() if v is not None or k == "typ"}
        signing_key = "" if alg == "none" else (key if key is not None else self.jwt_key)
        return jwt.encode(claims, signing_key, algorithm=alg, headers=headers)


def _profile_changes(
    leaf: x509.Certificate,
    sid: SpiffeId,
    *,
    two_uri_sans: bool,
    no_uri_san: bool,
    ca_leaf: bool,
    missing_key_usage: bool,
    cert_sign_usage: bool,
) -> dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType] | None]:
    """Extension replacements (None drops one) that turn a good leaf into a bad one."""
    changes: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType] | None] = {}
    dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names: list[x509.GeneralName] = [
        x509.DNSName(d) for d in dns.get_values_for_type(x509.DNSName)
    ]
    san_oid = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
    if two_uri_sans:
        second = x509.UniformResourceIdentifier(f"{sid}-second")
        names = [x509.UniformResourceIdentifier(str(sid)), second, *dns_names]
        changes[san_oid] = _ext(x509.SubjectAlternativeName(names), critical=False)
    if no_uri_san:
        changes[san_oid] = (
            _ext(x509.SubjectAlternativeName(dns_names), critical=False) if dns_names else None
        )
    if ca_leaf:
        changes[ExtensionOID.BASIC_CONSTRAINTS] = _ext(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if missing_key_usage:
        changes[ExtensionOID.KEY_USAGE] = None
    if cert_sign_usage:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        changes[ExtensionOID.KEY_USAGE] = _ext(usage, critical=True)
    return changes


def _ext(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


def _resign(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    issuer_key: IssuerKey,
    changes: Mapping[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType] | None],
) -> x509.Certificate:
    """Copy ``cert`` with extensions replaced or dropped, issued by ``issuer``."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = _ext(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    replaced = {ExtensionOID.AUTHORITY_KEY_IDENTIFIER: aki, **changes}
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(issuer.subject)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(min(cert.not_valid_after_utc, issuer.not_valid_after_utc))
    )
    for ext in cert.extensions:
        new = replaced.get(ext.oid, ext)
        if new is not None:
            builder = builder.add_extension(new.value, critical=new.critical)
    return sign_certificate(builder, issuer_key)
