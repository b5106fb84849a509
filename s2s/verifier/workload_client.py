"""An asyncio client of the SPIFFE Workload API (SPIFFE_Workload_API.md, _Endpoint.md).

It finds the agent through an explicit socket or ``SPIFFE_ENDPOINT_SOCKET`` (``unix:///path``),
sends the ``workload.spiffe.io: true`` header on every call, and turns every response into core
objects (:class:`X509Svid`, :class:`BundleSet`) after checking them: each SVID chain passes
``check_x509_svid`` and names the SPIFFE ID it is served under, and each key matches its leaf.
gRPC errors are translated here, once, into ``s2s.core.errors``.

Watches are single streams: they yield every update and end by raising. Reconnecting with backoff
and keeping the last good snapshot is the job of the sources built on top (issue 5 item 1).

:meth:`WorkloadApiClient.watch_revocations` calls the s2s extension
``s2s.agent.v1.Revocations/WatchRevocations`` on the same socket (the agent's revocation set, by
serial, ``jti`` and SPIFFE ID); an agent that does not serve it (SPIRE, an older s2s agent)
answers UNIMPLEMENTED, raised as :class:`NotServed`.

    async with WorkloadApiClient() as client:
        context = await client.fetch_x509_context()
        token = await client.fetch_jwt_svid("billing")
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import jwt

from s2s.core.bundle import BundleSet
from s2s.core.errors import (
    InvalidConfig,
    InvalidRequest,
    InvalidSvid,
    InvalidToken,
    NotAuthorized,
    S2SError,
    Unavailable,
)
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.core.spiffe_id import SpiffeId
from s2s.verifier import workload_parse as parse
from s2s.verifier.x509context import X509Context
from s2s.workload_proto import health_pb2 as hpb
from s2s.workload_proto import s2s_revocations_pb2 as rpb
from s2s.workload_proto import workload_pb2 as pb

__all__ = [
    "ENDPOINT_ENV",
    "JwtSvid",
    "NotServed",
    "RevocationsUpdate",
    "WorkloadApiClient",
    "X509Update",
    "resolve_endpoint",
]

ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"
_METADATA = (("workload.spiffe.io", "true"),)
_SERVICE = "/SpiffeWorkloadAPI/"
_REVOCATIONS = "/s2s.agent.v1.Revocations/WatchRevocations"  # the s2s extension
_HEALTH = "/grpc.health.v1.Health/Check"  # gRPC health checking protocol, served by s2s agents
_MAX_RECEIVE = 64 * 1024 * 1024  # a large revocation set (~150 bytes a record) is one message
_BIG_RECORDS = 1024 * 1024  # bytes of records JSON parsed in a thread
_MAX_TIMING = 24 * 3600.0  # seconds; an agent's lag_after or heartbeat above this is nonsense
_REASON_TRAILER = "s2s-reason"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs predate aio.EOF
_M = TypeVar("_M")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A JWT-SVID fetched from the agent. ``audience``/``expiry`` are read, not verified."""

    spiffe_id: SpiffeId
    token: str
    audience: tuple[str, ...]
    expiry: datetime
    hint: str = ""


class NotServed(Unavailable):
    """The agent does not serve this call (gRPC UNIMPLEMENTED): it is not an s2s agent, or an
    older one."""


@dataclass(frozen=True, slots=True)
class RevocationsUpdate:
    """One WatchRevocations message. ``records`` is the whole set at ``revision`` (None: a
    heartbeat), or, when ``base`` is not None (a delta), the records put into the set at
    ``base`` after dropping the keys of ``removed``; ``age`` the seconds since the agent last
    confirmed its set complete (None: it has not synced yet); ``lag_after`` and ``heartbeat``
    are the agent's own timings; ``epoch`` the store its set comes from ("": not named)."""

    revision: int
    records: tuple[RevocationRecord, ...] | None
    age: float | None
    lag_after: float
    heartbeat: float
    base: int | None = None
    removed: tuple[tuple[RevocationKind, str, str], ...] = ()
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class X509Update:
    """One FetchX509SVID message: the context plus the agent's DER CRLs."""

    context: X509Context
    crls: tuple[bytes, ...]


def resolve_endpoint(socket: str | None = None, *, environ: Mapping[str, str] | None = None) -> str:
    """The Unix socket path to use: ``socket`` if given, else ``SPIFFE_ENDPOINT_SOCKET``.

    ``socket`` may be an absolute path or a ``unix:`` URI; the variable must be a URI (Workload
    Endpoint section 4). Raises :class:`InvalidConfig` saying what is wrong.
    """
    if socket:
        if socket.startswith("/"):
            return socket
        return _parse_uri(socket, "the socket argument")
    value = (os.environ if environ is None else environ).get(ENDPOINT_ENV, "")
    if not value:
        raise InvalidConfig(
            f"no Workload API socket: pass a socket or set {ENDPOINT_ENV}=unix:///path/to/agent.sock"
        )
    return _parse_uri(value, ENDPOINT_ENV)


def _parse_uri(value: str, where: str) -> str:
    if value.startswith("/"):
        raise InvalidConfig(f"{where} must be a URI: did you mean 'unix://{value}'?")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise InvalidConfig(f"{where} {value!r} is not a URI: {exc}") from exc
    if parts.scheme == "tcp":
        raise InvalidConfig(
            f"{where} {value!r}: TCP endpoints are not supported; the agent serves a Unix socket "
            "(unix:///path/to/agent.sock)"
        )
    if parts.scheme != "unix":
        raise InvalidConfig(f"{where} {value!r} must use the unix scheme: unix:///path")
    if parts.netloc:
        raise InvalidConfig(
            f"{where} {value!r} must not have an authority: use three slashes, unix:///path"
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidConfig(f"{where} {value!r} must not have a query or fragment")
    if not parts.path.startswith("/"):
        raise InvalidConfig(f"{where} {value!r} needs an absolute path: unix:///path")
    return parts.path


class WorkloadApiClient:
    """Calls the Workload API; create and use it inside one event loop."""

    def __init__(
        self,
        socket: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.socket_path = resolve_endpoint(socket, environ=environ)
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> WorkloadApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    # -- X.509 ------------------------------------------------------------------------------

    async def fetch_x509_context(self) -> X509Context:
        """This workload's X509-SVIDs (first = default) and the bundles it trusts."""
        return (await self.fetch_x509_update()).context

    async def fetch_x509_update(self) -> X509Update:
        return _x509_update(await self._first("FetchX509SVID", pb.X509SVIDRequest()))

    async def watch_x509_context(self) -> AsyncIterator[X509Context]:
        async for update in self.watch_x509_updates():
            yield update.context

    async def watch_x509_updates(self) -> AsyncIterator[X509Update]:
        async for message in self._watch("FetchX509SVID", pb.X509SVIDRequest()):
            yield _x509_update(message)

    async def fetch_x509_bundles(self) -> BundleSet:
        message = await self._first("FetchX509Bundles", pb.X509BundlesRequest())
        return parse.x509_bundles(message.bundles.items())

    # -- JWT --------------------------------------------------------------------------------

    async def fetch_jwt_svid(
        self, audience: str | Sequence[str], spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """The default (or the named) identity's JWT-SVID for ``audience``."""
        return (await self.fetch_jwt_svids(audience, spiffe_id))[0]

    async def fetch_jwt_svids(
        self, audience: str | Sequence[str], spiffe_id: SpiffeId | str | None = None
    ) -> tuple[JwtSvid, ...]:
        auds = [audience] if isinstance(audience, str) else list(audience)
        if not auds or not all(auds):
            raise InvalidRequest("a JWT-SVID needs at least one non-empty audience")
        wanted = str(SpiffeId.parse(str(spiffe_id))) if spiffe_id is not None else ""
        request = pb.JWTSVIDRequest(audience=auds, spiffe_id=wanted)
        response = await self._unary("FetchJWTSVID", request, pb.JWTSVIDResponse)
        svids = tuple(_jwt_svid(s) for s in response.svids)
        if not svids:
            raise InvalidSvid("the agent returned no JWT-SVID", rule="response")
        return svids

    async def fetch_jwt_bundles(self) -> BundleSet:
        message = await self._first("FetchJWTBundles", pb.JWTBundlesRequest())
        return parse.jwt_bundles(message.bundles.items())

    async def watch_jwt_bundles(self) -> AsyncIterator[BundleSet]:
        async for message in self._watch("FetchJWTBundles", pb.JWTBundlesRequest()):
            yield parse.jwt_bundles(message.bundles.items())

    async def validate_jwt_svid(
        self, token: str, audience: str
    ) -> tuple[SpiffeId, Mapping[str, Any]]:
        """Have the agent validate ``token`` for ``audience``; :class:`InvalidToken` if rejected."""
        if not token or not audience:
            raise InvalidRequest("both a token and an audience are required")
        request = pb.ValidateJWTSVIDRequest(audience=audience, svid=token)
        response = await self._unary("ValidateJWTSVID", request, pb.ValidateJWTSVIDResponse)
        return parse.spiffe_id(response.spiffe_id), parse.claims(response.claims)

    # -- s2s extension: revocations -----------------------------------------------------------

    async def watch_revocations(self, *, deltas: bool = False) -> AsyncIterator[RevocationsUpdate]:
        """The agent's revocation set, then every change and a heartbeat every few seconds;
        with ``deltas``, a change may carry only what changed since the previous message.

        Raises :class:`NotServed` when the agent does not serve the s2s extension."""
        request = rpb.WatchRevocationsRequest(deltas=deltas)
        async for message in self._watch("WatchRevocations", request):
            if len(message.records_json) > _BIG_RECORDS:  # thousands of records: off the loop
                yield await asyncio.to_thread(_revocations_update, message)
            else:
                yield _revocations_update(message)

    # -- gRPC health --------------------------------------------------------------------------

    async def check_health(self) -> str:
        """The agent's ``grpc.health.v1.Health/Check`` status name (``SERVING`` when it serves).

        Needs no identity, and the agent does not count it as a Workload API call;
        :class:`NotServed` from an agent that does not answer health checks."""
        call = self._channel_now().unary_unary(
            _HEALTH,
            request_serializer=_serialize,
            response_deserializer=hpb.HealthCheckResponse.FromString,
        )
        try:
            response = await call(hpb.HealthCheckRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, "Health/Check") from exc
        return hpb.HealthCheckResponse.ServingStatus.Name(response.status)

    # -- transport --------------------------------------------------------------------------

    def _channel_now(self) -> grpc.aio.Channel:
        if not os.path.exists(self.socket_path):
            raise Unavailable(
                f"no Workload API socket at {self.socket_path} (is the agent running?)"
            )
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix:{self.socket_path}",
                options=[("grpc.max_receive_message_length", _MAX_RECEIVE)],
            )
        return self._channel

    async def _unary(self, method: str, request: Any, response_type: type[_M]) -> _M:
        call = self._channel_now().unary_unary(
            _SERVICE + method,
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,  # type: ignore[attr-defined]
        )
        try:
            result: _M = await call(request, metadata=_METADATA, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, method) from exc
        return result

    async def _first(self, method: str, request: Any) -> Any:
        call = self._stream(method)(request, metadata=_METADATA, timeout=self._timeout)
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, method) from exc
        finally:
            call.cancel()
        if message is _EOF:
            raise Unavailable(f"{method}: the agent closed the stream without an answer")
        return message

    async def _watch(self, method: str, request: Any) -> AsyncIterator[Any]:
        call = self._stream(method)(request, metadata=_METADATA)
        try:
            while True:
                message = await call.read()
                if message is _EOF:
                    raise Unavailable(f"{method}: the agent closed the stream")
                yield message
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, method) from exc
        finally:
            call.cancel()

    def _stream(self, method: str) -> Callable[..., Any]:
        responses: dict[str, Any] = {
            "FetchX509SVID": pb.X509SVIDResponse,
            "FetchX509Bundles": pb.X509BundlesResponse,
            "FetchJWTBundles": pb.JWTBundlesResponse,
            "WatchRevocations": rpb.RevocationsUpdate,
        }
        path = _REVOCATIONS if method == "WatchRevocations" else _SERVICE + method
        return self._channel_now().unary_stream(
            path,
            request_serializer=_serialize,
            response_deserializer=responses[method].FromString,
        )

    def _translate(self, exc: grpc.aio.AioRpcError, method: str) -> S2SError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            if method == "ValidateJWTSVID":
                return InvalidToken(
                    f"the agent rejected the JWT-SVID: {details}", reason=_reason(exc)
                )
            return InvalidRequest(f"{method}: the agent rejected the request: {details}")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return NotAuthorized(f"{method}: the agent has no identity for this process: {details}")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return NotServed(
                f"{method}: the agent at {self.socket_path} does not serve it (UNIMPLEMENTED: "
                f"not an s2s agent, or an older one): {details}"
            )
        return Unavailable(
            f"{method}: the Workload API at {self.socket_path} failed ({code.name}): {details}"
        )


def _x509_update(message: Any) -> X509Update:
    svids, bundles = parse.x509_svids(message)
    return X509Update(X509Context(svids, bundles), tuple(message.crl))


def _revocations_update(message: Any) -> RevocationsUpdate:
    age, lag_after, heartbeat = (
        float(message.age_seconds),
        float(message.lag_after_seconds),
        float(message.heartbeat_seconds),
    )
    if not (
        math.isfinite(age)
        and age >= 0
        and 0 < lag_after <= _MAX_TIMING
        and 0 < heartbeat <= _MAX_TIMING
    ):
        raise Unavailable(
            f"the agent sent revocation timings that make no sense (age {age}, lag_after "
            f"{lag_after}, heartbeat {heartbeat})"
        )
    if message.full and message.delta:
        raise Unavailable("the agent sent a revocations message that is both whole and a delta")
    epoch = str(message.epoch)
    if len(epoch) > 64:
        raise Unavailable("the agent sent a revocations epoch longer than 64 characters")
    records = parse.revocation_records(message.records_json) if message.full else None
    base: int | None = None
    removed: tuple[tuple[RevocationKind, str, str], ...] = ()
    if message.delta:
        base = int(message.base_revision)
        records = parse.revocation_records(message.records_json)
        removed = parse.revocation_keys(message.removed_json)
    return RevocationsUpdate(
        revision=int(message.revision),
        records=records,
        age=age if message.synced else None,
        lag_after=lag_after,
        heartbeat=heartbeat,
        base=base,
        removed=removed,
        epoch=epoch,
    )


def _jwt_svid(message: Any) -> JwtSvid:
    try:
        claims = jwt.decode(message.svid, options={"verify_signature": False})
        aud = claims.get("aud")
        audience = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())
        expiry = datetime.fromtimestamp(float(claims["exp"]), tz=UTC)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidToken(
            f"the agent returned a malformed JWT-SVID: {exc}", reason="malformed"
        ) from exc
    return JwtSvid(parse.spiffe_id(message.spiffe_id), message.svid, audience, expiry, message.hint)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    trailer: Any = exc.trailing_metadata() or ()
    for key, value in trailer:
        if key == _REASON_TRAILER and isinstance(value, str):
            return value
    return "untrusted"


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
