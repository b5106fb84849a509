"""The SVID cache and revocations: a revoked SVID leaves the streams and is due again at once;
CRLs are served and bump the version. (The feed itself is tested against a real CA and etcd.)"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.agent.ca_client import CaClient
from s2s.agent.ca_wire import X509Result
from s2s.agent.cache import SvidCache
from s2s.agent.config import load_config
from s2s.agent.issuance import new_key
from s2s.cli.agent import cli
from s2s.core.clock import FakeClock
from s2s.core.errors import InvalidConfig
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.selectors import Selector
from s2s.core.spiffe_id import SpiffeId
from s2s.testing import TestAuthority

AGENT = SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a")
UID = frozenset({Selector.parse("unix:uid:1000")})
HOUR = timedelta(hours=1)


def entry(entry_id: str, path: str) -> RegistrationEntry:
    return RegistrationEntry(
        id=entry_id, spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"), parent_id=AGENT,
        selectors=UID,
    )  # fmt: skip


@pytest.fixture
def cache(authority: TestAuthority, fake_clock: FakeClock) -> SvidCache:
    client = CaClient(
        urls=("https://ca.invalid",), trust_domain=authority.trust_domain, clock=fake_clock
    )  # never called here
    return SvidCache(client=client, bundle=authority.bundle(), clock=fake_clock, rand=lambda: 0.5)


def issue(cache: SvidCache, authority: TestAuthority) -> None:
    due = cache._due(cache._clock.now())
    keys: list[ec.EllipticCurvePrivateKey] = [new_key() for _ in due]
    results = [
        X509Result(i.entry.id, authority.issue_x509_svid(i.entry.spiffe_id, key=k), None)
        for i, k in zip(due, keys, strict=True)
    ]
    cache._store_results(due, keys, results)


def revoked(*serials: int, fake_clock: FakeClock) -> RevocationSet:
    now = fake_clock.now()
    return RevocationSet.of(
        RevocationRecord.for_serial(s, revoked_at=now, expires_at=now + timedelta(hours=1))
        for s in serials
    )


def test_a_revoked_leaf_stops_being_served_and_is_due_at_once(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("a", "/api"), entry("b", "/billing")], revision=1)
    issue(cache, authority)
    api, billing = (i.svid for i in cache.state.items)
    assert api is not None
    assert billing is not None
    assert cache._due(fake_clock.now()) == []
    version = cache.version
    assert cache.drop_revoked(revoked(api.serial, fake_clock=fake_clock)) == 1
    assert cache.version > version
    assert [s.serial for s in cache.svids_for(UID)] == [billing.serial]
    assert [i.entry.id for i in cache._due(fake_clock.now())] == ["a"]
    issue(cache, authority)  # the replacement is served
    assert {s.spiffe_id.path for s in cache.svids_for(UID)} == {"/api", "/billing"}
    # Twins: unrelated serials and an empty set change nothing.
    version = cache.version
    assert cache.drop_revoked(revoked(api.serial, 0x1234, fake_clock=fake_clock)) == 0
    assert cache.drop_revoked(RevocationSet.EMPTY) == 0
    assert cache.version == version


def test_a_revoked_intermediate_drops_every_svid_under_it(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    cache.apply_entries([entry("a", "/api"), entry("b", "/billing")], revision=1)
    issue(cache, authority)
    assert cache.drop_revoked(revoked(authority.intermediate.serial_number, fake_clock=fake_clock))
    assert cache.svids_for(UID) == ()
    assert len(cache._due(fake_clock.now())) == 2


def test_crls_are_served_and_bump_the_version(cache: SvidCache) -> None:
    assert cache.crls() == ()
    version = cache.version
    cache.set_crls((b"crl-1", b"crl-2"))
    assert cache.crls() == (b"crl-1", b"crl-2")
    assert cache.version == version + 1
    cache.set_crls((b"crl-1", b"crl-2"))  # unchanged: no new stream message
    assert cache.version == version + 1


def test_revocations_etcd_setting_is_parsed_at_the_edge(tmp_path: Path) -> None:
    base = {"S2S_AGENT_TRUST_DOMAIN": "example.org", "S2S_AGENT_CA_URL": "https://ca:8443",
            "S2S_AGENT_DATA_DIR": str(tmp_path)}  # fmt: skip
    assert load_config(environ=base).revocations_etcd is None  # default: the CA long-poll
    env = {**base, "S2S_AGENT_REVOCATIONS_ETCD": "10.0.0.5:2379, etcd-1:2379"}
    assert load_config(environ=env).revocations_etcd == "10.0.0.5:2379, etcd-1:2379"
    assert load_config(environ={**base, "S2S_AGENT_REVOCATIONS_ETCD": " "}).revocations_etcd is None
    for bad in ("10.0.0.5", "etcd:0", "http://etcd:2379", "a:1,,b:2"):
        with pytest.raises(InvalidConfig, match="revocations_etcd"):
            load_config(environ={**base, "S2S_AGENT_REVOCATIONS_ETCD": bad})


def test_cached_jwt_svids_revoked_by_jti_or_id_are_forgotten(
    cache: SvidCache, authority: TestAuthority, fake_clock: FakeClock
) -> None:
    now = fake_clock.now()
    api, web = (
        SpiffeId.parse("spiffe://example.org/api"),
        SpiffeId.parse("spiffe://example.org/web"),
    )
    jwt = cache._jwt
    for sid, jti in ((api, "jti-api"), (web, "jti-web")):
        token = authority.issue_jwt_svid(sid, "aud", jti=jti, now=now)
        jwt._tokens[(sid, frozenset({"aud"}))] = (token, now + timedelta(minutes=2), now + HOUR)
    later = now + HOUR
    by_jti = RevocationRecord.for_jti("jti-api", revoked_at=now, expires_at=later)
    assert jwt.drop_revoked(RevocationSet.of([by_jti])) == 1
    assert [k[0] for k in jwt._tokens] == [web]
    # Twin: an ID revoked before the token was issued leaves it; one revoked after drops it.
    before = RevocationRecord.for_spiffe_id(web, revoked_at=now - HOUR, expires_at=later)
    assert cache.drop_revoked(RevocationSet.of([before])) == 0
    assert len(jwt) == 1
    after = RevocationRecord.for_spiffe_id(
        web, revoked_at=now + timedelta(seconds=1), expires_at=later
    )
    cache.drop_revoked(RevocationSet.of([after]))
    assert len(jwt) == 0


def test_cli_flag_revocations_etcd_is_checked(tmp_path: Path) -> None:
    args = ["run", "--trust-domain", "example.org", "--ca-url", "https://ca:8443",
            "--data-dir", str(tmp_path), "--revocations-etcd", "http://etcd:2379"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # as for any bad setting (e.g. an http CA URL)
    assert "revocations_etcd" in result.output
    assert "without a scheme" in result.output


def test_revocations_etcd_tls_settings_go_together(tmp_path: Path) -> None:
    base = {"S2S_AGENT_TRUST_DOMAIN": "example.org", "S2S_AGENT_CA_URL": "https://ca:8443",
            "S2S_AGENT_DATA_DIR": str(tmp_path),
            "S2S_AGENT_REVOCATIONS_ETCD": "etcd:2379"}  # fmt: skip
    pair = {"S2S_AGENT_REVOCATIONS_ETCD_CERT": "c.pem", "S2S_AGENT_REVOCATIONS_ETCD_KEY": "k.pem"}
    ok = load_config(environ={**base, "S2S_AGENT_REVOCATIONS_ETCD_CA": "ca.pem", **pair})
    assert ok.revocations_etcd_ca is not None
    assert ok.revocations_etcd_ca.is_absolute()
    for bad in (
        {
            "S2S_AGENT_REVOCATIONS_ETCD_CERT": "c.pem",
            "S2S_AGENT_REVOCATIONS_ETCD_CA": "ca.pem",
        },  # no key
        pair,  # no CA
        {
            "S2S_AGENT_REVOCATIONS_ETCD": "",
            "S2S_AGENT_REVOCATIONS_ETCD_CA": "ca.pem",
        },  # TLS for nothing
    ):
        with pytest.raises(InvalidConfig, match="revocations_etcd"):
            load_config(environ={**base, **bad})
