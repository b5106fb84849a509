"""The CA's SPIFFE bundle endpoint (SPIFFE_Federation.md 4, 5.2): this trust domain's bundle, as
SPIFFE bundle JSON with ``spiffe_sequence`` and ``spiffe_refresh_hint``, on its own HTTPS listener.

Off by default. Two profiles: ``https_spiffe`` presents an X509-SVID of this trust domain
(reissued at half-life and when a new intermediate signs), ``https_web`` presents the operator's
Web PKI certificate and key, reloaded when either file changes (a broken new pair is logged and
the last good one kept). No client authentication is asked for (5.2.1.3, 5.2.2.3): any client
may read a bundle. Each credential gets a new context; handshakes pick the newest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography import x509

from s2s.ca.config import ServerLimits
from s2s.ca.federation_config import BundleEndpointSettings, parse_host_port
from s2s.ca.http_guard import GUARD, ConnectionGuard, GuardedSite, request_deadlines
from s2s.core.bundle import Bundle
from s2s.core.clock import Clock
from s2s.core.errors import InvalidConfig
from s2s.core.federation import EndpointProfile
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import X509Svid
from s2s.log import F
from s2s.verifier.memcert import load_cert_chain_from_memory

__all__ = ["ENDPOINT_LIMITS", "BundleEndpoint"]

log = logging.getLogger(__name__)

# Anyone may read a bundle; these bounds keep a flood of readers from holding descriptors the CA
# needs for its agents.
ENDPOINT_LIMITS: Final = ServerLimits(
    max_connections=512, max_connections_per_ip=32, max_long_polls=1, keepalive_timeout=15.0
)
_FileState = tuple[tuple[int, int, int], ...]


def _endpoint_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # servers MUST NOT require client authentication
    return context


class BundleEndpoint:
    """The bundle endpoint: settings, the credential it presents, the listener."""

    def __init__(
        self,
        *,
        settings: BundleEndpointSettings,
        bundle: Callable[[], Bundle],
        issue: Callable[[SpiffeId], Awaitable[X509Svid]],
        signer: Callable[[], x509.Certificate],
        spiffe_id: SpiffeId,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self._bundle = bundle
        self._issue = issue
        self._signer = signer
        self.spiffe_id = spiffe_id
        self._clock = clock
        self._hint = int(settings.refresh_hint.total_seconds())
        self._svid: X509Svid | None = None
        self._files: _FileState | None = None
        self._document: tuple[Bundle, bytes] | None = None
        self.context = _endpoint_context()
        self.context.sni_callback = self._select
        self._current = self.context
        self._runner: web.AppRunner | None = None
        self.guard = ConnectionGuard(ENDPOINT_LIMITS)
        self.port = 0

    @property
    def svid(self) -> X509Svid | None:
        """The SVID an https_spiffe endpoint presents now (None for https_web)."""
        return self._svid

    def document(self) -> bytes:
        """The SPIFFE bundle JSON served: our bundle with the configured refresh hint (encoded
        once per bundle: anyone may ask, as often as they like)."""
        bundle = self._bundle()
        cached = self._document
        if cached is None or cached[0] is not bundle:
            cached = (bundle, dataclasses.replace(bundle, refresh_hint=self._hint).encode())
            self._document = cached
        return cached[1]

    # -- the credential ------------------------------------------------------------------------

    async def reload(self, *, force: bool = False) -> bool:
        """Renew the SVID (https_spiffe) or pick up changed files (https_web); True if changed."""
        if self.settings.profile is EndpointProfile.HTTPS_WEB:
            return self._reload_files(force=force)
        svid = self._svid
        if not force and svid is not None and not self._due(svid):
            return False
        svid = await self._issue(self.spiffe_id)
        context = self.context if self._svid is None else _endpoint_context()
        load_cert_chain_from_memory(context, svid.chain_pem(), svid.key_pem())
        self._current, self._svid = context, svid
        log.info(
            "federation.endpoint.svid",
            extra={F.SPIFFE_ID: str(svid.spiffe_id), F.SERIAL: format(svid.serial, "x")},
        )
        return True

    def _due(self, svid: X509Svid) -> bool:
        half_life = svid.not_before + (svid.not_after - svid.not_before) / 2
        return self._clock.now() >= half_life or svid.cert_chain[1:2] != (self._signer(),)

    def _reload_files(self, *, force: bool) -> bool:
        cert, key = self.settings.cert_file, self.settings.key_file
        assert cert is not None
        assert key is not None
        try:
            state = _file_state(cert, key)
        except OSError as exc:
            if self._files is None:
                raise InvalidConfig(f"bundle endpoint certificate or key: {exc}") from exc
            log.warning("federation.endpoint.files_unreadable", extra={F.ERROR: str(exc)})
            return False
        if state == self._files and not force:
            return False
        context = self.context if self._files is None else _endpoint_context()
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            message = f"cannot load the bundle endpoint certificate {cert} with key {key}: {exc}"
            if self._files is None:
                raise InvalidConfig(message) from exc
            # A half-written renewal: keep serving the last good pair, try again next time.
            log.warning("federation.endpoint.files_refused", extra={F.ERROR: message})
            return False
        self._current, self._files = context, state
        log.info("federation.endpoint.certificate", extra={F.PATH: str(cert)})
        return True

    def _select(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        ssl_object.context = self._current

    # -- the listener --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the credential, then listen on the configured address."""
        await self.reload(force=True)
        host, port = parse_host_port(self.settings.address, setting="federation.bundle_endpoint")
        app = web.Application(middlewares=[request_deadlines], client_max_size=1024)
        app[GUARD] = self.guard
        app.router.add_get("/", self._get_bundle)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
            keepalive_timeout=ENDPOINT_LIMITS.keepalive_timeout,
        )  # fmt: skip
        await runner.setup()
        self._runner = runner
        site = GuardedSite(runner, host, port, ssl_context=self.context, guard=self.guard)
        try:
            await site.start()
        except OSError as exc:
            raise InvalidConfig(
                f"cannot listen on federation.bundle_endpoint {self.settings.address}: "
                f"{exc.strerror}"
            ) from exc
        self.port = site.port
        log.info(
            "federation.endpoint.started",
            extra={F.ADDRESS: f"{host}:{self.port}", F.KIND: self.settings.profile.value},
        )

    async def _get_bundle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.document(), content_type="application/json")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _file_state(*paths: Path) -> _FileState:
    """What tells a replaced file from the old one: inode, size and modification time."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
