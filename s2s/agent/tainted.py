"""Which cached SVIDs a tainted authority affects (the CA publishes tainted key ids in the
entries long-poll; ``SvidCache.apply_tainted`` re-issues what they signed at once)."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509

from s2s.core.x509svid import X509Svid

__all__ = ["ca_key_ids", "signed_by_any"]


def ca_key_ids(svid: X509Svid) -> frozenset[str]:
    """Hex subject key identifiers of the CA certificates in ``svid``'s chain (not the leaf)."""
    out = set()
    for cert in svid.cert_chain[1:]:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            continue
        out.add(ski.value.digest.hex())
    return frozenset(out)


def signed_by_any(svid: X509Svid, key_ids: Iterable[str]) -> bool:
    """True if a CA certificate of ``svid``'s chain has one of ``key_ids`` (hex, any case)."""
    wanted = {k.lower() for k in key_ids}
    return bool(wanted) and not ca_key_ids(svid).isdisjoint(wanted)
