"""Who is calling the agent API: the verified TLS client certificate, an agent SPIFFE ID, and the
registry's verdict on it (checked on every call, never cached)."""

from __future__ import annotations

import functools
import ssl

from aiohttp import web
from cryptography import x509

from s2s.ca.http_services import SERVICES
from s2s.ca.registry import AGENT_PATH_PREFIX, AgentRecord
from s2s.core.errors import InvalidSvid, NotAuthorized
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import spiffe_id_of

__all__ = ["authenticate_agent", "peer_certificate_der"]


def peer_certificate_der(request: web.Request) -> bytes | None:
    """The DER of the client's verified leaf certificate, or None without one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    return ssl_object.getpeercert(binary_form=True)


async def authenticate_agent(request: web.Request) -> AgentRecord:
    """The calling agent's record: a verified client SVID with an agent ID the registry accepts."""
    der = peer_certificate_der(request)
    if der is None:
        raise NotAuthorized("this endpoint needs the agent SVID as a TLS client certificate")
    spiffe_id, serial = _peer_identity(der)
    if not spiffe_id.path.startswith(AGENT_PATH_PREFIX):
        raise NotAuthorized(f"{spiffe_id} is not an agent ID")
    return await request.app[SERVICES].registry.authorize_agent(spiffe_id, serial)


@functools.lru_cache(maxsize=4096)
def _peer_identity(der: bytes) -> tuple[SpiffeId, int]:
    """(SPIFFE ID, serial) of a client certificate OpenSSL already verified; cached by DER, as
    an agent presents the same certificate on every call (authorization is never cached)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return spiffe_id_of(cert), cert.serial_number
    except (ValueError, InvalidSvid) as exc:
        raise NotAuthorized("the client certificate is not an SVID") from exc
