"""The agent's HTTPS client of the CA agent API (``s2s/ca/http.py``), on aiohttp.

The CA is verified during the TLS handshake, before any request byte (a join token, a CSR) is
sent: its chain must verify to our trust domain's bundle and its SVID must be a CA server ID
(``spiffe://<td>/s2s/ca/<replica>``), checked by :class:`s2s.verifier.peer.PeerVerifier`.
After attestation the agent SVID is presented as the client certificate (mTLS).

Each call tries the CA URLs in turn, starting with the last one that answered, and moves on when a
replica cannot be reached, answers 5xx, or sends something that is not the documented JSON. When
every replica failed, the call raises :class:`Unavailable`; the agent's loops retry it with
:class:`RetryDelays` (capped exponential, full jitter). A CA that *answered* with an error (4xx)
raises the ``s2s.core.errors`` class it named; an agent the CA no longer knows raises
:class:`AgentUnknown` so the node re-attests. A server that answered but is not our CA (a
bundle that does not match, another trust domain, not an s2s CA at all) raises
:class:`CaMisconfigured` (``s2s.agent.ca_mismatch``): an :class:`Unavailable` that says what to
fix, which the first attestation turns into an exit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import aiohttp
from cryptography import x509

from s2s.agent.ca_mismatch import CaMisconfigured, from_tls_failure, not_tls, probe_leaf
from s2s.agent.ca_wire import (
    AgentSvidResponse,
    CertCache,
    EntriesResponse,
    JwtResponse,
    X509Result,
    decode_answer,
    garbage,
    parse_agent_svid,
    parse_entries,
    parse_jwt,
    parse_x509_results,
    read_body,
)
from s2s.aio import wait_event
from s2s.core.backoff import Backoff, within_lifetime
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import Clock
from s2s.core.errors import (
    InvalidBundle,
    InvalidRequest,
    NotACa,
    Unavailable,
)
from s2s.core.reserved import is_ca_id
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid
from s2s.log import F
from s2s.verifier.feeds_ca import RevocationPage, parse_revocation_page
from s2s.verifier.memcert import load_cert_chain_from_memory
from s2s.verifier.peer import PeerRejected, PeerVerifier

__all__ = [
    "AGENT_BACKOFF",
    "KEEPALIVE",
    "CaClient",
    "RetryDelays",
    "csr_pem",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
# Idle connections to the CA are kept this long (aiohttp's default is 15 s). It outlasts the
# interval between two renewals of a 5-minute SVID (half its life +-10%: at most 165 s), so an
# agent renews on a connection it already has instead of paying a new mTLS handshake per renewal,
# which costs the CA more CPU than the renewal itself; it is shorter than the CA's own idle limit
# (``[limits] keepalive_timeout``, 180 s), so the agent, not the CA, closes an idle connection.
KEEPALIVE: Final = 170.0


# The agent's retries of an unavailable CA: 0.5 s doubling to 30 s, full jitter (at least 0.25 s).
AGENT_BACKOFF: Final = Backoff.full_jitter(initial=0.5, cap=30.0)


class RetryDelays:
    """The waits of one retry loop under a :class:`Backoff` policy: :meth:`next_delay` counts
    the attempt, :meth:`reset` starts over after a success.

    >>> r = RetryDelays(Backoff.full_jitter(initial=1.0, cap=8.0), rand=lambda: 0.999)
    >>> [round(r.next_delay(), 2) for _ in range(5)]
    [1.0, 2.0, 4.0, 7.99, 7.99]
    """

    def __init__(
        self, policy: Backoff = AGENT_BACKOFF, *, rand: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy
        self._rand = rand
        self._attempt = 0

    def next_delay(self) -> float:
        """The next wait under the policy; the attempt after it waits longer (up to the cap)."""
        delay = self.policy.delay(self._attempt, self._rand())
        self._attempt = min(self._attempt + 1, 62)
        return delay

    def reset(self) -> None:
        self._attempt = 0

    def fraction(self) -> float:
        """A number in [0, 1) from this loop's jitter source."""
        return self._rand()


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    """A CSR as the PEM text the CA API takes."""
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return csr.public_bytes(Encoding.PEM).decode("ascii")


class _CaVerifyingSSLObject(ssl.SSLObject):
    """Runs the SPIFFE check on the CA's chain as the last step of the handshake."""

    _ca_verifier: ClassVar[PeerVerifier]

    def do_handshake(self) -> None:
        super().do_handshake()
        self._ca_verifier.verify(self)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: Mapping[str, Any] | None
    query: Mapping[str, str] | None
    timeout: float


@dataclass(slots=True)
class _Session:
    session: aiohttp.ClientSession
    users: int = 0
    retired: bool = False


class CaClient:
    """Calls the CA agent API at ``urls`` (fail-over in order); use from one event loop."""

    def __init__(
        self,
        *,
        urls: Sequence[str],
        trust_domain: TrustDomain,
        clock: Clock,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not urls:
            raise ValueError("CaClient needs at least one URL")
        self.urls = tuple(urls)
        self.trust_domain = trust_domain
        self._clock = clock
        self._timeout = timeout
        self._preferred = 0
        self._bundle: Bundle | None = None
        self._svid: X509Svid | None = None
        self._current: _Session | None = None
        self._old: list[_Session] = []
        self._certs = CertCache()
        self._verifier = PeerVerifier(self._bundles, authorize=self._is_ca, clock=clock)

    # -- identity and trust -----------------------------------------------------------------

    def set_trust(self, bundle: Bundle, svid: X509Svid | None) -> None:
        """Use ``bundle`` to verify the CA and ``svid`` (with key, or None) as client identity.

        Later requests use a new connection pool; requests in flight finish on the old one.
        """
        if bundle.trust_domain != self.trust_domain:
            raise InvalidBundle(f"the bundle is for {bundle.trust_domain}, not {self.trust_domain}")
        if bundle == self._bundle and svid == self._svid:
            return
        self._bundle, self._svid = bundle, svid
        if self._current is not None:
            self._retire(self._current)
            self._current = None

    def _bundles(self) -> BundleSet:
        return BundleSet.of(self._bundle) if self._bundle is not None else BundleSet.of()

    def _is_ca(self, sid: SpiffeId) -> bool:
        return is_ca_id(sid, self.trust_domain)

    def _context(self) -> ssl.SSLContext:
        if self._bundle is None or not self._bundle.x509_authorities:
            raise Unavailable("no trust bundle to verify the CA with")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the CA is identified by its SPIFFE ID, not a host name
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self._bundle.x509_pem().decode("ascii"))
        if self._svid is not None:
            load_cert_chain_from_memory(ctx, self._svid.chain_pem(), self._svid.key_pem())
        ctx.sslobject_class = type(
            "CaSSLObject", (_CaVerifyingSSLObject,), {"_ca_verifier": self._verifier}
        )
        return ctx

    async def _acquire(self) -> _Session:
        idle, self._old = self._old, []
        for old in idle:
            await old.session.close()
        if self._current is None:
            connector = aiohttp.TCPConnector(
                ssl=self._context(), limit=32, keepalive_timeout=KEEPALIVE
            )
            self._current = _Session(aiohttp.ClientSession(connector=connector))
        self._current.users += 1
        return self._current

    async def _release(self, entry: _Session) -> None:
        entry.users -= 1
        if entry.retired and entry.users == 0:
            await entry.session.close()

    def _retire(self, entry: _Session) -> None:
        entry.retired = True
        if entry.users == 0:
            self._old.append(entry)

    async def close(self) -> None:
        """Close every connection pool."""
        pending = self._old + ([self._current] if self._current is not None else [])
        self._old, self._current = [], None
        for entry in pending:
            await entry.session.close()

    # -- API --------------------------------------------------------------------------------

    async def attest(
        self, join_token: str, csr: x509.CertificateSigningRequest
    ) -> AgentSvidResponse:
        """POST /v1/agent/attest: burn the join token, get the agent SVID and the bundle."""
        body = {"join_token": join_token, "csr": csr_pem(csr)}
        data = await self._call("POST", "/v1/agent/attest", body=body)
        return parse_agent_svid(data, self.trust_domain, self._certs)

    async def renew(self, csr: x509.CertificateSigningRequest) -> AgentSvidResponse:
        """POST /v1/agent/renew (mTLS): a new agent SVID for the CSR's key."""
        body = {"csr": csr_pem(csr)}
        data = await self._call("POST", "/v1/agent/renew", body=body)
        return parse_agent_svid(data, self.trust_domain, self._certs)

    async def entries(
        self,
        *,
        since: int,
        wait: float,
        bundle_sequence: int | None = None,
        authorities: int | None = None,
        federated: int | None = None,
        delta: bool = False,
    ) -> EntriesResponse:
        """GET /v1/agent/entries: returns at once if the revision is past ``since`` (or the
        authorities revision is not ``authorities``, or the federated bundles revision is not
        ``federated``), else after a change or ``wait`` seconds.
        ``bundle_sequence`` reports the bundle this agent holds (root rotation waits for it).
        With ``delta`` (and ``since``) the CA may answer with only what changed since then."""
        query = {"wait": f"{max(wait, 0.0):g}"}
        if since >= 0:
            query["since"] = str(since)
        if bundle_sequence is not None and bundle_sequence >= 0:
            query["bundle_sequence"] = str(bundle_sequence)
        if authorities is not None and authorities >= 0:
            query["authorities"] = str(authorities)
        if federated is not None and federated >= 0:
            query["federated"] = str(federated)
        if delta and since >= 0:
            query["delta"] = "1"
        data = await self._call(
            "GET", "/v1/agent/entries", query=query, timeout=wait + self._timeout
        )
        return parse_entries(data)

    async def sign_x509(
        self, requests: Sequence[tuple[str, x509.CertificateSigningRequest]]
    ) -> tuple[tuple[X509Result, ...], int | None]:
        """POST /v1/agent/x509: one result per (entry_id, CSR), and the CA's bundle sequence."""
        body = {"requests": [{"entry_id": eid, "csr": csr_pem(csr)} for eid, csr in requests]}
        data = await self._call("POST", "/v1/agent/x509", body=body)
        return parse_x509_results(data, len(requests), self._certs)

    async def mint_jwt(self, entry_id: str, audience: Sequence[str]) -> JwtResponse:
        """POST /v1/agent/jwt: a JWT-SVID for an entry of this agent."""
        body = {"entry_id": entry_id, "audience": list(audience)}
        data = await self._call("POST", "/v1/agent/jwt", body=body)
        return parse_jwt(data)

    async def fetch_bundle(self) -> Bundle:
        """GET /v1/bundle: the trust domain's current bundle."""
        data = await self._call("GET", "/v1/bundle")
        try:
            return Bundle.decode(self.trust_domain, json.dumps(data))
        except InvalidBundle as exc:
            raise garbage("/v1/bundle", exc) from exc

    async def fetch_revocations(self, *, since: int, wait: float) -> RevocationPage:
        """GET /v1/revocations: the revocation set (or what changed since ``since``), held up to
        ``wait`` s while the CA's revision equals ``since`` (a :class:`RevocationPoller` for
        :class:`CaRevocationFeed`)."""
        query = (
            {"since": str(since), "wait": f"{max(wait, 0.0):g}", "delta": "1"}
            if since >= 0
            else None
        )
        data = await self._call("GET", "/v1/revocations", query=query, timeout=wait + self._timeout)
        try:
            return parse_revocation_page(data)
        except InvalidRequest as exc:
            raise garbage("/v1/revocations", exc) from exc

    async def fetch_crls(self) -> tuple[bytes, ...]:
        """GET /v1/crl?format=json: the DER CRL of every issuing CA (Workload API ``crl``)."""
        data = await self._call("GET", "/v1/crl", query={"format": "json"})
        try:
            return tuple(base64.b64decode(c["der"], validate=True) for c in data["crls"])
        except (KeyError, TypeError, ValueError) as exc:
            raise garbage("/v1/crl", InvalidRequest(f"no CRL list: {exc}")) from exc

    # -- transport --------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send to each URL in turn until one answers; raise what it answered or Unavailable."""
        failures: list[str] = []
        mismatches: list[CaMisconfigured] = []
        count = len(self.urls)
        for step in range(count):
            index = (self._preferred + step) % count
            url = self.urls[index]
            try:
                request = _Request(method, path, body, query, timeout or self._timeout)
                data = await self._send(url, request)
            except Unavailable as exc:
                failures.append(str(exc))
                if isinstance(exc, CaMisconfigured):
                    mismatches.append(exc)
                log.warning(
                    "ca.call_failed", extra={F.ADDRESS: url, F.PATH: path, F.ERROR: str(exc)}
                )
                continue
            self._preferred = index
            return data
        message = "no CA replica answered: " + "; ".join(failures)
        if mismatches:  # a URL that leads to no CA of ours will not start to: say so
            raise CaMisconfigured(mismatches[0].problem, message)
        raise Unavailable(message)

    async def _send(self, base: str, req: _Request) -> Any:
        entry = await self._acquire()
        timeout = req.timeout
        try:
            async with entry.session.request(
                req.method,
                base + req.path,
                json=req.body,
                params=req.query,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0)),
                headers={"Accept": "application/json"},
            ) as response:
                raw = await read_body(response.content)
                return decode_answer(base, req.path, response.status, response.content_type, raw)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise await self._refused(base, exc.certificate_error, timeout) from exc
        except aiohttp.ClientConnectorSSLError as exc:
            if not_tls(exc.os_error):
                raise CaMisconfigured(
                    NotACa(
                        f"{base} does not speak TLS ({exc.os_error}): it is not an s2s CA "
                        "(a plain HTTP port?); check --ca-url (https://HOST:PORT of 's2s-ca serve')"
                    )
                ) from exc
            raise Unavailable(f"{base} is unreachable: {type(exc).__name__}: {exc}") from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise Unavailable(f"{base} is unreachable: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"{base} did not answer within {timeout:g}s") from exc
        finally:
            await self._release(entry)

    async def _refused(self, base: str, error: BaseException, timeout: float) -> Unavailable:
        """What a refused handshake means: a misconfiguration (never passes) or an outage."""
        leaf = None
        if isinstance(error, ssl.SSLCertVerificationError) and not isinstance(error, PeerRejected):
            leaf = await probe_leaf(base, min(timeout, 5.0))
        problem = from_tls_failure(base, error, self.trust_domain, leaf)
        if problem is not None:
            return CaMisconfigured(problem)
        return Unavailable(f"{base} failed TLS verification: {error}")


def retry_delay(backoff: RetryDelays, remaining: float | None) -> float:
    """The next wait of ``backoff`` before retrying to renew credentials that have ``remaining``
    seconds of life left (None: nothing held yet).

    The wait is cut to a quarter of the remaining lifetime (a backoff grown during an outage must
    not outlast what it renews) and jittered below that cut (equal jitter): agents whose SVIDs
    end together must not retry in step. Once they have expired (``remaining`` 0) it is the
    policy's own delay again: nothing is left to save, and a fixed quarter-second retry from
    every agent of a fleet kept a CA that came back from a restart overloaded (the fleet
    benchmark's thundering herd).
    """
    delay = backoff.next_delay()
    if remaining is None or remaining <= 0:
        return delay
    cut = within_lifetime(delay, remaining)
    if cut >= delay:
        return delay
    return cut * (0.5 + 0.5 * backoff.fraction())


async def sleep_backoff(
    backoff: RetryDelays, stop: asyncio.Event | None = None, *, remaining: float | None = None
) -> None:
    """Sleep the next backoff delay (see :func:`retry_delay`; returns early when ``stop`` is
    set)."""
    delay = retry_delay(backoff, remaining)
    if stop is None:
        await asyncio.sleep(delay)
        return
    await wait_event(stop, delay)
