"""Reading X.509 extensions the way the X509-SVID profile needs them (shared by the templates
in :mod:`s2s.core.x509templates` and the checks in :mod:`s2s.core.x509svid`; internal to them).
"""

from __future__ import annotations

from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from s2s.core.errors import InvalidSvid

__all__ = [
    "AKI",
    "BC",
    "CLIENT_AUTH",
    "EKU",
    "KU",
    "SAN",
    "SERVER_AUTH",
    "SKI",
    "Extensions",
    "ext_value",
    "extensions",
    "uri_sans",
]

SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
BC = ExtensionOID.BASIC_CONSTRAINTS
KU = ExtensionOID.KEY_USAGE
EKU = ExtensionOID.EXTENDED_KEY_USAGE
AKI = ExtensionOID.AUTHORITY_KEY_IDENTIFIER
SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

Extensions = dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]
_T = TypeVar("_T", bound=x509.ExtensionType)


def extensions(cert: x509.Certificate) -> Extensions:
    try:
        return {ext.oid: ext for ext in cert.extensions}
    except ValueError as exc:  # duplicate or undecodable extension
        raise InvalidSvid(f"certificate has malformed extensions: {exc}", rule="malformed") from exc


def uri_sans(san: x509.Extension[x509.ExtensionType] | None) -> list[str]:
    if san is None:
        return []
    value = san.value
    assert isinstance(value, x509.SubjectAlternativeName)
    return value.get_values_for_type(x509.UniformResourceIdentifier)


def ext_value(ext: x509.Extension[x509.ExtensionType], kind: type[_T]) -> _T:
    value = ext.value
    assert isinstance(value, kind)
    return value
