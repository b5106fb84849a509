"""Encoding of Workload API responses from core objects (SPIFFE_Workload_API.md sections 5-6).

Bundle maps are keyed by trust domain ID (``spiffe://example.org``, as SPIRE does); X.509 bundles
are concatenated DER, JWT bundles JWKS JSON. Stream responses are serialized deterministically so
that a stream can drop a message identical to the one it sent last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from s2s.core.bundle import BundleSet
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.workload_proto import workload_pb2 as pb

__all__ = [
    "ResponseMemo",
    "jwt_bundles_response",
    "jwt_identities",
    "jwt_svid_response",
    "validate_response",
    "x509_bundles_response",
    "x509_svid_response",
]

MEMO_ENTRIES = 64


class ResponseMemo:
    """Responses encoded once per set of inputs: a rotation pushed to many streams, or many calls
    between two changes, encode once.

    Inputs are recognised by identity (the provider hands out the same SVID, bundle and CRL
    objects until they change; a tuple argument by the identities of its items), so an answer is
    reused only for exactly the objects it was built from, whatever made the caller pick them
    (expiry included). Entries hold their inputs, so an identity cannot be reused by another
    object while its entry lives; the ``max_entries`` most recently used are kept.
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        self._max = max_entries
        self._entries: OrderedDict[Hashable, tuple[tuple[Any, ...], bytes]] = OrderedDict()

    def get(self, build: Callable[..., bytes], *args: Any) -> bytes:
        """``build(*args)``, or what it returned before for the same objects."""
        key = (build, *(tuple(map(id, a)) if isinstance(a, tuple) else id(a) for a in args))
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit[1]
        data = build(*args)
        self._entries[key] = (args, data)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return data


def x509_svid_response(
    svids: Sequence[X509Svid], bundles: BundleSet, crls: Sequence[bytes]
) -> bytes:
    """X509SVIDResponse: each SVID with its own trust domain's bundle; the rest as federated."""
    own = {svid.spiffe_id.trust_domain for svid in svids}
    out = pb.X509SVIDResponse(crl=list(crls))
    for svid in svids:
        bundle = bundles.get(svid.spiffe_id.trust_domain)
        out.svids.append(
            pb.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_pkcs8_der(),
                bundle=bundle.x509_der() if bundle is not None else b"",
                hint=svid.hint,
            )
        )
    for bundle in bundles:
        if bundle.trust_domain not in own and bundle.x509_authorities:
            out.federated_bundles[str(bundle.trust_domain.id())] = bundle.x509_der()
    return out.SerializeToString(deterministic=True)


def x509_bundles_response(bundles: BundleSet, crls: Sequence[bytes]) -> bytes:
    out = pb.X509BundlesResponse(crl=list(crls))
    for bundle in bundles:
        if bundle.x509_authorities:
            out.bundles[str(bundle.trust_domain.id())] = bundle.x509_der()
    return out.SerializeToString(deterministic=True)


def jwt_bundles_response(bundles: BundleSet) -> bytes:
    out = pb.JWTBundlesResponse()
    for bundle in bundles:
        out.bundles[str(bundle.trust_domain.id())] = bundle.jwt_jwks()
    return out.SerializeToString(deterministic=True)


def jwt_identities(
    svids: Sequence[X509Svid], wanted: SpiffeId | None
) -> list[tuple[SpiffeId, str]]:
    """(SPIFFE ID, hint) of the caller's identities, in order, once each; only ``wanted`` if set."""
    seen: dict[SpiffeId, str] = {}
    for svid in svids:
        if wanted is None or svid.spiffe_id == wanted:
            seen.setdefault(svid.spiffe_id, svid.hint)
    return list(seen.items())


def jwt_svid_response(
    chosen: Sequence[tuple[SpiffeId, str]], tokens: Sequence[str]
) -> pb.JWTSVIDResponse:
    return pb.JWTSVIDResponse(
        svids=[
            pb.JWTSVID(spiffe_id=str(sid), svid=token, hint=hint)
            for (sid, hint), token in zip(chosen, tokens, strict=True)
        ]
    )


def validate_response(spiffe_id: SpiffeId, claims: Mapping[str, Any]) -> pb.ValidateJWTSVIDResponse:
    out = pb.ValidateJWTSVIDResponse(spiffe_id=str(spiffe_id))
    out.claims.update(dict(claims))
    return out
