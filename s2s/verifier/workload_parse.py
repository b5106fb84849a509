"""Workload API responses -> core objects, checked (the parsing half of ``workload_client``).

Nothing from the wire is trusted as-is: SVID chains pass the X509-SVID profile check and must name
the SPIFFE ID they are served under, keys must match their leaf, bundles go through
:class:`Bundle`'s decoders. A malformed response raises :class:`InvalidSvid` or
:class:`InvalidBundle`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from s2s.core.bundle import MAX_BUNDLE_BYTES, USE_JWT_SVID, Bundle, BundleSet
from s2s.core.errors import InvalidBundle, InvalidRequest, InvalidSpiffeId, InvalidSvid, Unavailable
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid, check_x509_svid

__all__ = [
    "claims",
    "jwt_bundles",
    "revocation_keys",
    "revocation_records",
    "spiffe_id",
    "split_der",
    "x509_bundles",
    "x509_svids",
]

_MAX_CHAIN = 16


def spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise InvalidSvid(f"the agent sent an invalid SPIFFE ID: {exc}", rule="response") from exc


def _trust_domain(text: str) -> TrustDomain:
    try:
        return TrustDomain.parse(text)
    except InvalidSpiffeId as exc:
        raise InvalidBundle(f"the agent keyed a bundle by an invalid trust domain: {exc}") from exc


def split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (a certificate chain) without parsing them."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise InvalidSvid("the chain is not concatenated DER certificates", rule="response")
        first = data[pos + 1]
        header, length = 2, first
        if first & 0x80:
            count = first & 0x7F
            if count == 0 or count > 4 or pos + 2 + count > len(data):
                raise InvalidSvid("a DER length in the chain is malformed", rule="response")
            header += count
            length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        end = pos + header + length
        if end > len(data):
            raise InvalidSvid("the chain's DER is truncated", rule="response")
        out.append(data[pos:end])
        pos = end
        if len(out) > _MAX_CHAIN:
            raise InvalidSvid(f"the chain has more than {_MAX_CHAIN} certificates", rule="response")
    return out


def _svid(message: Any) -> X509Svid:
    sid = spiffe_id(message.spiffe_id)
    try:
        chain = tuple(x509.load_der_x509_certificate(c) for c in split_der(message.x509_svid))
        key = serialization.load_der_private_key(message.x509_svid_key, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidSvid(f"the SVID of {sid} does not parse: {exc}", rule="response") from exc
    if not chain:
        raise InvalidSvid(f"the SVID of {sid} has no certificate", rule="response")
    if check_x509_svid(chain) != sid:
        raise InvalidSvid(f"the certificate served as {sid} names another ID", rule="uri-san")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise InvalidSvid(f"the private key of {sid} does not match its certificate", rule="key")
    return X509Svid(sid, chain, key, message.hint)


def x509_svids(message: Any) -> tuple[tuple[X509Svid, ...], BundleSet]:
    """The SVIDs of an X509SVIDResponse and the bundles (own trust domains, then federated)."""
    svids = tuple(_svid(s) for s in message.svids)
    if not svids:
        raise InvalidSvid("the agent sent no SVID", rule="response")
    found: dict[TrustDomain, Bundle] = {}
    for svid, raw in zip(svids, message.svids, strict=True):
        td = svid.spiffe_id.trust_domain
        if td not in found and raw.bundle:
            found[td] = Bundle.from_x509_der(td, raw.bundle)
    for key, der in message.federated_bundles.items():
        td = _trust_domain(key)
        found.setdefault(td, Bundle.from_x509_der(td, der))
    return svids, BundleSet.of(*found.values())


def x509_bundles(items: Iterable[tuple[str, bytes]]) -> BundleSet:
    return BundleSet.of(*(Bundle.from_x509_der(_trust_domain(k), v) for k, v in items))


def jwt_bundles(items: Iterable[tuple[str, bytes]]) -> BundleSet:
    return BundleSet.of(*(Bundle.decode(_trust_domain(k), _with_use(v)) for k, v in items))


def _with_use(jwks: bytes) -> bytes:
    """Workload API JWT bundles hold only JWT keys; SPIRE's omit ``use``, which Bundle requires."""
    if len(jwks) > MAX_BUNDLE_BYTES:
        raise InvalidBundle(f"the JWT bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(jwks)
    except ValueError as exc:
        raise InvalidBundle(f"the JWT bundle is not JSON: {exc}") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        return jwks  # Bundle.decode explains what is wrong
    changed = False
    for key in keys:
        if isinstance(key, dict) and "use" not in key:
            key["use"] = USE_JWT_SVID
            changed = True
    return json.dumps(doc).encode() if changed else jwks


def revocation_records(data: bytes) -> tuple[RevocationRecord, ...]:
    """The records of a ``RevocationsUpdate`` (a JSON array of ``RevocationRecord.to_json``).
    A malformed answer is :class:`Unavailable`: the client keeps its last set and reconnects."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise Unavailable(f"the agent sent revocations that are not JSON: {exc}") from exc
    if not isinstance(doc, list):
        raise Unavailable("the agent sent revocations that are not a JSON array")
    try:
        return tuple(RevocationRecord.from_json(r) for r in doc)
    except InvalidRequest as exc:
        raise Unavailable(f"the agent sent a bad revocation record: {exc}") from exc


def revocation_keys(data: bytes) -> tuple[tuple[RevocationKind, str, str], ...]:
    """The removed keys of a delta ``RevocationsUpdate`` (a JSON array of ``{"kind", "value",
    "issuer"?}``). A malformed answer is :class:`Unavailable`, as for the records."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise Unavailable(f"the agent sent removed revocations that are not JSON: {exc}") from exc
    if not isinstance(doc, list):
        raise Unavailable("the agent sent removed revocations that are not a JSON array")
    keys = []
    for item in doc:
        if not isinstance(item, dict) or set(item) - {"kind", "value", "issuer"}:
            raise Unavailable("the agent sent a removed revocation that is not {kind, value}")
        kind, value, issuer = item.get("kind"), item.get("value"), item.get("issuer", "")
        if not (isinstance(kind, str) and isinstance(value, str) and isinstance(issuer, str)):
            raise Unavailable("the agent sent a removed revocation whose fields are not text")
        try:
            keys.append((RevocationKind(kind), value, issuer))
        except ValueError:
            raise Unavailable(f"the agent sent an unknown revocation kind {kind[:20]!r}") from None
    return tuple(keys)


def claims(struct: Any) -> Mapping[str, Any]:
    """A protobuf Struct as a dict; whole-number floats (Struct has no ints) back to int."""
    return {k: _ints(v) for k, v in json_format.MessageToDict(struct).items()}


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value
