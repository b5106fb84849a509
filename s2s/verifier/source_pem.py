"""An X.509 source read from PEM files and reloaded when they change, for services without an agent.

``chain`` holds the leaf then its intermediates, ``key`` the leaf's private key, ``bundle`` the
trusted roots (PEM) or a SPIFFE bundle (JSON); ``federated`` maps other trust domains to their
bundle files (``s2s-agent api fetch x509 --write`` writes ``federated.<td>.pem``), each kept as
that trust domain's own bundle, never merged into ours. The files are polled for a new inode, size
or mtime; a version that does not load keeps the last good snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s2s.core.bundle import Bundle, BundleSet
from s2s.core.errors import InvalidConfig, InvalidRequest, S2SError
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import X509Svid, check_x509_svid
from s2s.log import F
from s2s.verifier.source_common import DEFAULT_START_TIMEOUT, Subscribers, cancel_task
from s2s.verifier.x509context import X509Callback, X509Context

__all__ = ["PemFileX509Source"]

_MAX_PEM_BYTES = 1 << 20
_PathLike = str | os.PathLike[str]
# The log records keep the name they had before this module was split out of source.py.
_log = logging.getLogger(__name__)


class PemFileX509Source:
    """An ``X509SourceLike`` read from PEM files and reloaded when they change (no agent).

    ``chain`` holds the leaf then its intermediates, ``key`` the leaf's private key, ``bundle``
    the trusted roots of our trust domain (PEM) or a SPIFFE bundle (JSON); ``federated`` the
    bundle file of each federated trust domain (``{"other.org": "federated.other.org.pem"}``).
    Files are checked every ``poll_interval`` seconds after :meth:`start`; a change that does not
    load (a half-written rotation, a key that does not match) keeps the last good snapshot and
    sets ``error``.
    """

    def __init__(
        self,
        chain: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        *,
        federated: Mapping[str, _PathLike] | Mapping[TrustDomain, _PathLike] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        try:
            items: list[tuple[str | TrustDomain, _PathLike]] = list((federated or {}).items())
            foreign = {_trust_domain(td): Path(path) for td, path in items}
        except InvalidRequest as exc:
            raise InvalidConfig(f"federated: {exc}") from exc
        self._federated = tuple(foreign.items())
        self._paths = (Path(chain), Path(key), Path(bundle), *foreign.values())
        self._interval = poll_interval
        self._subscribers: Subscribers[X509Context] = Subscribers()
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        try:
            self._stamp = self._file_stamp()
            self._context = self._load()
        except InvalidRequest as exc:
            raise InvalidConfig(f"cannot load the SVID files: {exc}") from exc

    def current(self) -> X509Context:
        return self._context

    def subscribe(self, callback: X509Callback) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Begin polling the files (the first snapshot was loaded by the constructor)."""
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="s2s-PemFileX509Source")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)

    async def __aenter__(self) -> PemFileX509Source:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reload(self) -> bool:
        """Reload if a file changed; True when a new snapshot was installed."""
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # a broken version is reported once, retried on the next change
            context = self._load()
        except InvalidRequest as exc:
            self.error = str(exc)
            _log.error("source.reload_failed", extra={F.ERROR: str(exc)})
            return False
        self.error = None
        if context == self._context:
            return False
        self._context = context
        _log.info("source.reloaded", extra={F.SPIFFE_ID: str(context.default_svid.spiffe_id)})
        self._subscribers.notify(context)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.reload()

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, self._paths))
        except OSError as exc:
            raise InvalidRequest(f"cannot stat {exc.filename}: {exc.strerror}") from exc

    def _load(self) -> X509Context:
        chain_pem, key_pem, bundle_data = (_read(p) for p in self._paths[:3])
        try:
            chain = tuple(x509.load_pem_x509_certificates(chain_pem))
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"the chain or key file is not usable PEM: {exc}") from exc
        try:
            spiffe_id = check_x509_svid(chain)
        except S2SError as exc:
            raise InvalidRequest(f"{self._paths[0]} is not an X509-SVID: {exc}") from exc
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise InvalidRequest(f"{self._paths[1]} is not the key of {self._paths[0]}")
        own = spiffe_id.trust_domain
        bundles = [_bundle(own, bundle_data, self._paths[2])]
        for td, path in self._federated:
            if td == own:
                raise InvalidRequest(f"{path}: {td} is our own trust domain, not a federated one")
            bundles.append(_bundle(td, _read(path), path))
        return X509Context((X509Svid(spiffe_id, chain, key),), BundleSet.of(*bundles))


def _trust_domain(value: str | TrustDomain) -> TrustDomain:
    if isinstance(value, TrustDomain):
        return value
    try:
        return TrustDomain.parse(value)
    except S2SError as exc:
        raise InvalidRequest(str(exc)) from exc


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _MAX_PEM_BYTES:
        raise InvalidRequest(f"{path} is larger than {_MAX_PEM_BYTES} bytes")
    return data


def _bundle(td: TrustDomain, data: bytes, path: Path) -> Bundle:
    try:
        if data.lstrip().startswith(b"{"):
            bundle = Bundle.decode(td, data)
        else:
            bundle = Bundle.from_x509_pem(td, data)
    except S2SError as exc:
        raise InvalidRequest(f"{path} is not a bundle: {exc}") from exc
    if not bundle.x509_authorities:
        raise InvalidRequest(f"{path} holds no root certificate")
    return bundle


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
