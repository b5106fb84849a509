"""One soak workload: an mTLS service, a JWT service and a client calling every other workload.

    python -m bench.soak.workload --name alpha --spiffe-id spiffe://soak.test/w/alpha \\
        --uid 64101 --socket /tmp/x/agent-a.sock --revocations crl --listen 41001 \\
        --peer bravo=spiffe://soak.test/w/bravo@41002,41003 ...

Its identity comes from the agent (``X509Source``, ``JwtSource``); its revocations come from one
of the three paths (``crl``: the CRLs the agent pushes, ``etcd``: ``EtcdRevocationFeed``,
``ca``: ``CaRevocationFeed``), used by its server and its client alike; a ``crl`` workload checks
JWT-SVIDs against the agent's revocation stream (``JwtSource.revocations``). Every verdict of its
verifiers and every call of its client is one JSON line on stdout, with wall-clock times, so that
the harness can classify each call (see :mod:`bench.soak.accounting`):

* ``verdict``: a peer accepted or refused (``side`` server/client, ``kind`` x509/jwt, the peer's
  SPIFFE ID, serial, notBefore/notAfter, or jti/iat, and the refusal reason);
* ``call``: one call of the client (``kind``, ``to``, start and end, outcome, the serial or jti
  it presented, ``probe`` when it presented a credential it held earlier, not the current one).

Probe calls keep presenting recently rotated SVIDs and JWT-SVIDs until shortly before they
expire: a credential is valid until it expires or is revoked, so a revoked one must be refused by
every verifier within the bound, and an unrevoked one must keep being accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from cryptography import x509

# Imported before the privilege drop: the interpreter may live where the workload uid cannot read.
import s2s.etcd.client  # noqa: F401
from s2s.core.errors import InvalidToken, S2SError, Unavailable
from s2s.core.revocation import RevocationLookup
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.demo.workload import drop_privileges, preload, set_parent_death_signal, start_source
from s2s.log import configure_logging
from s2s.verifier.authorize import authorize_id, authorize_member_of
from s2s.verifier.feeds import RevocationFeed
from s2s.verifier.feeds_ca import CaRevocationFeed
from s2s.verifier.feeds_etcd import EtcdRevocationFeed
from s2s.verifier.jwt import JwtValidator
from s2s.verifier.metrics import PeerMetrics
from s2s.verifier.peer import PeerRejected
from s2s.verifier.source import JwtSource, X509Source
from s2s.verifier.source_static import StaticX509Source
from s2s.verifier.tls import SpiffeSSLContext, client_context, server_context
from s2s.verifier.workload_client import JwtSvid
from s2s.verifier.x509context import X509Context, X509SourceLike

__all__ = ["Peer", "main"]

START_TIMEOUT: Final = 90.0
CALL_TIMEOUT: Final = 5.0
PROBE_MARGIN: Final = 3.0  # seconds: a held credential this close to expiry is not presented
HELD: Final = 2  # earlier SVIDs / JWT-SVIDs kept for probe calls
PATHS: Final = ("crl", "etcd", "ca")


def emit(record: str, /, **fields: Any) -> None:
    line = {"k": record, "t": round(time.time(), 4), **fields}
    sys.stdout.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def _epoch(cert: x509.Certificate) -> tuple[float, float]:
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _cert_fields(der: bytes | None) -> dict[str, Any]:
    if not der:
        return {}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    nb, na = _epoch(cert)
    return {"serial": format(cert.serial_number, "x"), "nb": nb, "na": na}


def jwt_claims(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT (for the record only: jti, iat, sub)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class Peer:
    """Another workload: its name, SPIFFE ID, mTLS port and JWT port (0: none)."""

    name: str
    spiffe_id: SpiffeId
    port: int
    jwt_port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``name=spiffe://td/path@port[,jwt_port]``."""
        try:
            name, rest = text.split("=", 1)
            sid, ports = rest.rsplit("@", 1)
            port, _, jwt_port = ports.partition(",")
            return cls(name, SpiffeId.parse(sid), int(port), int(jwt_port or 0))
        except (ValueError, S2SError) as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not name=SPIFFE_ID@PORT[,JWT_PORT]"
            ) from exc


def instrument(ctx: SpiffeSSLContext, name: str, side: str, path: str) -> None:
    """Emit a ``verdict`` for every peer this context's verifier accepts or refuses.

    The verifier is the one the handshakes of ``ctx`` call (``ctx.s2s.verifier``); wrapping its
    bound methods on this instance adds the peer's serial to what the metrics already count.
    """
    verifier = ctx.s2s.verifier
    verify, failed = verifier.verify, verifier.handshake_failed

    def verified(ssl_object: Any) -> SpiffeId:
        try:
            der = ssl_object.getpeercert(binary_form=True)
        except (ValueError, ssl.SSLError):
            der = None
        try:
            sid = verify(ssl_object)
        except PeerRejected as exc:
            emit(
                "verdict",
                w=name,
                side=side,
                kind="x509",
                path=path,
                ok=False,
                reason=exc.reason,
                peer=str(exc.spiffe_id or ""),
                **_cert_fields(der),
            )
            raise
        emit(
            "verdict",
            w=name,
            side=side,
            kind="x509",
            path=path,
            ok=True,
            peer=str(sid),
            **_cert_fields(der),
        )
        return sid

    def handshake_failed(exc: ssl.SSLError) -> ssl.SSLError:
        out = failed(exc)
        if isinstance(out, PeerRejected):
            emit("verdict", w=name, side=side, kind="x509", path=path, ok=False, reason=out.reason)
        return out

    verifier.verify = verified  # type: ignore[method-assign]
    verifier.handshake_failed = handshake_failed  # type: ignore[method-assign]


class Workload:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.path: str = args.revocations
        self.td = TrustDomain.parse(args.trust_domain)
        self.source = X509Source(socket=args.socket)
        self.jwts = JwtSource(socket=args.socket)
        self.feed: RevocationFeed | None = None
        self.stop = asyncio.Event()
        self.held_svids: deque[Any] = deque(maxlen=HELD)
        self.held_tokens: dict[str, deque[str]] = {}
        self._serial: int | None = None
        self._previous: Any = None

    @property
    def revocations(self) -> RevocationLookup:
        return self.feed if self.feed is not None else self.source.revocations

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        emit("starting", w=self.name, path=self.path)
        if not await start_source(self.source, self.stop, START_TIMEOUT):
            return
        try:
            if not await start_source(self.jwts, self.stop, START_TIMEOUT):
                return
            self.feed = await self._open_feed()
            self.source.subscribe(self._rotated)
            self._rotated(self.source.current())
            await self._serve_and_call()
        finally:
            if self.feed is not None:
                await self.feed.stop()
            await self.jwts.close()
            await self.source.close()
            emit("stopped", w=self.name)

    async def _open_feed(self) -> RevocationFeed | None:
        if self.path == "crl":
            return None
        feed: RevocationFeed
        if self.path == "etcd":
            feed = await EtcdRevocationFeed.connect(self.args.etcd, self.td)
        else:
            feed = CaRevocationFeed.over_https(self.args.ca_url, self.source, trust_domain=self.td)
        await feed.start(timeout=START_TIMEOUT)
        return feed

    def _rotated(self, context: X509Context) -> None:
        svid = context.default_svid
        if svid.serial == self._serial:
            return
        if self._serial is not None:
            self.held_svids.append(self._previous)
        self._serial, self._previous = svid.serial, svid
        nb, na = _epoch(svid.leaf)
        emit(
            "svid",
            w=self.name,
            serial=format(svid.serial, "x"),
            nb=nb,
            na=na,
            issuer=format(svid.cert_chain[1].serial_number, "x")
            if len(svid.cert_chain) > 1
            else "",
        )

    # -- server ----------------------------------------------------------------------------------

    async def _serve_and_call(self) -> None:
        ctx = server_context(
            self.source,
            authorize=authorize_member_of(self.td),
            revocations=self.revocations,
            metrics=PeerMetrics(registry=_registry()),
        )
        instrument(ctx, self.name, "server", self.path)
        runners: list[web.AppRunner] = []
        try:
            app = web.Application()
            app.router.add_get("/x", self._x509_handler)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            from s2s.verifier.aiohttp import SpiffeTCPSite  # noqa: PLC0415

            await SpiffeTCPSite(runner, "127.0.0.1", self.args.listen, ssl_context=ctx).start()
            if self.args.jwt_listen:
                # CRLs carry serials only: without a feed of its own, a workload checks JWT-SVIDs
                # against the agent's revocation stream (the JwtSource's own, the default).
                validator = (
                    JwtValidator(self.jwts, self.name, revocations=self.feed)
                    if self.feed is not None
                    else JwtValidator(self.jwts, self.name)
                )
                japp = web.Application()
                japp.router.add_post("/j", self._jwt_handler(validator))
                jrunner = web.AppRunner(japp, access_log=None, handle_signals=False)
                await jrunner.setup()
                runners.append(jrunner)
                await web.TCPSite(jrunner, "127.0.0.1", self.args.jwt_listen).start()
            emit("listening", w=self.name, port=self.args.listen, jwt_port=self.args.jwt_listen)
            if not await self._go():
                return
            async with asyncio.TaskGroup() as group:
                for peer in self.args.peer:
                    group.create_task(self._call_loop(peer))
                group.create_task(self._until_stopped())
        finally:
            for runner in runners:
                await runner.cleanup()

    async def _go(self) -> bool:
        """Wait for the harness's ``go`` line on stdin (every peer listens); False if stopped."""
        reading = asyncio.create_task(asyncio.to_thread(sys.stdin.readline))
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return reading.done() and reading.result().strip() == "go"

    async def _until_stopped(self) -> None:
        await self.stop.wait()

    async def _x509_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self.name})

    def _jwt_handler(self, validator: JwtValidator) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            claims = jwt_claims(token)
            fields = {
                "jti": claims.get("jti"),
                "iat": claims.get("iat"),
                "exp": claims.get("exp"),
                "peer": claims.get("sub"),
            }
            try:
                validated = validator.validate(token)
            except InvalidToken as exc:
                emit(
                    "verdict",
                    w=self.name,
                    side="server",
                    kind="jwt",
                    path=self.path,
                    ok=False,
                    reason=exc.reason,
                    **fields,
                )
                return web.json_response({"reason": exc.reason}, status=401)
            except Unavailable as exc:
                emit(
                    "verdict",
                    w=self.name,
                    side="server",
                    kind="jwt",
                    path=self.path,
                    ok=False,
                    reason="unavailable",
                    error=str(exc),
                    **fields,
                )
                return web.json_response({"reason": "unavailable"}, status=503)
            emit(
                "verdict",
                w=self.name,
                side="server",
                kind="jwt",
                path=self.path,
                ok=True,
                **{**fields, "peer": str(validated.spiffe_id)},
            )
            return web.json_response({"server": self.name})

        return handler

    # -- client ----------------------------------------------------------------------------------

    def _session(self, source: X509SourceLike, peer: Peer) -> aiohttp.ClientSession:
        ctx = client_context(
            source,
            authorize=authorize_id(peer.spiffe_id),
            revocations=self.revocations,
            metrics=PeerMetrics(registry=_registry()),
        )
        instrument(ctx, self.name, "client", self.path)
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)  # one handshake per call
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        )

    async def _call_loop(self, peer: Peer) -> None:
        main = self._session(self.source, peer)
        probes: dict[int, _Probe] = {}
        plain = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
        tick = 0
        try:
            while not self.stop.is_set():
                tick += 1
                own = self.source.current().default_svid
                await self._x509_call(main, peer, own.serial, probe=False)
                if peer.jwt_port:
                    await self._jwt_call(plain, peer, probe=False)
                held = self._held_svid(tick)
                if held is not None:
                    for old in set(probes) - {s.serial for s in self.held_svids}:
                        await probes.pop(old).close()
                    probe = probes.get(held.serial)
                    if probe is None:
                        probe = probes[held.serial] = _Probe.open(self, held, peer)
                    await self._x509_call(probe.session, peer, held.serial, probe=True)
                if peer.jwt_port:
                    token = self._held_token(peer, tick)
                    if token is not None:
                        await self._jwt_call(plain, peer, probe=True, token=token)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.interval)
        finally:
            await main.close()
            await plain.close()
            for probe in probes.values():
                await probe.close()

    def _held_svid(self, tick: int) -> Any:
        now = time.time()
        usable = [s for s in self.held_svids if _epoch(s.leaf)[1] - now > PROBE_MARGIN]
        return usable[tick % len(usable)] if usable else None

    def _held_token(self, peer: Peer, tick: int) -> str | None:
        now = time.time()
        held = self.held_tokens.get(peer.name, deque())
        current = held[-1] if held else None
        usable = [
            t
            for t in held
            if t != current and float(jwt_claims(t).get("exp", 0)) - now > PROBE_MARGIN
        ]
        return usable[tick % len(usable)] if usable else None

    async def _x509_call(
        self, session: aiohttp.ClientSession, peer: Peer, serial: int, *, probe: bool
    ) -> None:
        t0 = time.time()
        try:
            async with session.get(f"https://127.0.0.1:{peer.port}/x") as response:
                await response.read()
                ok, status, error = response.status == 200, response.status, ""
        except (aiohttp.ClientError, OSError, TimeoutError, S2SError) as exc:
            ok, status, error = False, 0, f"{type(exc).__name__}: {exc}"[:300]
        emit(
            "call",
            w=self.name,
            kind="x509",
            to=peer.name,
            t0=round(t0, 4),
            ok=ok,
            status=status,
            error=error,
            serial=format(serial, "x"),
            probe=probe,
        )

    async def _jwt_call(
        self, session: aiohttp.ClientSession, peer: Peer, *, probe: bool, token: str | None = None
    ) -> None:
        t0 = time.time()
        if token is None:
            held = self.held_tokens.setdefault(peer.name, deque(maxlen=HELD + 1))
            try:
                svid: JwtSvid = await self.jwts.fetch_jwt_svid(peer.name)
            except S2SError as exc:
                # The agent is away (restarting): a client keeps using the token it has.
                last = held[-1] if held else None
                if last is not None and float(jwt_claims(last).get("exp", 0)) > time.time() + 1:
                    await self._jwt_call(session, peer, probe=probe, token=last)
                    return
                emit(
                    "call",
                    w=self.name,
                    kind="jwt",
                    to=peer.name,
                    t0=round(t0, 4),
                    ok=False,
                    status=0,
                    error=f"fetch: {type(exc).__name__}: {exc}"[:300],
                    probe=probe,
                )
                return
            token = svid.token
            if not held or held[-1] != token:
                held.append(token)
        claims = jwt_claims(token)
        reason = ""
        try:
            async with session.post(
                f"http://127.0.0.1:{peer.jwt_port}/j", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.read()
                ok, status, error = response.status == 200, response.status, ""
                if not ok:
                    with contextlib.suppress(ValueError):
                        reason = str(json.loads(body).get("reason", ""))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, status, error = False, 0, f"{type(exc).__name__}: {exc}"[:300]
        emit(
            "call",
            w=self.name,
            kind="jwt",
            to=peer.name,
            t0=round(t0, 4),
            ok=ok,
            status=status,
            error=error,
            reason=reason,
            jti=claims.get("jti"),
            iat=claims.get("iat"),
            probe=probe,
        )


@dataclass(slots=True)
class _Probe:
    """A client session presenting one SVID held from before a rotation (bundles kept current)."""

    session: aiohttp.ClientSession
    unsubscribe: Callable[[], None]

    @classmethod
    def open(cls, workload: Workload, svid: Any, peer: Peer) -> _Probe:
        static = StaticX509Source(X509Context((svid,), workload.source.current().bundles))

        def follow(context: X509Context) -> None:
            if context.bundles != static.current().bundles:
                static.set_bundles(context.bundles)

        unsubscribe = workload.source.subscribe(follow)
        return cls(workload._session(static, peer), unsubscribe)

    async def close(self) -> None:
        self.unsubscribe()
        await self.session.close()


def _registry() -> Any:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    return CollectorRegistry()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak.workload", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--trust-domain", required=True)
    parser.add_argument("--socket", required=True, help="the agent's Workload API socket")
    parser.add_argument("--uid", type=int, help="drop from root to this uid first")
    parser.add_argument("--revocations", choices=PATHS, required=True)
    parser.add_argument("--etcd", default="", help="etcd endpoints (host:port,...)")
    parser.add_argument("--ca-url", action="append", default=[])
    parser.add_argument("--listen", type=int, required=True, help="mTLS port")
    parser.add_argument("--jwt-listen", type=int, default=0, help="JWT port (0: none)")
    parser.add_argument("--peer", type=Peer.parse, action="append", default=[])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between rounds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level="WARNING")
    try:
        if args.uid is not None:
            preload()
            drop_privileges(args.uid)
        else:
            set_parent_death_signal()
        asyncio.run(Workload(args).run())
    except S2SError as exc:
        emit("error", w=args.name, error=f"{type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
