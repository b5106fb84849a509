"""The agent's configuration: one frozen value, built once at the edge.

Every setting comes from (highest first) a command-line flag, an ``S2S_AGENT_*`` environment
variable, the TOML file (``--config agent.toml`` or ``S2S_AGENT_CONFIG``), or its default. The
variables are the agent's own (``S2S_AGENT_DATA_DIR``, never the CA's ``S2S_CA_DATA_DIR``); the
older names shared with the CA (``S2S_DATA_DIR``, ``S2S_JOIN_TOKEN``, ...) are refused, not
ignored. Values are parsed here (``TrustDomain``, URLs, paths, sizes) so inner code only sees typed
values; anything wrong raises :class:`InvalidConfig` naming the setting and where it came from,
and the config remembers each setting's source for the start-up log.

    trust_domain = "example.org"
    ca_url = ["https://ca-1:8443", "https://ca-2:8443"]   # or one string
    trust_bundle = "bootstrap.pem"        # relative paths are relative to the TOML file
    join_token = "..."                    # only needed until the first attestation
    data_dir = "/var/lib/s2s-agent"
    socket = "/run/s2s/agent.sock"
    attestors = ["unix"]                  # workload attestors whose selectors are united
    sha256_max_bytes = "128MiB"           # biggest binary hashed for unix:sha256 (0 = no limit)
    metrics_listen = "127.0.0.1:9988"     # "" or absent: no metrics endpoint
    log_level = "info"
    log_format = "json"                   # or "text"
    revocations_etcd = "10.0.0.5:2379,10.0.0.6:2379"   # follow revocations in etcd;
                                          # absent: long-poll the CA's /v1/revocations
    revocations_etcd_ca = "etcd-ca.pem"   # TLS to etcd (+ _cert / _key for a client pair)
    workload_max_connections = 1024       # Workload API connections open at once, all callers
    workload_max_connections_per_uid = 64 # ... and per caller uid
    workload_idle_timeout = "5m"          # close a connection without a call for this long
    workload_attest_workers = 4           # threads that attest callers (half of them per uid)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from s2s.agent.attestors.registry import DEFAULT_ATTESTORS, check_attestor_names
from s2s.agent.attestors.unix import DEFAULT_SHA256_MAX_BYTES
from s2s.agent.workload_limits import (
    DEFAULT_ATTEST_WORKERS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_UID,
    WorkloadLimits,
)
from s2s.core.errors import InvalidConfig, InvalidSpiffeId
from s2s.core.spiffe_id import TrustDomain
from s2s.etcd.channel import parse_endpoints

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_SOCKET",
    "ENV_PREFIX",
    "ENV_VARS",
    "LEGACY_ENV_VARS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AgentConfig",
    "legacy_variables_message",
    "load_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "served_socket",
]

DEFAULT_SOCKET: Final = Path("/run/s2s/agent.sock")
ENV_PREFIX: Final = "S2S_AGENT_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("json", "text")
MAX_CONFIG_BYTES: Final = 1024 * 1024
_MAX_TOKEN_CHARS: Final = 256
_SETTINGS: Final = (
    "trust_domain", "ca_urls", "trust_bundle", "join_token", "data_dir", "socket", "attestors",
    "sha256_max_bytes", "metrics_listen", "log_level", "log_format", "revocations_etcd",
    "revocations_etcd_ca", "revocations_etcd_cert", "revocations_etcd_key",
    "workload_max_connections", "workload_max_connections_per_uid", "workload_idle_timeout",
    "workload_attest_workers",
)  # fmt: skip

# setting name -> environment variable (S2S_AGENT_ + the TOML key); the TOML key is the setting
# name, but ca_urls is "ca_url".
ENV_VARS: Final[Mapping[str, str]] = {
    name: ENV_PREFIX + ("ca_url" if name == "ca_urls" else name).upper() for name in _SETTINGS
}
# The names the agent read before it had its own prefix (S2S_DATA_DIR was also the CA CLI's):
# found set, they stop the agent with the new name rather than being silently ignored.
LEGACY_ENV_VARS: Final[Mapping[str, str]] = {
    "S2S_" + var.removeprefix(ENV_PREFIX): var for var in (*ENV_VARS.values(), CONFIG_ENV)
}
_TOML_KEYS: Final = {("ca_url" if k == "ca_urls" else k): k for k in ENV_VARS}
_FLAGS: Final = {k: "--" + t.replace("_", "-") for t, k in _TOML_KEYS.items()} | {
    "attestors": "--attestor"  # repeated, one name each
}
_SIZE = re.compile(r"(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(|s|m|h)", re.IGNORECASE)
_DURATION_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs, fixed for the life of the process. ``join_token`` is a secret
    and is left out of ``repr``."""

    trust_domain: TrustDomain
    ca_urls: tuple[str, ...]
    data_dir: Path
    trust_bundle: Path | None = None
    join_token: str | None = field(default=None, repr=False)
    socket: Path = DEFAULT_SOCKET
    attestors: tuple[str, ...] = DEFAULT_ATTESTORS  # names in s2s.agent.attestors.registry
    sha256_max_bytes: int = DEFAULT_SHA256_MAX_BYTES
    metrics_listen: tuple[str, int] | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    revocations_etcd: str | None = None  # etcd endpoints "h:p,h:p"; None: CA long-poll
    revocations_etcd_ca: Path | None = None  # TLS to that etcd: its CA, and a client pair
    revocations_etcd_cert: Path | None = None
    revocations_etcd_key: Path | None = None
    workload_max_connections: int = DEFAULT_MAX_CONNECTIONS
    workload_max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    workload_idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds
    workload_attest_workers: int = DEFAULT_ATTEST_WORKERS
    # where each setting given came from ("flag --socket", "env S2S_AGENT_SOCKET", "file PATH");
    # the others are defaults
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidConfig("trust_domain must be a TrustDomain (parse it at the edge)")
        if not self.ca_urls:
            raise InvalidConfig(
                f"at least one ca_url is required (--ca-url / {ENV_VARS['ca_urls']})"
            )
        for url in self.ca_urls:
            _check_url(url)
        if not self.socket.is_absolute():
            raise InvalidConfig(f"socket must be an absolute path, got {str(self.socket)!r}")
        if len(str(self.socket).encode()) > 107:
            raise InvalidConfig("socket path is longer than 107 bytes (the Unix socket limit)")
        if self.sha256_max_bytes < 0:
            raise InvalidConfig("sha256_max_bytes must be 0 (no limit) or a positive size")
        if check_attestor_names(self.attestors) != self.attestors:
            raise InvalidConfig("attestors must name each workload attestor once")
        if self.log_level not in LOG_LEVELS:
            raise InvalidConfig(f"log_level must be one of {', '.join(LOG_LEVELS).lower()}")
        if self.log_format not in LOG_FORMATS:
            raise InvalidConfig(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        _check_etcd_tls(self)
        self.workload_limits()  # InvalidConfig for limits that do not fit together
        if self.join_token is not None and not 0 < len(self.join_token) <= _MAX_TOKEN_CHARS:
            raise InvalidConfig(f"join_token must be 1 to {_MAX_TOKEN_CHARS} characters")

    def settings(self) -> tuple[tuple[str, str, str], ...]:
        """(setting, value as text, source) for every setting, for the start-up log. The join
        token is a secret: its value is only ``set`` or ``unset``.

        >>> config = AgentConfig(trust_domain=TrustDomain("example.org"),
        ...     ca_urls=("https://ca:8443",), data_dir=Path("/d"), join_token="secret",
        ...     sources=(("join_token", "env S2S_AGENT_JOIN_TOKEN"),))
        >>> [row for row in config.settings() if row[0] in ("join_token", "socket")]
        [('join_token', 'set', 'env S2S_AGENT_JOIN_TOKEN'), ('socket', '/run/s2s/agent.sock', \
'default')]
        """
        given = dict(self.sources)
        return tuple(
            (name, _shown(name, getattr(self, name)), given.get(name, "default"))
            for name in _SETTINGS
        )

    def workload_limits(self) -> WorkloadLimits:
        """The Workload API server's limits from these settings."""
        return WorkloadLimits(
            max_connections=self.workload_max_connections,
            max_connections_per_uid=self.workload_max_connections_per_uid,
            idle_timeout=self.workload_idle_timeout,
            attest_workers=self.workload_attest_workers,
            attest_per_uid=max(1, self.workload_attest_workers // 2),
        )


def _check_etcd_tls(config: AgentConfig) -> None:
    tls = (config.revocations_etcd_ca, config.revocations_etcd_cert, config.revocations_etcd_key)
    if any(p is not None for p in tls) and config.revocations_etcd is None:
        raise InvalidConfig("revocations_etcd_ca/_cert/_key need revocations_etcd")
    if (tls[1] is None) != (tls[2] is None) or (tls[1] is not None and tls[0] is None):
        raise InvalidConfig(
            "revocations_etcd_cert and _key go together, and need revocations_etcd_ca"
        )


def legacy_variables_message(environ: Mapping[str, str], names: Iterable[str] = ()) -> str | None:
    """Why the agent will not start when an old shared variable is set (``S2S_DATA_DIR`` and
    the rest of ``LEGACY_ENV_VARS``, or only ``names`` of them), naming the new variable; None
    when none is set (an empty value counts as unset, as for every variable)."""
    wanted = set(names) or set(LEGACY_ENV_VARS)
    found = [old for old in LEGACY_ENV_VARS if old in wanted and environ.get(old, "") != ""]
    if not found:
        return None
    renames = ", ".join(f"{old} -> {LEGACY_ENV_VARS[old]}" for old in found)
    return (
        f"{', '.join(found)} {'is' if len(found) == 1 else 'are'} set, but s2s-agent reads only "
        f"its own {ENV_PREFIX}* variables (the old names were shared with s2s-ca, whose data "
        f"directory an agent could pick up): rename {renames} and unset the old name"
    )


def served_socket(environ: Mapping[str, str], config_file: Path | None = None) -> Path:
    """The Workload API socket ``run`` serves given this environment and TOML file (its own
    precedence without flags): ``S2S_AGENT_SOCKET``, else the file's ``socket`` (``config_file``
    or ``$S2S_AGENT_CONFIG``), else ``/run/s2s/agent.sock``. What ``healthcheck`` calls when it
    is given no socket."""
    var = ENV_VARS["socket"]
    try:
        if environ.get(var, "") != "":
            return _abs_path(environ[var], None)
        if config_file is None and environ.get(CONFIG_ENV):
            config_file = Path(environ[CONFIG_ENV])
        if config_file is not None:
            doc = _read_toml(config_file)
            if "socket" in doc:
                return _abs_path(doc["socket"], config_file.parent)
    except InvalidConfig as exc:
        raise InvalidConfig(f"socket: {exc}") from None
    return DEFAULT_SOCKET


def load_config(
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> AgentConfig:
    """Merge flags > environment > TOML file > defaults into an :class:`AgentConfig`.

    ``flags`` maps setting names (``trust_domain``, ``ca_urls``, ...) to values; ``None`` or an
    empty tuple means "not given". ``config_file`` defaults to ``$S2S_AGENT_CONFIG`` when set.
    An old shared variable (``S2S_DATA_DIR``, ...) in ``environ`` is refused.
    """
    env = dict(environ or {})
    refused = legacy_variables_message(env)
    if refused is not None:
        raise InvalidConfig(refused)
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    raw: dict[str, tuple[Any, str]] = {}
    if config_file is not None:
        for name, value in _read_toml(config_file).items():
            raw[name] = (value, f"file {config_file}")
    for name, var in ENV_VARS.items():
        if env.get(var, "") != "":
            raw[name] = (env[var], f"env {var}")
    for name, value in (flags or {}).items():
        if name not in ENV_VARS:
            raise InvalidConfig(f"unknown setting {name!r}")
        if value is not None and value not in ((), []):
            raw[name] = (value, f"flag {_FLAGS[name]}")
    base = config_file.parent if config_file is not None else None
    return _build(raw, base)


def _build(raw: Mapping[str, tuple[Any, str]], base: Path | None) -> AgentConfig:
    for required in ("trust_domain", "ca_urls", "data_dir"):
        if required not in raw:
            key = _FLAGS[required].removeprefix("--").replace("-", "_")
            raise InvalidConfig(
                f"{key} is not set: pass {_FLAGS[required]}, set {ENV_VARS[required]}, "
                f"or put {key} in the config file"
            )
    values: dict[str, Any] = {}
    for name, (value, source) in raw.items():
        parser = _PARSERS[name]
        try:
            values[name] = parser(value, base if source.startswith("file ") else None)
        except InvalidConfig as exc:
            raise InvalidConfig(f"{name} (from {source}): {exc}") from None
    sources = tuple((name, source) for name, (_, source) in raw.items())
    try:
        return AgentConfig(**values, sources=sources)
    except InvalidConfig as exc:
        raise InvalidConfig(f"bad agent configuration: {exc}") from None


def _shown(name: str, value: Any) -> str:
    """A setting's value as the start-up log shows it (never the join token itself)."""
    if name == "join_token":
        return "unset" if value is None else "set"
    if value is None:
        return ""
    if name == "metrics_listen":
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if name == "workload_idle_timeout":
        return f"{value:g}s"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidConfig(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidConfig(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidConfig(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in _TOML_KEYS:
            known = ", ".join(sorted(_TOML_KEYS))
            raise InvalidConfig(f"unknown setting {key!r} in {path} (known: {known})")
        out[_TOML_KEYS[key]] = value
    return out


# ---- value parsers: (value, base dir for relative paths or None) -> typed value ------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidConfig(f"must be a string ({what}), got {type(value).__name__}")
    return value.strip()


def _trust_domain(value: Any, _base: Path | None) -> TrustDomain:
    try:
        return TrustDomain.parse(_text(value, "a trust domain name"))
    except InvalidSpiffeId as exc:
        raise InvalidConfig(str(exc)) from None


def _urls(value: Any, _base: Path | None) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InvalidConfig("must be a URL or a list of URLs")
    urls = tuple(_text(item, "an https URL").rstrip("/") for item in items)
    if not urls or not all(urls):
        raise InvalidConfig("must name at least one https URL and no empty ones")
    for url in urls:
        _check_url(url)
    return tuple(dict.fromkeys(urls))


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidConfig(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme != "https":
        raise InvalidConfig(f"{url!r} must be an https:// URL (the CA API is HTTPS only)")
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise InvalidConfig(f"{url!r} must be https://HOST[:PORT] without user, query or fragment")
    if port == 0:
        raise InvalidConfig(f"{url!r} has port 0")


def _path(value: Any, base: Path | None) -> Path:
    text = value if isinstance(value, Path) else _text(value, "a path")
    if not str(text):
        raise InvalidConfig("must not be empty")
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _abs_path(value: Any, base: Path | None) -> Path:
    path = _path(value, base)
    return path if path.is_absolute() else path.absolute()


def _token(value: Any, _base: Path | None) -> str:
    token = _text(value, "the join token")
    if not token or len(token) > _MAX_TOKEN_CHARS or not token.isprintable():
        raise InvalidConfig(f"must be 1 to {_MAX_TOKEN_CHARS} printable characters")
    return token


def parse_size(value: Any) -> int:
    """``1048576``, ``"64k"``, ``"128MiB"``, ``"1G"`` -> bytes.

    >>> parse_size("128MiB"), parse_size(0), parse_size("4k")
    (134217728, 0, 4096)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidConfig("a size must not be negative")
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidConfig(f"{value!r} is not a size like 1048576, 64k, 128MiB or 1G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)[:1].lower()]


def parse_duration(value: Any) -> float:
    """``300``, ``"90s"``, ``"5m"``, ``"1.5h"`` -> seconds (positive).

    >>> parse_duration("5m"), parse_duration(30), parse_duration("0.5s")
    (300.0, 30.0, 0.5)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise InvalidConfig(f"{value!r} is not a duration like 300, 90s, 5m or 1h")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if not 0 < seconds < float("inf"):
        raise InvalidConfig(f"{value!r}: a duration must be positive")
    return seconds


def _count(value: Any, _base: Path | None) -> int:
    """A positive whole number (``64`` or ``"64"``)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidConfig(f"{value!r} must be a whole number of at least 1")
    return value


def parse_listen(value: Any) -> tuple[str, int] | None:
    """``"HOST:PORT"`` -> (host, port); ``""`` -> None (disabled).

    >>> parse_listen("127.0.0.1:9988"), parse_listen("[::1]:0"), parse_listen("")
    (('127.0.0.1', 9988), ('::1', 0), None)
    """
    text = _text(value, "HOST:PORT")
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidConfig(f"{text!r} must be HOST:PORT (e.g. 127.0.0.1:9988)")
    return host.strip("[]"), int(port)


def _endpoints(value: Any) -> str | None:
    text = _text(value, "etcd endpoints host:port[,host:port]")
    if not text:
        return None
    if "://" in text:
        raise InvalidConfig(f"{text!r}: give etcd endpoints as host:port, without a scheme")
    parse_endpoints(text)  # InvalidConfig naming the bad endpoint
    return text


def _attestors(value: Any, _base: Path | None) -> tuple[str, ...]:
    """``["unix"]``, ``"unix"`` or ``"unix,other"`` -> known attestor names, in order."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InvalidConfig("must be an attestor name or a list of names")
    return check_attestor_names(_text(item, "an attestor name") for item in items)


def _level(value: Any, _base: Path | None) -> str:
    return _text(value, "a log level").upper()


def _format(value: Any, _base: Path | None) -> str:
    return _text(value, "json or text").lower()


_PARSERS: Final[Mapping[str, Callable[[Any, Path | None], Any]]] = {
    "trust_domain": _trust_domain,
    "ca_urls": _urls,
    "trust_bundle": _abs_path,
    "join_token": _token,
    "data_dir": _abs_path,
    "socket": _abs_path,
    "attestors": _attestors,
    "sha256_max_bytes": lambda v, _b: parse_size(v),
    "metrics_listen": lambda v, _b: parse_listen(v),
    "log_level": _level,
    "log_format": _format,
    "revocations_etcd": lambda v, _b: _endpoints(v),
    "revocations_etcd_ca": _abs_path,
    "revocations_etcd_cert": _abs_path,
    "revocations_etcd_key": _abs_path,
    "workload_max_connections": _count,
    "workload_max_connections_per_uid": _count,
    "workload_idle_timeout": lambda v, _b: parse_duration(v),
    "workload_attest_workers": _count,
}
