"""Agent configuration: precedence flags > env > file > defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.agent.attestors.unix import DEFAULT_SHA256_MAX_BYTES
from s2s.agent.config import DEFAULT_SOCKET, AgentConfig, load_config, parse_listen, parse_size
from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import TrustDomain

MINIMAL = {
    "trust_domain": "example.org",
    "ca_urls": ("https://ca.example.org:8443",),
    "data_dir": "/var/lib/s2s-agent",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_flags_only_with_defaults() -> None:
    config = load_config(flags=MINIMAL, environ={})
    assert config.trust_domain == TrustDomain("example.org")
    assert config.ca_urls == ("https://ca.example.org:8443",)
    assert config.data_dir == Path("/var/lib/s2s-agent")
    assert config.socket == DEFAULT_SOCKET
    assert config.sha256_max_bytes == DEFAULT_SHA256_MAX_BYTES
    assert config.metrics_listen is None
    assert (config.log_level, config.log_format) == ("INFO", "json")
    assert config.join_token is None


def test_toml_file_every_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
trust_domain = "example.org"
ca_url = ["https://ca-1:8443", "https://ca-2:8443/"]
trust_bundle = "bootstrap.pem"
join_token = "tok"
data_dir = "state"
socket = "/tmp/s2s/agent.sock"
sha256_max_bytes = "64MiB"
metrics_listen = "127.0.0.1:9988"
log_level = "debug"
log_format = "text"
""",
    )
    config = load_config(environ={}, config_file=path)
    assert config.ca_urls == ("https://ca-1:8443", "https://ca-2:8443")
    assert config.trust_bundle == tmp_path / "bootstrap.pem"  # relative to the file
    assert config.data_dir == tmp_path / "state"
    assert config.join_token == "tok"
    assert config.socket == Path("/tmp/s2s/agent.sock")
    assert config.sha256_max_bytes == 64 * 1024 * 1024
    assert config.metrics_listen == ("127.0.0.1", 9988)
    assert (config.log_level, config.log_format) == ("DEBUG", "text")


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'trust_domain = "file.org"\nca_url = "https://file:1"\ndata_dir = "/file"\n'
        'log_level = "error"\nsocket = "/file.sock"\n',
    )
    environ = {
        "S2S_AGENT_TRUST_DOMAIN": "env.org",
        "S2S_AGENT_CA_URL": "https://env-1:1,https://env-2:2",
        "S2S_AGENT_LOG_LEVEL": "warning",
    }
    config = load_config(
        flags={"trust_domain": "flag.org", "ca_urls": (), "log_level": None},
        environ=environ,
        config_file=path,
    )
    assert config.trust_domain == TrustDomain("flag.org")  # flag beats env and file
    assert config.ca_urls == ("https://env-1:1", "https://env-2:2")  # env beats file
    assert config.log_level == "WARNING"  # None flag = not given
    assert config.socket == Path("/file.sock")  # file beats default
    assert config.data_dir == Path("/file")


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'trust_domain = "example.org"\nca_url = "https://ca"\ndata_dir = "/d"\n')
    config = load_config(environ={"S2S_AGENT_CONFIG": str(path)})
    assert config.ca_urls == ("https://ca",)


def test_join_token_not_in_repr() -> None:
    config = load_config(flags={**MINIMAL, "join_token": "s3cret-token"}, environ={})
    assert "s3cret-token" not in repr(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"trust_domain": "Example.org"}, "trust_domain"),
        ({"trust_domain": "spiffe://example.org/x"}, "trust_domain"),
        ({"ca_urls": ("http://ca:8443",)}, "https://"),
        ({"ca_urls": ("https://ca:8443?x=1",)}, "query"),
        ({"ca_urls": ("https://ca:99999",)}, "not a URL"),
        ({"ca_urls": ("https://user@ca",)}, "user"),
        ({"sha256_max_bytes": "lots"}, "size"),
        ({"sha256_max_bytes": -1}, "negative"),
        ({"metrics_listen": "9988"}, "HOST:PORT"),
        ({"metrics_listen": "host:70000"}, "HOST:PORT"),
        ({"log_level": "loud"}, "log_level"),
        ({"log_format": "xml"}, "log_format"),
        ({"join_token": "x" * 300}, "join_token"),
        ({"join_token": "bad\ntoken"}, "printable"),
        ({"socket": "/tmp/" + "s" * 120}, "107 bytes"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    override: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidConfig, match=message):
        load_config(flags={**MINIMAL, **override}, environ={})


@pytest.mark.parametrize("missing", ["trust_domain", "ca_urls", "data_dir"])
def test_missing_required_setting_says_how_to_set_it(missing: str) -> None:
    flags = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(InvalidConfig, match="is not set: pass --") as info:
        load_config(flags=flags, environ={})
    assert "S2S_" in str(info.value)


def test_env_value_error_names_the_variable() -> None:
    with pytest.raises(InvalidConfig, match="env S2S_AGENT_CA_URL"):
        load_config(flags={**MINIMAL, "ca_urls": None}, environ={"S2S_AGENT_CA_URL": "ftp://ca"})


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'trust_domian = "example.org"\n')
    with pytest.raises(InvalidConfig, match="unknown setting 'trust_domian'"):
        load_config(environ={}, config_file=path)


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "trust_domain = example.org\n")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        load_config(environ={}, config_file=path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="cannot read config file"):
        load_config(environ={}, config_file=tmp_path / "nope.toml")


def test_wrong_toml_type_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'trust_domain = 5\nca_url = "https://ca"\ndata_dir = "/d"\n')
    with pytest.raises(InvalidConfig, match="must be a string"):
        load_config(environ={}, config_file=path)


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="unknown setting"):
        load_config(flags={**MINIMAL, "colour": "blue"}, environ={})


def test_direct_construction_checks_too() -> None:
    with pytest.raises(InvalidConfig, match="ca_url"):
        AgentConfig(trust_domain=TrustDomain("example.org"), ca_urls=(), data_dir=Path("/d"))
    with pytest.raises(InvalidConfig, match="absolute"):
        AgentConfig(
            trust_domain=TrustDomain("example.org"),
            ca_urls=("https://ca",),
            data_dir=Path("/d"),
            socket=Path("agent.sock"),
        )


def test_sizes_and_listen_addresses() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("10 kb") == 10240
    assert parse_listen("[::1]:9988") == ("::1", 9988)
    with pytest.raises(InvalidConfig):
        parse_size(True)
    with pytest.raises(InvalidConfig):
        parse_size("1.5M")
