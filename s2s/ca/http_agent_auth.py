"""Who is calling the agent API: the verified TLS client certificate, an agent SPIFFE ID, and the
registry's verdict on it and on every CA certificate of the chain OpenSSL verified (checked on
every call, never cached): revoking the intermediate that signed an agent's SVID cuts it off."""

from __future__ import annotations

import functools
import ssl

from aiohttp import web
from cryptography import x509

from s2s.ca.http_services import SERVICES
from s2s.core.errors import InvalidSvid, NotAuthorized
from s2s.core.reserved import JOIN_TOKEN_AGENT_PATH_PREFIX
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import spiffe_id_of
from s2s.store.records import AgentRecord
from s2s.verifier.peer import verified_chain_der

__all__ = ["authenticate_agent", "peer_certificate_der"]


def _ssl_object(request: web.Request) -> ssl.SSLObject | None:
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object if isinstance(ssl_object, ssl.SSLObject) else None


def peer_certificate_der(request: web.Request) -> bytes | None:
    """The DER of the client's verified leaf certificate, or None without one."""
    ssl_object = _ssl_object(request)
    return None if ssl_object is None else ssl_object.getpeercert(binary_form=True)


async def authenticate_agent(request: web.Request) -> AgentRecord:
    """The calling agent's record: a verified client SVID with an agent ID the registry accepts,
    under CA certificates none of which is revoked."""
    ssl_object = _ssl_object(request)
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if ssl_object is None or der is None:
        raise NotAuthorized("this endpoint needs the agent SVID as a TLS client certificate")
    spiffe_id, serial = _peer_identity(der)
    if not spiffe_id.path.startswith(JOIN_TOKEN_AGENT_PATH_PREFIX):
        raise NotAuthorized(f"{spiffe_id} is not an agent ID")
    issuers = _issuer_serials(tuple(verified_chain_der(ssl_object)))
    registry = request.app[SERVICES].registry
    agent = await registry.authorize_agent(spiffe_id, serial, issuer_serials=issuers)
    await registry.agent_called(agent, request.remote)  # last seen, for s2s-ca agent show
    return agent


@functools.lru_cache(maxsize=1024)
def _issuer_serials(chain: tuple[bytes, ...]) -> tuple[int, ...]:
    """Serials of the CA certificates above the leaf in the chain OpenSSL verified (leaf first);
    cached by the chain, which an agent presents unchanged on every call."""
    if len(chain) < 2:
        # A resumed TLS session carries no verified chain, so its issuers cannot be checked.
        raise NotAuthorized(
            "the TLS session carries no verified certificate chain; connect without resuming"
        )
    try:
        return tuple(x509.load_der_x509_certificate(der).serial_number for der in chain[1:])
    except ValueError as exc:
        raise NotAuthorized("the client certificate chain cannot be read") from exc


@functools.lru_cache(maxsize=4096)
def _peer_identity(der: bytes) -> tuple[SpiffeId, int]:
    """(SPIFFE ID, serial) of a client certificate OpenSSL already verified; cached by DER, as
    an agent presents the same certificate on every call (authorization is never cached)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return spiffe_id_of(cert), cert.serial_number
    except (ValueError, InvalidSvid) as exc:
        raise NotAuthorized("the client certificate is not an SVID") from exc
