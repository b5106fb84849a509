"""Node attestation: the agent's own identity (agent SVID) and the trust bundle it follows.

The agent attests once with its join token and keeps the key and SVID in the data dir (one PEM
file, 0600, written atomically), so a restart does not re-attest and does not need the token.
Retries of one join token use one key (kept in memory): the CA lets only the key that first used
a token use it again, so an attestation whose answer was lost is retried with the same token.
It renews at half-life with +-10% jitter (``s2s.core.rotation``), with a fresh key each time, and
attests again only when the CA says it does not know the agent (evicted). The lifetime used for
renewal starts when the SVID was received, not at its ``notBefore``, which the CA backdates for
clock skew (with short TTLs the backdate would otherwise put the half-life in the past).

The bundle the CA sends (at attestation, renewal, or when the cache polls it) is persisted too
and used to verify the CA after a restart; ``--trust-bundle`` only bootstraps the first contact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient, RetryDelays, sleep_backoff
from s2s.agent.ca_mismatch import CaMisconfigured
from s2s.agent.ca_wire import AgentSvidResponse, AgentUnknown
from s2s.agent.config import AgentConfig
from s2s.agent.issuance import build_csr, new_key, renewal_due_at
from s2s.agent.tainted import signed_by_any
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock
from s2s.core.errors import (
    AttestationFailed,
    CaMismatch,
    Conflict,
    InvalidBundle,
    InvalidConfig,
    InvalidSvid,
    S2SError,
    TrustBundleMismatch,
    Unavailable,
)
from s2s.core.reserved import is_agent_id
from s2s.core.rotation import jitter_from
from s2s.core.x509svid import X509Svid, check_x509_svid
from s2s.log import F

__all__ = ["BUNDLE_FILE", "IDENTITY_FILE", "AgentIdentity", "NodeAttestor"]

log = logging.getLogger(__name__)

IDENTITY_FILE: Final = "agent_identity.pem"
BUNDLE_FILE: Final = "bundle.json"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """The agent SVID (with its key), the bundle it trusts, and when the SVID arrived."""

    svid: X509Svid
    bundle: Bundle
    received_at: datetime


IdentityCallback = Callable[[AgentIdentity], None]


class NodeAttestor:
    """Keeps the agent attested: load or attest at start, renew at half-life, re-attest when
    evicted."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        client: CaClient,
        clock: Clock,
        rand: Callable[[], float] = random.random,
        backoff: RetryDelays | None = None,
        keygen: Callable[[], ec.EllipticCurvePrivateKey] = new_key,
    ) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._rand = rand
        self._backoff = backoff or RetryDelays(rand=rand)
        self._keygen = keygen
        self._identity: AgentIdentity | None = None
        self._token_key: tuple[str, ec.EllipticCurvePrivateKey] | None = None  # in memory only
        self._jitter = jitter_from(rand)
        self._subscribers: list[IdentityCallback] = []
        self._lock = asyncio.Lock()
        self.attestations = 0
        self.renewals = 0

    @property
    def identity(self) -> AgentIdentity:
        if self._identity is None:
            raise Unavailable("the agent is not attested yet")
        return self._identity

    def subscribe(self, callback: IdentityCallback) -> None:
        """Call ``callback(identity)`` after every new agent SVID or bundle."""
        self._subscribers.append(callback)

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> AgentIdentity:
        """Load the stored identity, or attest with the join token (retrying an unreachable CA).

        Raises :class:`InvalidConfig` (no identity and no token, no bootstrap bundle, unsafe
        files), a :class:`CaMismatch` when the server at the CA URL is not the configured CA
        (bundle, trust domain or URL wrong: retrying would never end), and
        :class:`AttestationFailed`/``NotAuthorized`` (token refused, agent banned). A CA that is
        away is retried.
        """
        _ensure_data_dir(self._config.data_dir)
        stored_bundle = self._stored_bundle()
        bundle_is_stored = stored_bundle is not None
        bundle = stored_bundle or self._bootstrap_bundle()
        stored = self._load_identity(bundle)
        if stored is not None:
            self._set(stored, persist=False)
            log.info(
                "agent.identity_loaded",
                extra={F.SPIFFE_ID: str(stored.svid.spiffe_id), F.NOT_AFTER: stored.svid.not_after},
            )
            return stored
        self._client.set_trust(bundle, None)
        try:
            return await self._retrying(self.attest, first_contact=True)
        except CaMisconfigured as exc:
            raise self._first_contact_problem(exc.problem, stored_bundle=bundle_is_stored) from None

    def _first_contact_problem(self, problem: CaMismatch, *, stored_bundle: bool) -> CaMismatch:
        """``problem`` with the fix for where this agent's bundle came from."""
        if not isinstance(problem, TrustBundleMismatch):
            return problem
        if stored_bundle:
            where = f"the bundle stored in {self._config.data_dir / BUNDLE_FILE}"
            fix = (
                f"remove {self._config.data_dir / BUNDLE_FILE} and start again with "
                "--trust-bundle set to the output of 's2s-ca bundle show --format pem'"
            )
        else:
            where = f"--trust-bundle {self._config.trust_bundle}"
            fix = (
                "re-export the bundle with 's2s-ca bundle show --format pem' (a bundle exported "
                "before a root rotation no longer verifies the CA)"
            )
        return TrustBundleMismatch(f"{problem} ({where}): {fix}")

    async def attest(self) -> AgentIdentity:
        """Attest with the configured join token (one try)."""
        token = self._config.join_token
        if token is None:
            raise InvalidConfig(
                "the agent has no valid identity in its data dir and no join token: "
                "pass --join-token (or S2S_AGENT_JOIN_TOKEN) with a token from "
                "'s2s-ca token generate'"
            )
        key = self._join_token_key(token)
        try:
            response = await self._client.attest(token, build_csr(key))
        except AttestationFailed as exc:
            raise AttestationFailed(
                f"the CA refused the join token ({exc}); generate a new one with "
                "'s2s-ca token generate' (a token is single-use: only the key of its first "
                "attempt may retry it, and that key is kept in memory, so an agent restarted "
                "after its first attempt needs a new token)"
            ) from None
        identity = self._accept(response, key)
        self.attestations += 1
        log.info("agent.attested", extra={F.SPIFFE_ID: str(identity.svid.spiffe_id)})
        return identity

    def _join_token_key(self, token: str) -> ec.EllipticCurvePrivateKey:
        """The key for attesting with ``token``: the same across retries of one token, since the
        CA lets only the key of the token's first use retry it (the first answer may be lost)."""
        if self._token_key is not None and hmac.compare_digest(
            self._token_key[0].encode(), token.encode()
        ):
            return self._token_key[1]
        key = self._keygen()
        self._token_key = (token, key)
        return key

    async def renew(self) -> AgentIdentity:
        """Renew the agent SVID (one try); re-attest if the CA says the agent is unknown."""
        key = self._keygen()
        try:
            response = await self._client.renew(build_csr(key))
        except AgentUnknown as exc:
            log.warning("agent.unknown_to_ca", extra={F.ERROR: str(exc)})
            return await self.attest()
        identity = self._accept(response, key)
        self.renewals += 1
        log.info(
            "agent.renewed",
            extra={
                F.SERIAL: format(identity.svid.serial, "x"),
                F.NOT_AFTER: identity.svid.not_after,
            },
        )
        return identity

    async def recover(self, failed_serial: int) -> None:
        """Re-attest after a CA call said the agent is unknown, once however many loops saw it:
        nothing happens if the SVID changed since the call that failed."""
        async with self._lock:
            if self.identity.svid.serial == failed_serial:
                await self._retrying(self.attest)

    async def renew_if_signed_by(self, key_ids: frozenset[str]) -> bool:
        """Renew the agent SVID now if its chain holds a tainted authority (hex key ids the CA
        published); True if it renewed."""
        async with self._lock:
            if not signed_by_any(self.identity.svid, key_ids):
                return False
            serial = format(self.identity.svid.serial, "x")
            log.warning("agent.svid_tainted", extra={F.SERIAL: serial})
            try:
                await self._retrying(self.renew)
            except S2SError as exc:  # the half-life renewal will try again (and fail loudly)
                log.error("agent.tainted_renew_failed", extra={F.ERROR: f"{exc.code}: {exc}"})
                return False
            return True

    def update_bundle(self, bundle: Bundle) -> bool:
        """Adopt a newer bundle (same trust domain, sequence not older); True if it changed."""
        current = self.identity
        if bundle == current.bundle or bundle.sequence < current.bundle.sequence:
            return False
        if bundle.trust_domain != self._config.trust_domain or not bundle.x509_authorities:
            log.warning("agent.bundle_rejected", extra={F.TRUST_DOMAIN: str(bundle.trust_domain)})
            return False
        self._set(AgentIdentity(current.svid, bundle, current.received_at), persist=True)
        return True

    # -- renewal loop -----------------------------------------------------------------------

    def next_renewal(self) -> datetime:
        """When the renewal loop renews: fixed by the SVID and when it arrived. (Clamped from
        the arrival, not from the current time: a due time pushed on from "now" on every look
        would move ahead of the clock and the SVID would only be renewed as it expired.)"""
        identity = self.identity
        return renewal_due_at(
            identity.svid, identity.received_at, jitter=self._jitter, now=identity.received_at
        )

    async def run(self) -> None:
        """Renew at half-life forever; CA outages are retried with backoff, never fatal."""
        while True:
            delay = (self.next_renewal() - self._clock.now()).total_seconds()
            if delay > 0:
                await asyncio.sleep(min(delay, 30.0))
                continue
            async with self._lock:  # not at the same time as a re-attest or a tainted renewal
                if self.next_renewal() <= self._clock.now():
                    await self._retrying(self.renew)
            self._jitter = jitter_from(self._rand)

    async def _retrying(
        self, step: Callable[[], Awaitable[AgentIdentity]], *, first_contact: bool = False
    ) -> AgentIdentity:
        """``step`` until it succeeds. A CA that is away, and a renewal that raced another
        update of the agent's record on the CA (Conflict: another replica recorded the bundle
        the agent reported meanwhile), are retried with backoff; they must not end the agent.
        At ``first_contact`` a server that is not the configured CA ends the attempt
        (:class:`CaMisconfigured`): the agent has nothing to serve and retrying never ends."""
        while True:
            try:
                await step()
                self._backoff.reset()
                return self.identity
            except (Unavailable, Conflict) as exc:
                if first_contact and isinstance(exc, CaMisconfigured):
                    raise
                log.warning("agent.ca_unavailable", extra={F.ERROR: str(exc)})
                await sleep_backoff(self._backoff)

    # -- state ------------------------------------------------------------------------------

    def _accept(
        self, response: AgentSvidResponse, key: ec.EllipticCurvePrivateKey
    ) -> AgentIdentity:
        svid = response.svid
        if svid.leaf.public_key() != key.public_key():
            raise Unavailable("the CA returned an agent SVID for another key; retrying")
        _check_agent_id(svid, self._config)
        full = X509Svid(spiffe_id=svid.spiffe_id, cert_chain=svid.cert_chain, private_key=key)
        bundle = response.bundle
        if self._identity is not None and bundle.sequence < self._identity.bundle.sequence:
            bundle = self._identity.bundle
        identity = AgentIdentity(full, bundle, self._clock.now())
        self._set(identity, persist=True)
        return identity

    def _set(self, identity: AgentIdentity, *, persist: bool) -> None:
        if persist:
            _write_private(self._config.data_dir / IDENTITY_FILE, _identity_pem(identity.svid))
            _write_private(self._config.data_dir / BUNDLE_FILE, identity.bundle.encode())
        self._identity = identity
        self._client.set_trust(identity.bundle, identity.svid)
        for callback in tuple(self._subscribers):
            callback(identity)

    def _stored_bundle(self) -> Bundle | None:
        path = self._config.data_dir / BUNDLE_FILE
        if not path.exists():
            return None
        try:
            return Bundle.decode(self._config.trust_domain, path.read_bytes())
        except (OSError, InvalidBundle) as exc:
            log.warning("agent.stored_bundle_unusable", extra={F.ERROR: str(exc)})
            return None

    def _bootstrap_bundle(self) -> Bundle:
        path = self._config.trust_bundle
        if path is None:
            raise InvalidConfig(
                "no trust bundle to verify the CA: pass --trust-bundle with the CA's root PEM "
                "('s2s-ca bundle show --format pem')"
            )
        try:
            return Bundle.from_x509_pem(self._config.trust_domain, path.read_bytes())
        except OSError as exc:
            raise InvalidConfig(f"cannot read trust bundle {path}: {exc.strerror}") from None
        except InvalidBundle as exc:
            raise InvalidConfig(f"trust bundle {path} is not a PEM bundle: {exc}") from None

    def _load_identity(self, bundle: Bundle) -> AgentIdentity | None:
        path = self._config.data_dir / IDENTITY_FILE
        if not path.exists():
            return None
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidConfig(f"{path} is readable by group or others; chmod 600 it")
        try:
            svid = _parse_identity_pem(path.read_bytes())
            _check_agent_id(svid, self._config)
        except (OSError, ValueError, S2SError) as exc:
            log.warning("agent.stored_identity_unusable", extra={F.ERROR: str(exc)})
            return None
        now = self._clock.now()
        if now >= svid.not_after:
            log.warning(
                "agent.stored_identity_expired",
                extra={F.SPIFFE_ID: str(svid.spiffe_id), F.NOT_AFTER: svid.not_after},
            )
            return None
        # The file's mtime is when we received it: renewal timing survives a restart.
        received = datetime.fromtimestamp(path.stat().st_mtime, tz=now.tzinfo)
        return AgentIdentity(svid, bundle, min(received, now))


def _check_agent_id(svid: X509Svid, config: AgentConfig) -> None:
    sid = svid.spiffe_id
    if not is_agent_id(sid, config.trust_domain):
        raise InvalidSvid(f"{sid} is not an agent ID of {config.trust_domain}", rule="agent-id")


def _identity_pem(svid: X509Svid) -> bytes:
    return svid.key_pem() + svid.chain_pem()


def _parse_identity_pem(data: bytes) -> X509Svid:
    keys = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"PRIVATE KEY"]
    certs = [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"CERTIFICATE"]
    if len(keys) != 1 or not certs:
        raise ValueError("expected one PRIVATE KEY and the certificate chain")
    key = serialization.load_pem_private_key(keys[0], password=None)
    chain = tuple(x509.load_pem_x509_certificate(c) for c in certs)
    sid = check_x509_svid(chain)
    if chain[0].public_key() != key.public_key():
        raise ValueError("the stored key does not match the stored SVID")
    return X509Svid(spiffe_id=sid, cert_chain=chain, private_key=key)


def _ensure_data_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidConfig(f"cannot create data dir {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise InvalidConfig(f"data dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidConfig(f"data dir {path} is not writable by this user")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
