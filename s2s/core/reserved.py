"""The SPIFFE ID paths s2s keeps for itself, each defined here once.

Everything under ``/s2s`` in a trust domain belongs to s2s: agents (``/s2s/agent/...``) and CA
servers (``/s2s/ca/<replica>``). Registration entries can never name a workload there, so a
workload SVID can never pass for an agent or a CA.

>>> td = TrustDomain("example.org")
>>> str(join_token_agent_id(td, "a1"))
'spiffe://example.org/s2s/agent/join_token/a1'
>>> is_agent_id(join_token_agent_id(td, "a1"), td), is_ca_id(ca_server_id(td, "ca-0"), td)
(True, True)
>>> is_reserved(SpiffeId.parse("spiffe://example.org/s2sx/app"))
False
"""

from __future__ import annotations

from typing import Final

from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "AGENT_PATH_PREFIX",
    "BUNDLE_ENDPOINT_PATH",
    "CA_PATH_PREFIX",
    "JOIN_TOKEN_AGENT_PATH_PREFIX",
    "RESERVED_PATH",
    "bundle_endpoint_id",
    "ca_server_id",
    "is_agent_id",
    "is_ca_id",
    "is_reserved",
    "join_token_agent_id",
]

RESERVED_PATH: Final = "/s2s"
# Every agent ID, whatever attested it (what an agent checks its own stored identity against).
AGENT_PATH_PREFIX: Final = "/s2s/agent/"
# Agents attested with a join token: ``/s2s/agent/join_token/<token id>``, the only agents the CA
# issues today, so its agent-facing checks (mTLS caller, revoke --agent) use this one.
JOIN_TOKEN_AGENT_PATH_PREFIX: Final = "/s2s/agent/join_token/"  # noqa: S105 - a path, not a secret
CA_PATH_PREFIX: Final = "/s2s/ca/"
# The SVID of the CA's https_spiffe bundle endpoint, unless the operator names another.
BUNDLE_ENDPOINT_PATH: Final = "/s2s/bundle-endpoint"

_RESERVED_SEGMENT: Final = RESERVED_PATH[1:]


def is_reserved(spiffe_id: SpiffeId) -> bool:
    """True when the ID's first path segment is ``s2s`` (``/s2s`` itself included)."""
    return spiffe_id.segments[:1] == (_RESERVED_SEGMENT,)


def join_token_agent_id(trust_domain: TrustDomain, token_id: str) -> SpiffeId:
    """The agent ID a join token with public id ``token_id`` grants."""
    return trust_domain.id(JOIN_TOKEN_AGENT_PATH_PREFIX + token_id)


def ca_server_id(trust_domain: TrustDomain, replica: str) -> SpiffeId:
    """The SPIFFE ID of CA replica ``replica`` (one path segment)."""
    return trust_domain.child(*CA_PATH_PREFIX.strip("/").split("/"), replica)


def bundle_endpoint_id(trust_domain: TrustDomain) -> SpiffeId:
    """The default SPIFFE ID of the CA's https_spiffe bundle endpoint."""
    return trust_domain.id(BUNDLE_ENDPOINT_PATH)


def is_agent_id(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> bool:
    """An agent ID of ``trust_domain`` (any attestation)."""
    return spiffe_id.trust_domain == trust_domain and spiffe_id.path.startswith(AGENT_PATH_PREFIX)


def is_ca_id(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> bool:
    """The ID of a CA server of ``trust_domain``."""
    return spiffe_id.trust_domain == trust_domain and spiffe_id.path.startswith(CA_PATH_PREFIX)
