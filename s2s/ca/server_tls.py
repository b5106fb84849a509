"""The TLS of the CA's HTTPS listener: its own SVID (reissued at half-life or under a new
intermediate) and the bundle's roots for client certificates, both followed without a restart."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.authority import Authority
from s2s.core.clock import Clock
from s2s.core.x509svid import X509Svid
from s2s.log import F
from s2s.verifier.memcert import load_cert_chain_from_memory

__all__ = ["ServerTls", "server_context"]

log = logging.getLogger(__name__)


def server_context() -> ssl.SSLContext:
    """A fresh server context: TLS 1.2+, strict X.509, client certificate optional, no session
    tickets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL  # attest comes without a client SVID
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    # The agent API refuses a resumed session (it has no verified chain to check), so tickets
    # would be built, encrypted and sent on every handshake for nothing.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


class ServerTls:
    """``context`` is the listener's; per handshake it picks the newest context (certificate +
    roots), because load_verify_locations can add roots but never remove one."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._svid: X509Svid | None = None
        self._trusted: frozenset[bytes] = frozenset()
        self.context = server_context()
        self.context.sni_callback = self._select_context
        self._current = self.context

    @property
    def svid(self) -> X509Svid | None:
        """The SVID new handshakes present (None before the first reload)."""
        return self._svid

    async def reload(
        self,
        authority: Authority,
        issue: Callable[[], Awaitable[X509Svid]],
        *,
        force: bool = False,
    ) -> bool:
        """Follow the bundle's roots (added and removed) for client certificates, and reissue
        the server SVID with ``issue`` at half-life or under a new intermediate; new handshakes
        see both. True when something changed."""
        roots = frozenset(r.public_bytes(Encoding.DER) for r in authority.bundle.x509_authorities)
        svid = self._svid
        renew = force or svid is None or self._due(svid, authority)
        if not renew and roots == self._trusted:
            return False
        if renew or svid is None:
            svid = await issue()
        context = self.context if self._svid is None else server_context()
        for der in roots:
            context.load_verify_locations(cadata=der)
        load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
        self._current, self._trusted, self._svid = context, roots, svid
        log.info("ca.tls.loaded", extra={F.SERIAL: format(svid.serial, "x"), F.COUNT: len(roots)})
        return True

    def _select_context(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        ssl_object.context = self._current

    def _due(self, svid: X509Svid, authority: Authority) -> bool:
        half_life = svid.not_before + (svid.not_after - svid.not_before) / 2
        signer = authority.x509_signer.certificate
        return self._clock.now() >= half_life or svid.cert_chain[1:2] != (signer,)
