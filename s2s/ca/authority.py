"""The CA's signing authorities: the root, this replica's intermediate and JWT key, the bundle.

Key hierarchy: one root per trust domain (ECDSA P-256, 1 year), one
intermediate per replica signed by the root (24 h), one JWT signing key per replica (random
``kid``). Private keys are sealed with the KEK in the store. Rotation follows SPIRE's schedule: the
next authority is prepared at 1/2 of the current one's life and activated when 1/6 of it remains.
A prepared JWT key joins the bundle at once (verifiers learn it before any token uses it); an old
JWT key stays until its ``not_after``, and no token it signed outlives that, so every token it
signed stays verifiable until it expires. The bundle's ``spiffe_sequence`` grows on each change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.ca.authority_records import new_intermediate_record, new_jwt_record, new_root_record
from s2s.ca.bundle_sequence import (
    build_bundle,
    bump_sequence,
    published_authorities,
)
from s2s.ca.config import CaConfig
from s2s.ca.keys import KeyEncryptionKey, SigningKey
from s2s.ca.signers import (
    JWT_ALGORITHM,
    AuthorityInfo,
    JwtSigner,
    X509Signer,
)
from s2s.core.b64 import b64url_encode
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock, utc
from s2s.core.errors import Conflict, InvalidConfig, InvalidRequest, NotFound, Unavailable
from s2s.core.spiffe_id import TrustDomain
from s2s.log import F
from s2s.store.base import Store
from s2s.store.records import AuthorityKind, AuthorityRecord, AuthorityState, Setting

__all__ = [
    "Authority",
]

log = logging.getLogger(__name__)


class Authority:
    """Holds the signing keys of one CA replica in memory and keeps them rotated.

    Construct, then ``await start()`` (loads the root, loads or creates this replica's
    intermediate and JWT key). ``x509_signer``, ``jwt_signer`` and ``bundle`` are immutable
    snapshots swapped whole on rotation; readers need no lock. The app calls
    :meth:`rotate_if_due` periodically (every few seconds) and :meth:`refresh_bundle` when the
    store says authorities changed (other replicas).
    """

    def __init__(
        self,
        *,
        config: CaConfig,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._config = config
        self._store = store
        self._kek = kek
        self._clock = clock
        self._entropy = entropy
        self._root: x509.Certificate | None = None
        self._root_id = ""
        self._root_key: SigningKey | None = None
        self._x509: X509Signer | None = None
        self._jwt: JwtSigner | None = None
        self._bundle: Bundle | None = None
        self._rotation_lock = asyncio.Lock()  # one rotation at a time in this process

    # -- init and start ----------------------------------------------------------------------

    @classmethod
    async def initialize(
        cls,
        *,
        config: CaConfig,
        store: Store,
        kek: KeyEncryptionKey,
        clock: Clock,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> AuthorityInfo:
        """Create the trust domain's root (``s2s-ca init``); :class:`Conflict` if one exists."""
        td = str(config.trust_domain)
        existing = await store.get_setting(Setting.TRUST_DOMAIN)
        if existing is not None:
            raise Conflict(f"this data dir is already initialized for trust domain {existing}")
        now = utc(clock.now())
        record = new_root_record(
            trust_domain=config.trust_domain,
            kek=kek,
            ttl=config.root_ttl,
            now=now,
            entropy=entropy,
            state=AuthorityState.ACTIVE,
        )
        await store.create_authority(record)
        await store.set_setting(Setting.CREATED_AT, now.isoformat())
        data_dir_id = b64url_encode(entropy(16))
        await store.set_setting(Setting.DATA_DIR_ID, data_dir_id)
        # Written last and only once: "initialized" means the root exists (a crashed init can
        # be re-run; of two racing inits one gets Conflict here).
        await store.set_setting(Setting.TRUST_DOMAIN, td, only_if_absent=True)
        log.info("authority.root_created", extra={F.AUTHORITY_ID: record.id, F.TRUST_DOMAIN: td})
        return AuthorityInfo.from_record(record)

    async def start(self) -> None:
        """Load the root and this replica's authorities, creating them if missing.

        Raises :class:`InvalidConfig` when the store belongs to another trust domain, has no
        root (not initialized), or its keys do not open with this KEK.
        """
        await self._check_trust_domain()
        await self._follow_root()
        await self._load_active()
        await self.rotate_if_due()
        await self.refresh_bundle()

    async def _follow_root(self) -> bool:
        """Load the newest active root if it is not the one in use (root rotation activated a
        new one, possibly through another replica); True if it changed."""
        roots = await self._store.list_authorities(kind=AuthorityKind.X509_ROOT)
        active = [r for r in roots if r.state is AuthorityState.ACTIVE]
        if not active:
            raise InvalidConfig("the store has no active root; run 's2s-ca init' first")
        record = active[-1]
        if record.id == self._root_id:
            return False
        root = x509.load_der_x509_certificate(record.public_der)
        key = self._kek.open_private_key(record.encrypted_key, authority_id=record.id)
        if key.public_key() != root.public_key():
            raise InvalidConfig(f"root {record.id}: the stored key does not match its certificate")
        self._root, self._root_id, self._root_key = root, record.id, key
        log.info("authority.root_loaded", extra={F.AUTHORITY_ID: record.id})
        return True

    def _under_root(self, record: AuthorityRecord) -> bool:
        """False for an intermediate signed by a root other than the active one."""
        return (
            record.kind is not AuthorityKind.X509_INTERMEDIATE or record.issuer_id == self._root_id
        )

    async def _sync_installed(self, now: datetime) -> bool:
        """Install this replica's active authorities when the store names others than the ones
        in use (activated through the admin API, maybe on another replica)."""
        changed = False
        installed = {
            AuthorityKind.X509_INTERMEDIATE: self._x509.authority_id if self._x509 else None,
            AuthorityKind.JWT: self._jwt.kid if self._jwt else None,
        }
        for kind, current in installed.items():
            await self._retire_stale(kind)
            record = await self._active(kind)
            if (
                record is not None
                and record.id != current
                and record.not_after > now
                and self._under_root(record)
            ):
                self._install(record)
                changed = True
        return changed

    async def _retire_stale(self, kind: AuthorityKind) -> None:
        """Retire every active authority of this replica but the newest (a crash between
        activating the next one and retiring the previous one leaves two)."""
        records = await self._store.list_authorities(kind=kind, owner=self._config.replica_name)
        active = [r for r in records if r.state is AuthorityState.ACTIVE]
        for record in active[:-1]:
            await self._retire(record)

    async def prepare(self, kind: AuthorityKind, now: datetime | None = None) -> AuthorityRecord:
        """Create a prepared intermediate or JWT key for this replica (``s2s-ca authority
        prepare``); :class:`Conflict` if this replica already has a usable prepared one."""
        if kind is AuthorityKind.X509_ROOT:
            raise InvalidRequest("roots are prepared by s2s-ca rotate-root")
        now = utc(now if now is not None else self._clock.now())
        async with self._rotation_lock:
            prepared = await self._prepared(kind)
            if prepared is not None and prepared.not_after > now and self._under_root(prepared):
                raise Conflict(f"{kind.value} authority {prepared.id} is already prepared")
            record = await self._create(kind, AuthorityState.PREPARED, now)
        log.info("authority.prepared", extra=_fields(record))
        await self.refresh_bundle()
        return record

    def new_root_record(self, now: datetime) -> AuthorityRecord:
        """A new self-signed root (state PREPARED, key sealed), not yet stored (rotate-root)."""
        return new_root_record(
            trust_domain=self.trust_domain,
            kek=self._kek,
            ttl=self._config.root_ttl,
            now=now,
            entropy=self._entropy,
            state=AuthorityState.PREPARED,
        )

    async def _check_trust_domain(self) -> None:
        stored = await self._store.get_setting(Setting.TRUST_DOMAIN)
        if stored is None:
            raise InvalidConfig("the data dir is not initialized; run 's2s-ca init' first")
        if stored != str(self._config.trust_domain):
            raise InvalidConfig(
                f"the data dir belongs to trust domain {stored}, not {self._config.trust_domain}"
            )

    async def _load_active(self) -> None:
        now = utc(self._clock.now())
        for kind in (AuthorityKind.X509_INTERMEDIATE, AuthorityKind.JWT):
            record = await self._active(kind)
            if record is not None and record.not_after > now:
                self._install(record)

    # -- snapshots -----------------------------------------------------------------------------

    @property
    def trust_domain(self) -> TrustDomain:
        return self._config.trust_domain

    @property
    def root(self) -> x509.Certificate:
        """The active root certificate."""
        if self._root is None:
            raise Unavailable("the authority is not started")
        return self._root

    @property
    def x509_signer(self) -> X509Signer:
        """The active intermediate with its key (raises :class:`Unavailable` before start)."""
        if self._x509 is None:
            raise Unavailable("the CA has no active intermediate yet")
        return self._x509

    @property
    def jwt_signer(self) -> JwtSigner:
        """The active JWT signing key (raises :class:`Unavailable` before start)."""
        if self._jwt is None:
            raise Unavailable("the CA has no active JWT signing key yet")
        return self._jwt

    @property
    def bundle(self) -> Bundle:
        """The current trust bundle: roots + JWT public keys of non-revoked authorities."""
        if self._bundle is None:
            raise Unavailable("the authority is not started")
        return self._bundle

    @property
    def ready(self) -> bool:
        """True once :meth:`start` succeeded and both signers are loaded."""
        return None not in (self._x509, self._jwt, self._bundle)

    # -- bundle --------------------------------------------------------------------------------

    async def refresh_bundle(self) -> Bundle:
        """Rebuild the bundle from the store (picks up other replicas' JWT keys).

        The sequence lives in the store and grows (compare-and-swap) whenever the published set
        of keys differs from the one it was last bumped for, so replicas agree on it.
        """
        now = utc(self._clock.now())
        roots, jwts, digest = published_authorities(await self._store.list_authorities(), now)
        sequence = await bump_sequence(self._store, digest)
        if self._bundle is not None and self._bundle.sequence == sequence:
            return self._bundle  # unchanged: keep the snapshot (and its parsed keys)
        bundle = build_bundle(
            self.trust_domain,
            roots,
            jwts,
            sequence=sequence,
            refresh_hint=int(self._config.max_svid_ttl.total_seconds() // 2) or 1,
        )
        self._bundle = bundle
        return bundle

    # -- rotation ------------------------------------------------------------------------------

    async def rotate_if_due(self, now: datetime | None = None) -> bool:
        """Prepare, activate and retire authorities that are due; True if anything changed."""
        if self._root is None:
            raise Unavailable("the authority is not started")
        now = utc(now if now is not None else self._clock.now())
        async with self._rotation_lock:
            changed = await self._follow_root()
            for kind in (AuthorityKind.X509_INTERMEDIATE, AuthorityKind.JWT):
                changed |= await self._rotate_kind(kind, now)
            changed |= await self._sync_installed(now)
            if changed:
                await self.refresh_bundle()
            return changed

    async def _rotate_kind(self, kind: AuthorityKind, now: datetime) -> bool:
        active = await self._active(kind)
        prepared = await self._prepared(kind)
        if prepared is not None and (prepared.not_after <= now or not self._under_root(prepared)):
            prepared = None  # never used and expired (prune removes it), or under an old root
        if active is not None and active.not_after > now and self._under_root(active):
            life = active.not_after - active.not_before
            if now < active.not_after - life / 6:
                if prepared is not None or now < active.not_before + life / 2:
                    return False
                record = await self._create(kind, AuthorityState.PREPARED, now)
                log.info(
                    "authority.prepared", extra={F.AUTHORITY_ID: record.id, F.KIND: kind.value}
                )
                return True
        # No usable active authority (first start, or the CA was down), or time to switch.
        if prepared is None:
            prepared = await self._create(kind, AuthorityState.PREPARED, now)
        record = await self._store.cas_authority_state(
            prepared.id, AuthorityState.PREPARED, AuthorityState.ACTIVE
        )
        if active is not None:
            await self._retire(active)
        self._install(record)
        log.info(
            "authority.activated", extra={F.AUTHORITY_ID: record.id, F.KIND: record.kind.value}
        )
        return True

    async def _retire(self, record: AuthorityRecord) -> None:
        try:
            await self._store.cas_authority_state(
                record.id, AuthorityState.ACTIVE, AuthorityState.OLD
            )
        except (Conflict, NotFound):
            log.warning(
                "authority.retire_skipped",
                extra={F.AUTHORITY_ID: record.id, F.KIND: record.kind.value},
            )

    async def _active(self, kind: AuthorityKind) -> AuthorityRecord | None:
        return await self._one(kind, AuthorityState.ACTIVE)

    async def _prepared(self, kind: AuthorityKind) -> AuthorityRecord | None:
        return await self._one(kind, AuthorityState.PREPARED)

    async def _one(self, kind: AuthorityKind, state: AuthorityState) -> AuthorityRecord | None:
        records = await self._store.list_authorities(kind=kind, owner=self._config.replica_name)
        matching = [r for r in records if r.state is state]
        return matching[-1] if matching else None  # ordered by not_before: the newest

    async def _create(
        self, kind: AuthorityKind, state: AuthorityState, now: datetime
    ) -> AuthorityRecord:
        if kind is AuthorityKind.JWT:
            record = self._new_jwt_record(state, now)
        else:
            record = self._new_intermediate_record(state, now)
        await self._store.create_authority(record)
        return record

    def _new_intermediate_record(self, state: AuthorityState, now: datetime) -> AuthorityRecord:
        assert self._root is not None
        assert self._root_key is not None
        return new_intermediate_record(
            trust_domain=self.trust_domain,
            root=self._root,
            root_key=self._root_key,
            root_id=self._root_id,
            kek=self._kek,
            ttl=self._config.intermediate_ttl,
            now=now,
            entropy=self._entropy,
            state=state,
            owner=self._config.replica_name,
        )

    def _new_jwt_record(self, state: AuthorityState, now: datetime) -> AuthorityRecord:
        return new_jwt_record(
            kek=self._kek,
            ttl=self._config.jwt_key_ttl,
            now=now,
            entropy=self._entropy,
            state=state,
            owner=self._config.replica_name,
            root_not_after=self._root.not_valid_after_utc if self._root is not None else None,
        )

    def _install(self, record: AuthorityRecord) -> None:
        """Open an active record's key and swap it in as the current signer."""
        key = self._kek.open_private_key(record.encrypted_key, authority_id=record.id)
        if record.kind is AuthorityKind.JWT:
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidConfig(f"JWT authority {record.id} does not hold an EC key")
            self._jwt = JwtSigner(
                kid=record.id,
                private_key=key,
                algorithm=JWT_ALGORITHM,
                not_after=record.not_after,
                issuer=self._config.jwt_issuer,
            )
            return
        cert = x509.load_der_x509_certificate(record.public_der)
        if cert.public_key() != key.public_key():
            raise InvalidConfig(f"authority {record.id}: the stored key does not match its cert")
        self._x509 = X509Signer(
            authority_id=record.id, certificate=cert, private_key=key, chain=(cert,)
        )

    def next_rotation_check(self) -> datetime:
        """The earliest instant at which :meth:`rotate_if_due` may have work to do."""
        times: list[datetime] = []
        for signer_start, signer_end in self._lifetimes():
            life = signer_end - signer_start
            times += [signer_start + life / 2, signer_end - life / 6]
        now = utc(self._clock.now())
        future = [t for t in times if t > now]
        return min(future) if future else now

    def _lifetimes(self) -> list[tuple[datetime, datetime]]:
        out: list[tuple[datetime, datetime]] = []
        if self._x509 is not None:
            cert = self._x509.certificate
            out.append((cert.not_valid_before_utc, cert.not_valid_after_utc))
        if self._jwt is not None:
            out.append((self._jwt.not_after - self._config.jwt_key_ttl, self._jwt.not_after))
        return out

    async def list_authorities(self) -> tuple[AuthorityInfo, ...]:
        """Every authority in the store, all replicas, roots first."""
        records = await self._store.list_authorities()
        order = {
            AuthorityKind.X509_ROOT: 0,
            AuthorityKind.X509_INTERMEDIATE: 1,
            AuthorityKind.JWT: 2,
        }
        ordered = sorted(records, key=lambda r: (order[r.kind], r.owner, r.not_before, r.id))
        return tuple(AuthorityInfo.from_record(r) for r in ordered)


def _fields(record: AuthorityRecord) -> dict[str, str]:
    return {F.AUTHORITY_ID: record.id, F.KIND: record.kind.value}
