"""Load certificates and keys into a stdlib ``ssl.SSLContext`` without touching the filesystem.

``ssl`` only reads key material from paths, so the PEM goes into an anonymous memory file
(``memfd_create``) and is read back through ``/proc/self/fd/N``; nothing appears on disk.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["load_cert_chain_from_memory", "load_crl_from_memory"]


def _with_memfd(data: bytes, use: str, load: object) -> None:
    fd = os.memfd_create(f"s2s-{use}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        load(f"/proc/self/fd/{fd}")  # type: ignore[operator]
    finally:
        os.close(fd)


def load_cert_chain_from_memory(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain (leaf first) and its private key into ``context``.

    Calling it again on a live context replaces the certificate for new handshakes.
    """
    _with_memfd(chain_pem + b"\n" + key_pem, "svid", context.load_cert_chain)


def load_crl_from_memory(context: ssl.SSLContext, crl_pem: bytes) -> None:
    """Add CRLs (PEM) to ``context``'s trust store (``cadata=`` accepts certificates only)."""
    _with_memfd(crl_pem, "crl", lambda path: context.load_verify_locations(cafile=path))
