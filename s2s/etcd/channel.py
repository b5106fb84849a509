"""Where and how to reach etcd: endpoint parsing, client TLS, and the gRPC channel.

``parse_endpoints`` turns ``"h:p,h:p"`` into pairs (InvalidConfig if bad); :func:`open_channel`
builds one ``grpc.aio`` channel that fails over across every endpoint, over TLS when given
an :class:`EtcdTls`. Used by :class:`s2s.etcd.client.EtcdClient`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from s2s.core.errors import InvalidConfig

__all__ = ["EtcdTls", "open_channel", "parse_endpoints"]

_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),  # find a silently dead etcd within ~15 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for etcd: the CA that signed etcd's certificate, and an optional client pair.

    PEM bytes, from memory or :meth:`from_files`. ``server_name`` overrides the name checked in
    etcd's certificate (default: the endpoint host).
    """

    ca_pem: bytes
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if b"-----BEGIN CERTIFICATE-----" not in self.ca_pem:
            raise InvalidConfig("the etcd CA must be a PEM certificate")
        if (self.cert_pem is None) != (self.key_pem is None):
            raise InvalidConfig(
                "an etcd client certificate needs its key, and a key its certificate"
            )

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        *,
        server_name: str | None = None,
    ) -> EtcdTls:
        def read(path: str | Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise InvalidConfig(f"cannot read {path}: {exc.strerror}") from exc

        ca_pem = read(ca)
        assert ca_pem is not None
        return cls(ca_pem, read(cert), read(key), server_name=server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def parse_endpoints(text: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``"h:p,h:p"`` (or a sequence of ``"h:p"``) as (host, port) pairs; InvalidConfig if bad."""
    items = text.split(",") if isinstance(text, str) else list(text)
    result: list[tuple[str, int]] = []
    for item in items:
        host, sep, port = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfig(f"an etcd endpoint must be host:port, not {item!r}")
        result.append((host, int(port)))
    if not result:
        raise InvalidConfig("at least one etcd endpoint is needed")
    return tuple(result)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _target(endpoints: Sequence[tuple[str, int]]) -> str:
    """A gRPC target that fails over across every endpoint (pick_first over an address list)."""
    if len(endpoints) == 1 and not _is_ip(endpoints[0][0]):
        return f"dns:///{endpoints[0][0]}:{endpoints[0][1]}"
    loop = asyncio.get_running_loop()
    addresses: list[str] = []
    for host, port in endpoints:
        if _is_ip(host):
            ip = ipaddress.ip_address(host)
            addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
            continue
        try:
            infos = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise InvalidConfig(f"cannot resolve the etcd endpoint {host}: {exc}") from exc
        addresses += [f"{info[4][0]}:{port}" for info in infos]
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if scheme == "ipv4" and any(a.startswith("[") for a in addresses):
        raise InvalidConfig("etcd endpoints must all be IPv4 or all IPv6")
    return f"{scheme}:{','.join(addresses)}"


async def open_channel(
    endpoints: str | Sequence[str], tls: EtcdTls | None
) -> tuple[grpc.aio.Channel, str]:
    """A channel to ``endpoints`` (connected on first use) and their ``"h:p,h:p"`` for messages."""
    pairs = parse_endpoints(endpoints)
    target = await _target(pairs)
    options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
    if tls is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        name = tls.server_name or next((h for h, _ in pairs if not _is_ip(h)), None)
        if name is not None:
            options.append(("grpc.ssl_target_name_override", name))
        channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
    return channel, ",".join(f"{h}:{p}" for h, p in pairs)
