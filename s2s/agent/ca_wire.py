"""The CA agent API's answers, parsed: JSON bodies into typed values, errors into exceptions.

Anything that is not the documented shape (``docs/internal-contracts.md``, CA HTTP section)
becomes :class:`Unavailable` naming what was wrong, so the caller tries another replica or backs
off; it never reaches the cache half-parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiohttp
from cryptography import x509

from s2s.agent.ca_mismatch import CaMisconfigured, from_answer
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import utc
from s2s.core.errors import (
    InvalidBundle,
    InvalidRequest,
    InvalidSpiffeId,
    InvalidSvid,
    NotAuthorized,
    S2SError,
    Unavailable,
    error_from_code,
)
from s2s.core.registration import RegistrationEntry
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid, check_x509_svid

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AgentSvidResponse",
    "AgentUnknown",
    "CertCache",
    "EntriesResponse",
    "JwtResponse",
    "X509Result",
    "decode_answer",
    "garbage",
    "parse_agent_svid",
    "parse_entries",
    "parse_jwt",
    "parse_x509_results",
    "read_body",
]

MAX_RESPONSE_BYTES: Final = 32 * 1024 * 1024
# A response the CA sends for an agent record it does not hold (registry.authorize_agent).
_UNKNOWN_AGENT_MARKER: Final = "not attested"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)


class AgentUnknown(NotAuthorized):
    """The CA does not know this agent (never attested, or evicted): attest again."""

    code = "agent_unknown"


@dataclass(frozen=True, slots=True)
class AgentSvidResponse:
    """An agent SVID (chain only; the key stays with the caller) and the CA's bundle."""

    svid: X509Svid
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class EntriesResponse:
    """The entries parented by this agent as of ``revision``, and (from CAs that send them) the
    CA's bundle sequence and the tainted authorities as of ``authorities_revision``: key ids
    (hex SKI) of intermediates and kids of JWT keys whose credentials must be replaced now;
    and the federated bundles of the trust domains these entries federate with, as of
    ``federated_revision`` (None from a CA that keeps none)."""

    revision: int
    entries: tuple[RegistrationEntry, ...]
    bundle_sequence: int | None = None
    authorities_revision: int | None = None
    tainted_x509: frozenset[str] = frozenset()
    tainted_jwt: frozenset[str] = frozenset()
    federated_revision: int | None = None
    federated_bundles: BundleSet | None = None
    # A delta answer (asked with delta=1): ``entries`` are only those created or changed since
    # the revision the agent sent, ``removed`` the ids it must drop; the rest it keeps.
    delta: bool = False
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class X509Result:
    """One item of a batch: an SVID chain (no key) or the error the CA reported for it."""

    entry_id: str
    svid: X509Svid | None
    error: S2SError | None


@dataclass(frozen=True, slots=True)
class JwtResponse:
    """A JWT-SVID minted by the CA. ``token`` is a secret: never log it."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expires_at: datetime


async def read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole body, or the first ``MAX_RESPONSE_BYTES + 1`` bytes (``read(n)`` returns what
    has arrived so far, not ``n`` bytes)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RESPONSE_BYTES:
        chunk = await content.read(MAX_RESPONSE_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def decode_answer(base: str, path: str, status: int, content_type: str, raw: bytes) -> Any:
    if len(raw) > MAX_RESPONSE_BYTES:
        raise Unavailable(f"{base}{path} sent more than {MAX_RESPONSE_BYTES} bytes")
    data: Any = None
    try:
        data = json.loads(raw) if content_type == "application/json" else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    error = data if isinstance(data, dict) and isinstance(data.get("error"), str) else None
    mismatch = from_answer(base, path, status, content_type, error)
    if mismatch is not None:
        raise CaMisconfigured(mismatch)
    if status >= 500 or (status >= 400 and error is None):
        detail = str(error.get("message", "")) if error is not None else ""
        raise Unavailable(f"{base}{path} answered HTTP {status} {detail}".rstrip())
    if status >= 400 and error is not None:
        code, message = str(error["error"]), str(error.get("message", ""))
        if code == "agent_unknown" or (
            code == "not_authorized" and _UNKNOWN_AGENT_MARKER in message
        ):
            raise AgentUnknown(message)
        raise error_from_code(code, message)
    if not isinstance(data, dict):
        raise Unavailable(f"{base}{path} sent a response that is not a JSON object")
    return data


def garbage(what: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"the CA sent a malformed {what} response: {exc}")


class CertCache:
    """Parses each CA certificate once: a thousand SVIDs share one intermediate object."""

    def __init__(self, limit: int = 32) -> None:
        self._certs: dict[bytes, x509.Certificate] = {}
        self._limit = limit

    def chain(self, pem: str) -> tuple[x509.Certificate, ...]:
        blocks = _PEM_CERT.findall(pem.encode("ascii"))
        if not blocks:
            raise ValueError("svid_chain holds no PEM certificate")
        chain = [x509.load_pem_x509_certificate(blocks[0])]
        for block in blocks[1:]:
            cert = self._certs.get(block)
            if cert is None:
                if len(self._certs) >= self._limit:
                    self._certs.clear()
                cert = self._certs[block] = x509.load_pem_x509_certificate(block)
            chain.append(cert)
        return tuple(chain)


def parse_svid(data: Mapping[str, Any], certs: CertCache) -> X509Svid:
    chain_pem = data["svid_chain"]
    if not isinstance(chain_pem, str):
        raise TypeError("svid_chain must be PEM text")
    chain = certs.chain(chain_pem)
    sid = check_x509_svid(chain)
    if str(sid) != data["spiffe_id"]:
        raise InvalidSvid(f"the chain names {sid}, not {data['spiffe_id']}", rule="uri-san")
    return X509Svid(spiffe_id=sid, cert_chain=chain)


def _x509_result(item: Any, certs: CertCache) -> X509Result:
    entry_id = item["entry_id"]
    if not isinstance(entry_id, str):
        raise TypeError("entry_id must be a string")
    if "error" in item:
        error = error_from_code(str(item["error"]), str(item.get("message", "")))
        return X509Result(entry_id=entry_id, svid=None, error=error)
    return X509Result(entry_id=entry_id, svid=parse_svid(item, certs), error=None)


def parse_agent_svid(data: Any, trust_domain: TrustDomain, certs: CertCache) -> AgentSvidResponse:
    """An attest/renew answer."""
    try:
        svid = parse_svid(data, certs)
        bundle = Bundle.decode(trust_domain, json.dumps(data["bundle"]))
    except (KeyError, TypeError, ValueError, S2SError) as exc:
        raise garbage("agent SVID", exc) from exc
    return AgentSvidResponse(svid=svid, bundle=bundle)


def parse_entries(data: Any) -> EntriesResponse:
    """A ``/v1/agent/entries`` answer."""
    try:
        revision = data["revision"]
        items = data["entries"]
        if not isinstance(revision, int) or not isinstance(items, list):
            raise TypeError("revision must be an integer and entries a list")
        entries = tuple(RegistrationEntry.from_json(item) for item in items)
        sequence, authorities = data.get("bundle_sequence"), data.get("authorities_revision")
        tainted = data.get("tainted") or {}
        x509_ids, jwt_ids = tainted.get("x509", []), tainted.get("jwt", [])
        if not all(isinstance(v, int | None) for v in (sequence, authorities)) or not all(
            isinstance(k, str) for k in [*x509_ids, *jwt_ids]
        ):
            raise TypeError("bundle_sequence/authorities_revision/tainted have the wrong type")
        federated_revision = data.get("federated_revision")
        if not isinstance(federated_revision, int | None):
            raise TypeError("federated_revision must be an integer")
        federated = _federated_bundles(data.get("federated_bundles"))
        delta, removed = data.get("delta", False), data.get("removed", [])
        if not isinstance(delta, bool) or not isinstance(removed, list):
            raise TypeError("delta must be a boolean and removed a list")
        if not all(isinstance(r, str) for r in removed) or (removed and not delta):
            raise TypeError("removed must list entry ids, in a delta answer only")
    except (
        KeyError,
        TypeError,
        AttributeError,
        InvalidRequest,
        InvalidSpiffeId,
        InvalidBundle,
    ) as exc:
        raise garbage("/v1/agent/entries", exc) from exc
    return EntriesResponse(
        revision=revision,
        entries=entries,
        bundle_sequence=sequence,
        authorities_revision=authorities,
        tainted_x509=frozenset(x509_ids),
        tainted_jwt=frozenset(jwt_ids),
        federated_revision=federated_revision,
        federated_bundles=None if federated_revision is None else federated,
        delta=delta,
        removed=tuple(removed),
    )


def _federated_bundles(value: object) -> BundleSet:
    """``{"<trust domain>": <SPIFFE bundle JSON object>}`` as bundles keyed by trust domain."""
    if value is None:
        return BundleSet()
    if not isinstance(value, dict):
        raise TypeError("federated_bundles must be an object")
    return BundleSet.of(
        *(Bundle.decode(TrustDomain.parse(name), json.dumps(doc)) for name, doc in value.items())
    )


def parse_x509_results(
    data: Any, expected: int, certs: CertCache
) -> tuple[tuple[X509Result, ...], int | None]:
    """A ``/v1/agent/x509`` answer: ``expected`` results and the bundle sequence."""
    try:
        results = tuple(_x509_result(item, certs) for item in data["results"])
        sequence = data.get("bundle_sequence")
        if len(results) != expected or not isinstance(sequence, int | None):
            raise TypeError("one result per request and an integer bundle_sequence expected")
    except (KeyError, TypeError, ValueError, S2SError) as exc:
        raise garbage("/v1/agent/x509", exc) from exc
    return results, sequence


def parse_jwt(data: Any) -> JwtResponse:
    """A ``/v1/agent/jwt`` answer."""
    try:
        token, aud = data["token"], data["audience"]
        if not isinstance(token, str) or not token or not isinstance(aud, list):
            raise TypeError("token must be a string and audience a list")
        return JwtResponse(
            token=token,
            spiffe_id=SpiffeId.parse(data["spiffe_id"]),
            audience=tuple(str(a) for a in aud),
            expires_at=utc(datetime.fromisoformat(data["expires_at"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise garbage("/v1/agent/jwt", exc) from exc
