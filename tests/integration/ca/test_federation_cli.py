"""``s2s-ca federation create|list|show|update|delete|refresh`` (``--json``) against real CAs:
B federates with A's https_spiffe endpoint, bootstrapped with ``--bundle`` (SPIFFE JSON or
PEM); entries may federate with a trust domain that has a relationship; ``s2s-ca serve
--bundle-endpoint`` and ``[federation]`` in ca.toml. Refusals: no bundle for a self-serving
endpoint, an https_web endpoint with a SPIFFE ID, a duplicate, an unknown trust domain, bad
settings, a refresh that fails (the reason, exit code and the last good bundle kept)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import click
import pytest
from federation_peers import Peer, running_peer

from s2s.ca.federation_config import BundleEndpointSettings, FederationSettings, federation_settings
from s2s.cli.ca import main as s2s_ca
from s2s.cli.ca_common import parse_duration
from s2s.cli.ca_process import load_config_file
from s2s.cli.exits import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE
from s2s.core.errors import InvalidConfig
from s2s.core.federation import EndpointProfile
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import TrustDomain

A_ENDPOINT = "spiffe://a.test/s2s/bundle-endpoint"


async def cli(peer: Peer, *args: str) -> int:
    return await asyncio.to_thread(s2s_ca, ["--socket", str(peer.admin_socket), *args])


async def cli_json(peer: Peer, capsys: Any, *args: str) -> Any:
    code = await cli(peer, *args, "--json")
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def endpoint() -> FederationSettings:
    return FederationSettings(bundle_endpoint=BundleEndpointSettings(address="127.0.0.1:0"))


async def test_federation_commands(tmp_path: Path, capsys: Any) -> None:
    async with (
        running_peer(tmp_path, "a.test", federation=endpoint()) as a,
        running_peer(tmp_path, "b.test") as b,
    ):
        spiffe_json = tmp_path / "a-bundle.json"
        spiffe_json.write_bytes(a.server.authority.bundle.encode())
        create = ["federation", "create", "--trust-domain", "a.test", "--bundle-endpoint-url",
                  a.endpoint_url, "--profile", "https_spiffe"]  # fmt: skip

        # Refused: no bootstrap bundle; a SPIFFE ID missing or given to https_web.
        assert await cli(b, *create, "--endpoint-spiffe-id", A_ENDPOINT) == EXIT_USAGE
        assert "--bundle FILE" in capsys.readouterr().err
        assert await cli(b, *create) == EXIT_USAGE
        web = ["federation", "create", "--trust-domain", "w.test", "--bundle-endpoint-url",
               "https://w.test/", "--profile", "https_web"]  # fmt: skip
        assert await cli(b, *web, "--endpoint-spiffe-id", A_ENDPOINT) == EXIT_USAGE
        capsys.readouterr()

        created = await cli_json(
            b, capsys, *create, "--endpoint-spiffe-id", A_ENDPOINT, "--bundle", str(spiffe_json)
        )
        assert created["trust_domain"] == "a.test"
        assert created["bundle"]["source"] == "manual"
        assert await cli(b, *create, "--endpoint-spiffe-id", A_ENDPOINT) == EXIT_CONFLICT
        capsys.readouterr()

        refreshed = await cli_json(b, capsys, "federation", "refresh", "a.test")
        assert refreshed["bundle"]["source"] == "endpoint"
        assert refreshed["bundle"]["sequence"] == a.server.authority.bundle.sequence
        assert refreshed["status"]["last_error"] is None
        shown = await cli_json(b, capsys, "federation", "show", "a.test")
        assert shown["bundle"]["age_seconds"] >= 0
        assert [r["trust_domain"] for r in await cli_json(b, capsys, "federation", "list")] == [
            "a.test"
        ]
        assert await cli(b, "federation", "list") == 0
        assert "a.test" in capsys.readouterr().out
        assert await cli(b, "federation", "show", "a.test") == 0
        assert "bundle.sequence" in capsys.readouterr().out

        # An entry may federate with a trust domain that has a relationship (https_web: no
        # bundle yet), not with one that has neither.
        assert await cli(b, *web) == 0
        capsys.readouterr()
        registry = b.server.registry
        entry = await registry.create_entry(
            spiffe_id=b.td.id("/svc"), parent_id=b.td.id("/s2s/agent/join_token/x"),
            selectors=[Selector.parse("unix:uid:1")], federates_with=frozenset(),
        )  # fmt: skip
        assert entry is not None
        fed = ["entry", "create", "--spiffe-id", "spiffe://b.test/fed", "--parent-id",
               "spiffe://b.test/s2s/agent/join_token/x", "--selector", "unix:uid:2"]  # fmt: skip
        assert await cli(b, *fed, "--federates-with", "w.test", "--federates-with", "a.test") == 0
        assert await cli(b, *fed, "--federates-with", "nobody.test") == EXIT_USAGE
        capsys.readouterr()

        # A refresh that fails says why, exits non-zero and keeps the last good bundle.
        moved = await cli_json(
            b, capsys, "federation", "update", "a.test", "--endpoint-spiffe-id",
            "spiffe://a.test/s2s/somebody-else",
        )  # fmt: skip
        assert moved["endpoint_spiffe_id"] == "spiffe://a.test/s2s/somebody-else"
        assert await cli(b, "federation", "refresh", "a.test") == EXIT_REFUSED
        assert "not authorized" in capsys.readouterr().err
        kept = await cli_json(b, capsys, "federation", "show", "a.test")
        assert kept["bundle"]["source"] == "endpoint"
        assert kept["status"]["failures"] >= 1  # the loop, woken by the update, may try too
        assert "not_authorized" in kept["status"]["last_error"]
        assert await cli(b, "federation", "update", "a.test") == EXIT_USAGE

        deleted = await cli_json(b, capsys, "federation", "delete", "a.test")
        assert deleted["trust_domain"] == "a.test"
        assert await cli(b, "federation", "show", "a.test") == EXIT_NOT_FOUND
        assert await cli(b, "federation", "delete", "a.test") == EXIT_NOT_FOUND
        assert await cli(b, "federation", "show", "NOT A TD") == EXIT_USAGE


async def test_create_with_a_pem_bundle(tmp_path: Path, capsys: Any) -> None:
    async with (
        running_peer(tmp_path, "a.test", federation=endpoint()) as a,
        running_peer(tmp_path, "b.test") as b,
    ):
        pem = tmp_path / "a.pem"
        pem.write_bytes(a.server.authority.bundle.x509_pem())
        await cli_json(
            b, capsys, "federation", "create", "--trust-domain", "a.test",
            "--bundle-endpoint-url", a.endpoint_url, "--profile", "https_spiffe",
            "--endpoint-spiffe-id", A_ENDPOINT, "--bundle", str(pem),
        )  # fmt: skip
        refreshed = await cli_json(b, capsys, "federation", "refresh", "a.test")
        assert refreshed["bundle"]["jwt_authorities"] == 1
        garbage = tmp_path / "garbage.json"
        garbage.write_bytes(b"{not json")
        assert (
            await cli(b, "federation", "update", "a.test", "--bundle", str(garbage)) == EXIT_USAGE
        )
        assert "not valid JSON" in capsys.readouterr().err


def test_federation_settings_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "ca.toml"
    toml.write_text(
        '[federation]\nbundle_endpoint = "0.0.0.0:8444"\nrefresh_hint = "1m"\n'
        'refresh_min = "10s"\nrefresh_max = "2h"\n'
    )
    file, _ = load_config_file(toml)
    settings = federation_settings(file["federation"], where=str(toml), seconds=_seconds)
    assert settings.bundle_endpoint is not None
    assert settings.bundle_endpoint.address == "0.0.0.0:8444"
    assert settings.bundle_endpoint.profile is EndpointProfile.HTTPS_SPIFFE
    assert settings.bundle_endpoint.refresh_hint == dt.timedelta(minutes=1)
    assert settings.refresh.minimum == dt.timedelta(seconds=10)
    td = TrustDomain.parse("a.test")
    assert str(settings.bundle_endpoint.endpoint_id(td)) == A_ENDPOINT
    flag = federation_settings({}, where="--bundle-endpoint", seconds=_seconds,
                               bundle_endpoint="127.0.0.1:9")  # fmt: skip
    assert flag.bundle_endpoint is not None
    assert flag.bundle_endpoint.address == "127.0.0.1:9"
    assert federation_settings({}, where="x", seconds=_seconds).bundle_endpoint is None


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"bundle_endpoint": "nohost"}, "HOST:PORT"),
        ({"bundle_endpoint": "127.0.0.1:1", "bundle_endpoint_profile": "ftp"}, "https_spiffe"),
        ({"bundle_endpoint": "127.0.0.1:1", "bundle_endpoint_profile": "https_web"}, "cert_file"),
        ({"bundle_endpoint": "127.0.0.1:1", "bundle_endpoint_cert_file": "/x"}, "leave out"),
        ({"bundle_endpoint_profile": "https_web"}, "need federation.bundle_endpoint"),
        ({"bundle_endpoint": "127.0.0.1:1", "refresh_hint": "0s"}, "refresh_hint"),
        ({"refresh_min": "2h", "refresh_max": "1h"}, "minimum <= maximum"),
        ({"colour": "blue"}, "federation.colour"),
        ({"bundle_endpoint": True}, "must be text"),
    ],
)
def test_federation_settings_refused(table: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidConfig, match=why):
        federation_settings(table, where="ca.toml", seconds=_seconds)


def test_endpoint_spiffe_id_must_be_ours() -> None:
    td = TrustDomain.parse("a.test")
    for bad in ("spiffe://b.test/endpoint", "spiffe://a.test", "not an id"):
        settings = BundleEndpointSettings(address="127.0.0.1:1", spiffe_id=bad)
        with pytest.raises(InvalidConfig, match="bundle_endpoint_spiffe_id"):
            settings.endpoint_id(td)


def _seconds(text: str) -> int:
    """What serve passes: ``parse_duration`` with its refusal as InvalidConfig."""
    try:
        return parse_duration(text)
    except click.BadParameter as exc:
        raise InvalidConfig(exc.message) from None
