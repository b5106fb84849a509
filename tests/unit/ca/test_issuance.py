"""Issuance: batches of workload CSRs, JWT-SVIDs, the CA's server SVID, admin mints."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import subprocess
from pathlib import Path

import jwt
import pytest
from ca_helpers import Ca, build_ca, make_csr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from s2s.ca.audit import AUDIT_LOGGER
from s2s.ca.issuance import MAX_BATCH, CsrRequest
from s2s.core.errors import InvalidRequest, NotAuthorized, NotFound, Revoked
from s2s.core.registration import RegistrationEntry
from s2s.core.revocation import RevocationRecord, RevocationSet
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import check_x509_svid
from s2s.store.records import AgentRecord, IssuedKind
from s2s.testing import TestAuthority

BILLING = SpiffeId.parse("spiffe://example.org/billing")
API = SpiffeId.parse("spiffe://example.org/api")
MIN = dt.timedelta(minutes=1)


async def agent_with_entries(ca: Ca) -> tuple[AgentRecord, RegistrationEntry, RegistrationEntry]:
    token = await ca.registry.generate_join_token()
    attested = await ca.attestor.attest_join_token(token.token, make_csr())
    entry = await ca.registry.create_entry(
        spiffe_id=BILLING,
        parent_id=token.agent_id,
        selectors=parse_selectors(["unix:uid:1001"]),
        x509_svid_ttl=2 * MIN,
        dns_names=["billing.example.org"],
        hint="billing",
    )
    other = await ca.registry.create_entry(
        spiffe_id=API,
        parent_id=SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/someone-else"),
        selectors=parse_selectors(["unix:uid:1002"]),
    )
    return attested.agent, entry, other


async def test_batch_issues_checked_svids_from_the_entry(
    ca: Ca, caplog: pytest.LogCaptureFixture
) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, uri="spiffe://example.org/admin")  # the CSR's SAN is ignored
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        (result,) = await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, csr)])
    assert result.error is None
    svid = result.svid
    assert svid is not None
    assert check_x509_svid(svid.cert_chain) == BILLING
    assert svid.hint == "billing"
    assert svid.leaf.public_key() == key.public_key()
    assert svid.not_after - ca.clock.now() == 2 * MIN  # from the entry
    assert ca.clock.now() - svid.not_before == dt.timedelta(seconds=30)  # backdated
    san = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    assert dns == ["billing.example.org"]
    indexed = await ca.store.get_issued(svid.serial)
    assert (indexed.kind, indexed.spiffe_id, indexed.agent_id) == (
        IssuedKind.X509_SVID,
        BILLING,
        agent.spiffe_id,
    )
    audit = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert len(audit) == 1
    assert audit[0].serial == format(svid.serial, "x")  # type: ignore[attr-defined]
    assert audit[0].agent_id == str(agent.spiffe_id)  # type: ignore[attr-defined]
    assert audit[0].entry_id == entry.id  # type: ignore[attr-defined]


async def test_openssl_verifies_issued_chain_and_rejects_foreign_root(
    ca: Ca, tmp_path: Path
) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    (result,) = await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    assert result.svid is not None
    (tmp_path / "leaf.pem").write_bytes(result.svid.leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "inter.pem").write_bytes(
        result.svid.cert_chain[1].public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "bundle.pem").write_bytes(ca.authority.bundle.x509_pem())
    (tmp_path / "foreign.pem").write_bytes(TestAuthority("example.org").bundle_pem())

    def verify(ca_file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(tmp_path / ca_file),
                "-untrusted",
                str(tmp_path / "inter.pem"),
                str(tmp_path / "leaf.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    assert verify("bundle.pem").returncode == 0, verify("bundle.pem").stderr
    assert verify("foreign.pem").returncode != 0


def _key_cases() -> list[tuple[str, object]]:
    return [
        ("RSA-1024", rsa.generate_private_key(65537, 1024)),
        ("RSA-2048-e3", rsa.generate_private_key(3, 2048)),
        ("P-192", ec.generate_private_key(ec.SECP192R1())),
        ("P-521", ec.generate_private_key(ec.SECP521R1())),
        ("Ed25519", ed25519.Ed25519PrivateKey.generate()),
    ]


@pytest.mark.parametrize(("name", "key"), _key_cases(), ids=[c[0] for c in _key_cases()])
async def test_weak_or_unsupported_keys_are_refused(ca: Ca, name: str, key: object) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    (result,) = await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr(key))])  # type: ignore[arg-type]
    assert result.svid is None
    assert isinstance(result.error, InvalidRequest)
    assert "unsupported key" in str(result.error)


async def test_good_rsa_and_p384_keys_are_accepted(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    keys = [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())]
    results = await ca.issuer.sign_x509_svids(
        agent, [CsrRequest(entry.id, make_csr(k)) for k in keys]
    )
    assert all(r.svid is not None for r in results)


async def test_bad_items_fail_alone(ca: Ca) -> None:
    agent, entry, other = await agent_with_entries(ca)
    results = await ca.issuer.sign_x509_svids(
        agent,
        [
            CsrRequest(entry.id, make_csr(tamper=True)),
            CsrRequest(entry.id, b"not a csr"),
            CsrRequest("unknown-entry", make_csr()),
            CsrRequest(other.id, make_csr()),
            CsrRequest(entry.id, make_csr()),
        ],
    )
    errors = [type(r.error) for r in results]
    assert errors == [InvalidRequest, InvalidRequest, NotFound, NotAuthorized, type(None)]
    assert "signature" in str(results[0].error)
    assert "parented by" in str(results[3].error)
    assert results[4].svid is not None
    assert [r.entry_id for r in results][2] == "unknown-entry"
    issued = await ca.store.list_issued(agent_id=agent.spiffe_id)
    assert [i.serial for i in issued if i.kind is IssuedKind.X509_SVID] == [results[4].svid.serial]


async def test_batch_size_limits(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    with pytest.raises(InvalidRequest, match="batch"):
        await ca.issuer.sign_x509_svids(agent, [])
    with pytest.raises(InvalidRequest, match="batch"):
        await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, b"x")] * (MAX_BATCH + 1))
    with pytest.raises(InvalidRequest, match="larger than"):
        ca.issuer.sign_csr(b"x" * 20000, spiffe_id=BILLING, ttl=MIN)
    with pytest.raises(InvalidRequest, match="missing"):
        ca.issuer.sign_csr(b"", spiffe_id=BILLING, ttl=MIN)


async def test_lowered_cap_applies_to_existing_entries(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    lowered = await build_ca(
        dataclasses.replace(ca.config, max_svid_ttl=MIN, x509_svid_ttl=MIN, jwt_svid_ttl=MIN),
        ca.store,
        ca.kek,
        ca.clock,
    )
    (result,) = await lowered.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    assert result.svid is not None
    assert result.svid.not_after - ca.clock.now() == MIN


async def test_revoked_agent_gets_nothing(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    now = ca.clock.now()
    ca.revocations.replace(
        RevocationSet.of(
            [RevocationRecord.for_serial(agent.serial, revoked_at=now, expires_at=now + 60 * MIN)]
        )
    )
    with pytest.raises(Revoked):
        await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    with pytest.raises(Revoked):
        await ca.issuer.mint_jwt_svid(agent, entry.id, ["aud"])


async def test_agent_revoked_by_id_gets_nothing_but_a_later_one_does(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    ca.clock.advance(MIN)
    now = ca.clock.now()
    ca.revocations.replace(
        RevocationSet.of(
            [
                RevocationRecord.for_spiffe_id(
                    agent.spiffe_id, revoked_at=now, expires_at=now + 60 * MIN
                )
            ]
        )
    )
    with pytest.raises(Revoked):
        await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])


async def test_revoked_spiffe_id_is_refused(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    now = ca.clock.now()
    # revoked "until" a minute from now: nothing issued before then is valid, so none is issued
    ca.revocations.replace(
        RevocationSet.of(
            [
                RevocationRecord.for_spiffe_id(
                    BILLING, revoked_at=now + MIN, expires_at=now + 9 * MIN
                )
            ]
        )
    )
    (result,) = await ca.issuer.sign_x509_svids(agent, [CsrRequest(entry.id, make_csr())])
    assert isinstance(result.error, Revoked)
    with pytest.raises(Revoked):
        await ca.issuer.mint_jwt_svid(agent, entry.id, ["aud"])


# -- JWT-SVIDs -------------------------------------------------------------------------------


async def test_jwt_svid_for_entry(ca: Ca) -> None:
    agent, entry, _ = await agent_with_entries(ca)
    token = await ca.issuer.mint_jwt_svid(agent, entry.id, ["a", "b"], ttl=2 * MIN)
    header = jwt.get_unverified_header(token.token)
    assert header == {"alg": "ES256", "kid": ca.authority.jwt_signer.kid, "typ": "JWT"}
    key = ca.authority.bundle.jwt_authority(header["kid"])
    assert key is not None
    claims = jwt.decode(
        token.token,
        key.public_key,  # type: ignore[arg-type]
        algorithms=["ES256"],
        audience="b",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == str(BILLING)
    assert claims["aud"] == ["a", "b"]
    assert claims["exp"] - claims["iat"] == 120
    assert claims["jti"] == token.jti
    assert token.token not in repr(token)


async def test_jwt_svid_rejections(ca: Ca) -> None:
    agent, entry, other = await agent_with_entries(ca)
    with pytest.raises(InvalidRequest, match="above the cap"):
        await ca.issuer.mint_jwt_svid(agent, entry.id, ["a"], ttl=6 * MIN)
    short = await ca.registry.update_entry(entry.id, jwt_svid_ttl=2 * MIN)
    with pytest.raises(InvalidRequest, match="above the entry's TTL of 120s"):
        await ca.issuer.mint_jwt_svid(agent, short.id, ["a"], ttl=3 * MIN)
    with pytest.raises(NotAuthorized, match="parented by"):
        await ca.issuer.mint_jwt_svid(agent, other.id, ["a"])
    with pytest.raises(NotFound):
        await ca.issuer.mint_jwt_svid(agent, "nope", ["a"])
    for bad in ([], "a", [""], [f"a{i}" for i in range(17)], ["x" * 600]):
        with pytest.raises(InvalidRequest, match="audience"):
            await ca.issuer.mint_jwt_svid(agent, entry.id, bad)  # type: ignore[arg-type]


# -- the CA's own SVID and admin mints -------------------------------------------------------


async def test_server_svid_has_the_ca_id_and_its_own_key(ca: Ca) -> None:
    svid = await ca.issuer.issue_server_svid(dns_names=["localhost"])
    assert str(svid.spiffe_id) == "spiffe://example.org/s2s/ca/ca-0"
    assert check_x509_svid(svid.cert_chain) == svid.spiffe_id
    assert svid.private_key is not None
    assert svid.leaf.public_key() == svid.private_key.public_key()
    assert (await ca.store.get_issued(svid.serial)).kind is IssuedKind.CA_SVID


async def test_admin_x509_mint(ca: Ca) -> None:
    svid = await ca.issuer.mint_x509_svid(BILLING, ttl=3 * MIN)
    assert check_x509_svid(svid.cert_chain) == BILLING
    assert svid.not_after - ca.clock.now() == 3 * MIN
    assert svid.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(
    ("spiffe_id", "ttl", "message"),
    [
        ("spiffe://other.org/billing", None, "not in trust domain"),
        ("spiffe://example.org/s2s/agent/join_token/x", None, "reserved path"),
        ("spiffe://example.org/billing", 6, "above the cap"),
        ("spiffe://example.org/billing", 0, "positive"),
    ],
)
async def test_admin_mint_rejections(ca: Ca, spiffe_id: str, ttl: int | None, message: str) -> None:
    sid = SpiffeId.parse(spiffe_id)
    delta = None if ttl is None else ttl * MIN
    with pytest.raises(InvalidRequest, match=message):
        await ca.issuer.mint_x509_svid(sid, ttl=delta)
    with pytest.raises(InvalidRequest, match=message):
        await ca.issuer.mint_jwt_svid_for(sid, ["aud"], ttl=delta)


async def test_admin_jwt_mint(ca: Ca) -> None:
    token = await ca.issuer.mint_jwt_svid_for(BILLING, ["aud"])
    assert token.expires_at - token.issued_at == 5 * MIN
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["aud"] == "aud"


async def test_jwt_minted_in_the_second_of_an_id_revocation_is_not_revoked(ca: Ca) -> None:
    """JWT iat is whole seconds: a token minted 0.3 s after an ID revocation must not carry an
    iat before it (it would be refused everywhere while the agent keeps serving it)."""
    agent, entry, _ = await agent_with_entries(ca)
    second = ca.clock.now().replace(microsecond=0) + MIN
    ca.clock.set(second + dt.timedelta(milliseconds=700))
    record = RevocationRecord.for_spiffe_id(
        BILLING, revoked_at=ca.clock.now(), expires_at=second + 9 * MIN
    )
    revocations = RevocationSet.of([record])
    ca.revocations.replace(revocations)
    ca.clock.advance(dt.timedelta(milliseconds=200))  # still the same whole second
    token = await ca.issuer.mint_jwt_svid(agent, entry.id, ["aud"], ttl=2 * MIN)
    assert token.issued_at == second + dt.timedelta(seconds=1)
    assert token.expires_at - token.issued_at == 2 * MIN
    assert not revocations.is_spiffe_id_revoked(BILLING, token.issued_at)
    admin = await ca.issuer.mint_jwt_svid_for(BILLING, ["aud"])
    assert not revocations.is_spiffe_id_revoked(BILLING, admin.issued_at)
    # twin: with no revocation in this second the token is dated now (rounded down), as always
    ca.revocations.replace(RevocationSet.of([]))
    plain = await ca.issuer.mint_jwt_svid(agent, entry.id, ["aud"], ttl=2 * MIN)
    assert plain.issued_at == second
