"""The issuer's leaf layouts: one per (SPIFFE ID, DNS names, key kind) under each intermediate,
bounded, and never carried over to the next intermediate."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from ca_helpers import Ca, make_csr
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from s2s.ca import signers
from s2s.ca.issuance import CsrRequest
from s2s.core.errors import InvalidRequest
from s2s.core.selectors import parse_selectors
from s2s.core.spiffe_id import SpiffeId
from s2s.core.x509svid import check_x509_svid

HOUR = dt.timedelta(hours=1)
BILLING = SpiffeId.parse("spiffe://example.org/billing")


def _aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


async def test_leaves_of_one_entry_share_a_layout_and_differ_in_key_and_serial(ca: Ca) -> None:
    token = await ca.registry.generate_join_token()
    agent = (await ca.attestor.attest_join_token(token.token, make_csr())).agent
    entry = await ca.registry.create_entry(
        spiffe_id=BILLING,
        parent_id=token.agent_id,
        selectors=parse_selectors(["unix:uid:1001"]),
        dns_names=["billing.example.org"],
    )
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    keys.append(rsa.generate_private_key(65537, 2048))
    results = await ca.issuer.sign_x509_svids(
        agent, [CsrRequest(entry.id, make_csr(k)) for k in keys]
    )
    signer = ca.authority.x509_signer
    assert {(t[0], t[1], t[2]) for t in signer.layouts} >= {
        (BILLING, ("billing.example.org",), False),
        (BILLING, ("billing.example.org",), True),
    }
    svids = [r.svid for r in results]
    assert all(s is not None for s in svids)
    assert len({s.serial for s in svids if s is not None}) == 4
    for svid, key in zip(svids, keys, strict=True):
        assert svid is not None
        assert svid.leaf.public_key() == key.public_key()
        assert check_x509_svid(svid.cert_chain) == BILLING
        svid.leaf.verify_directly_issued_by(signer.certificate)


async def test_a_new_intermediate_gets_new_layouts(ca: Ca) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    before = ca.issuer.sign_csr(csr, spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    first = ca.authority.x509_signer
    ca.clock.advance(12 * HOUR + dt.timedelta(minutes=1))
    await ca.authority.rotate_if_due()
    ca.clock.advance(8 * HOUR)
    assert await ca.authority.rotate_if_due() is True
    second = ca.authority.x509_signer
    assert second is not first
    assert not second.layouts
    after = ca.issuer.sign_csr(csr, spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    after.leaf.verify_directly_issued_by(second.certificate)
    assert after.leaf.issuer == second.certificate.subject != before.leaf.issuer
    assert _aki(after.leaf) != _aki(before.leaf)
    assert check_x509_svid(after.cert_chain) == BILLING


async def test_the_layout_memo_is_bounded(ca: Ca, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signers, "MAX_LEAF_LAYOUTS", 3)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    for i in range(8):
        spiffe_id = SpiffeId.parse(f"spiffe://example.org/w{i}")
        svid = ca.issuer.sign_csr(csr, spiffe_id=spiffe_id, ttl=dt.timedelta(minutes=5))
        assert check_x509_svid(svid.cert_chain) == spiffe_id
        assert 1 <= len(ca.authority.x509_signer.layouts) <= 3


@pytest.mark.parametrize("dns_names", ["billing.example.org", [b"billing.example.org"], [["x"]]])
async def test_dns_names_that_are_not_a_sequence_of_strings_are_refused(
    ca: Ca, dns_names: object
) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidRequest, match="dns_names"):
        ca.issuer.sign_csr(
            csr,
            spiffe_id=BILLING,
            ttl=dt.timedelta(minutes=5),
            dns_names=dns_names,  # type: ignore[arg-type]
        )
    assert not ca.authority.x509_signer.layouts


async def test_a_copied_signer_does_not_share_layouts(ca: Ca) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    ca.issuer.sign_csr(csr, spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    signer = ca.authority.x509_signer
    assert signer.layouts
    copy = dataclasses.replace(signer)
    assert copy.layouts == {}
    assert copy.layouts is not signer.layouts


async def test_a_layout_of_another_issuer_is_never_used(ca: Ca) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    ca.issuer.sign_csr(csr, spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    first = ca.authority.x509_signer
    ca.clock.advance(12 * HOUR + dt.timedelta(minutes=1))
    await ca.authority.rotate_if_due()
    ca.clock.advance(8 * HOUR)
    assert await ca.authority.rotate_if_due() is True
    second = ca.authority.x509_signer
    second.layouts.update(first.layouts)  # the old intermediate's layout under the same key
    svid = ca.issuer.sign_csr(csr, spiffe_id=BILLING, ttl=dt.timedelta(minutes=5))
    svid.leaf.verify_directly_issued_by(second.certificate)
    assert svid.leaf.issuer == second.certificate.subject
    assert all(layout.issuer is second.certificate for layout in second.layouts.values())
