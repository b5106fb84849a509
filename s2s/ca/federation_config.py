"""The ``[federation]`` settings of the CA: its bundle endpoint (off by default) and the bounds
of the federation refresher. One frozen value, built once at the edge (flags, TOML)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from s2s.core.errors import InvalidConfig, InvalidSpiffeId
from s2s.core.federation import DEFAULT_REFRESH_HINT, EndpointProfile, RefreshPolicy
from s2s.core.reserved import bundle_endpoint_id
from s2s.core.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "FEDERATION_KEYS",
    "BundleEndpointSettings",
    "FederationSettings",
    "federation_settings",
    "parse_host_port",
]

# The keys of ca.toml's [federation] table.
FEDERATION_KEYS: Final = (
    "bundle_endpoint", "bundle_endpoint_profile", "bundle_endpoint_spiffe_id",
    "bundle_endpoint_cert_file", "bundle_endpoint_key_file", "refresh_hint",
    "refresh_min", "refresh_max", "web_ca_file",
)  # fmt: skip


def parse_host_port(text: str, *, setting: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) as (host, port); port 0 picks a free one.

    >>> parse_host_port("127.0.0.1:8444", setting="x"), parse_host_port("[::1]:0", setting="x")
    (('127.0.0.1', 8444), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise InvalidConfig(f"{setting} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class BundleEndpointSettings:
    """This CA's SPIFFE bundle endpoint (SPIFFE_Federation.md 5.2).

    ``https_spiffe`` presents an X509-SVID of this trust domain (``spiffe_id``, by default
    ``spiffe://<td>/s2s/bundle-endpoint``), renewed before it expires; ``https_web`` presents
    the operator's certificate and key files, reloaded when they change.
    """

    address: str  # HOST:PORT
    profile: EndpointProfile = EndpointProfile.HTTPS_SPIFFE
    spiffe_id: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    refresh_hint: dt.timedelta = DEFAULT_REFRESH_HINT

    def __post_init__(self) -> None:
        parse_host_port(self.address, setting="federation.bundle_endpoint")
        if not isinstance(self.profile, EndpointProfile):
            raise InvalidConfig("federation.bundle_endpoint_profile is https_spiffe or https_web")
        web = self.profile is EndpointProfile.HTTPS_WEB
        if web and (self.cert_file is None or self.key_file is None):
            raise InvalidConfig(
                "an https_web bundle endpoint needs federation.bundle_endpoint_cert_file and "
                "bundle_endpoint_key_file (its Web PKI certificate and key)"
            )
        if not web and (self.cert_file is not None or self.key_file is not None):
            raise InvalidConfig(
                "an https_spiffe bundle endpoint presents its own SVID: leave out the "
                "certificate and key files (or use profile https_web)"
            )
        if web and self.spiffe_id is not None:
            raise InvalidConfig("an https_web bundle endpoint has no SPIFFE ID")
        seconds = self.refresh_hint.total_seconds()
        if not 1 <= seconds <= 7 * 86400 or seconds != int(seconds):
            raise InvalidConfig("federation.refresh_hint must be whole seconds from 1s to 7 days")

    def endpoint_id(self, trust_domain: TrustDomain) -> SpiffeId:
        """The SPIFFE ID an https_spiffe endpoint presents (in this trust domain, with a path)."""
        if self.spiffe_id is None:
            return bundle_endpoint_id(trust_domain)
        try:
            sid = SpiffeId.parse(self.spiffe_id)
        except InvalidSpiffeId as exc:
            raise InvalidConfig(f"federation.bundle_endpoint_spiffe_id: {exc}") from None
        if sid.trust_domain != trust_domain or sid.is_root():
            raise InvalidConfig(
                f"federation.bundle_endpoint_spiffe_id must be an ID with a path in {trust_domain}"
            )
        return sid


@dataclass(frozen=True, slots=True)
class FederationSettings:
    """Everything ``[federation]`` sets: the endpoint (None: not served) and refresh bounds."""

    bundle_endpoint: BundleEndpointSettings | None = None
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    web_ca_file: Path | None = None  # Web PKI roots for https_web endpoints (default: system)


def federation_settings(
    table: Mapping[str, Any],
    *,
    where: str,
    seconds: Callable[[str], int],
    bundle_endpoint: str | None = None,
) -> FederationSettings:
    """The ``[federation]`` table of ca.toml (``where`` names it in errors); ``bundle_endpoint``
    (the ``--bundle-endpoint`` flag) wins over the table's. ``seconds`` parses ``30s``/``5m``."""
    if not isinstance(table, Mapping):
        raise InvalidConfig(f"{where}: [federation] must be a table")
    unknown = sorted(set(table) - set(FEDERATION_KEYS))
    if unknown:
        raise InvalidConfig(
            f"{where}: unknown setting(s) {', '.join(f'federation.{k}' for k in unknown)}"
        )
    for key, value in table.items():
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            raise InvalidConfig(f"{where}: federation.{key} must be text (or seconds)")

    def duration(key: str, default: dt.timedelta) -> dt.timedelta:
        if key not in table:
            return default
        try:
            return dt.timedelta(seconds=seconds(str(table[key])))
        except (ValueError, InvalidConfig) as exc:
            raise InvalidConfig(f"{where}: federation.{key}: {exc}") from None

    def path(key: str) -> Path | None:
        return Path(str(table[key])) if key in table else None

    defaults = RefreshPolicy()
    try:
        refresh = RefreshPolicy(
            minimum=duration("refresh_min", defaults.minimum),
            maximum=duration("refresh_max", defaults.maximum),
        )
        address = bundle_endpoint or table.get("bundle_endpoint")
        endpoint = None
        if address is not None:
            try:
                profile = EndpointProfile(str(table.get("bundle_endpoint_profile", "https_spiffe")))
            except ValueError:
                raise InvalidConfig(
                    "federation.bundle_endpoint_profile must be https_spiffe or https_web"
                ) from None
            sid = table.get("bundle_endpoint_spiffe_id")
            endpoint = BundleEndpointSettings(
                address=str(address),
                profile=profile,
                spiffe_id=None if sid is None else str(sid),
                cert_file=path("bundle_endpoint_cert_file"),
                key_file=path("bundle_endpoint_key_file"),
                refresh_hint=duration("refresh_hint", DEFAULT_REFRESH_HINT),
            )
        elif any(k.startswith("bundle_endpoint_") or k == "refresh_hint" for k in table):
            raise InvalidConfig("the bundle endpoint settings need federation.bundle_endpoint")
    except InvalidConfig as exc:
        text = str(exc)
        raise InvalidConfig(text if text.startswith(where) else f"{where}: {text}") from None
    return FederationSettings(endpoint, refresh, path("web_ca_file"))
