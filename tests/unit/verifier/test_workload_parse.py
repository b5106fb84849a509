"""Parsing Workload API payloads: chains, bundle maps, claims; malformed input is refused."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from s2s.core.errors import InvalidBundle, InvalidSvid
from s2s.testing import TestAuthority
from s2s.verifier import workload_parse as parse
from s2s.workload_proto import workload_pb2 as pb


def test_split_der_round_trip(authority: TestAuthority) -> None:
    svid = authority.issue_x509_svid("spiffe://example.org/web")
    parts = parse.split_der(svid.chain_der())
    assert len(parts) == len(svid.cert_chain) == 2
    assert b"".join(parts) == svid.chain_der()
    assert parse.split_der(b"") == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x31\x00",
        b"\x30",
        b"\x30\x05abc",
        b"\x30\x80",
        b"\x30\x85\x00\x00\x00\x00\x01",
        b"\x30\x00" * 17,
    ],
    ids=["tag", "short", "truncated", "indefinite", "huge-length", "too-many"],
)
def test_split_der_rejects(data: bytes) -> None:
    with pytest.raises(InvalidSvid):
        parse.split_der(data)


def svid_message(authority: TestAuthority, **overrides: object) -> pb.X509SVIDResponse:
    svid = authority.issue_x509_svid("spiffe://example.org/web")
    fields = {
        "spiffe_id": str(svid.spiffe_id),
        "x509_svid": svid.chain_der(),
        "x509_svid_key": svid.key_pkcs8_der(),
        "bundle": authority.bundle().x509_der(),
    }
    fields.update(overrides)
    return pb.X509SVIDResponse(svids=[pb.X509SVID(**fields)])  # type: ignore[arg-type]


def test_x509_svids_parses_a_good_response(authority: TestAuthority) -> None:
    svids, bundles = parse.x509_svids(svid_message(authority))
    assert str(svids[0].spiffe_id) == "spiffe://example.org/web"
    assert len(bundles) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"spiffe_id": "not an id"},
        {"x509_svid": b""},
        {"x509_svid": b"\x30\x03abc"},
        {"x509_svid_key": b"garbage"},
    ],
    ids=["bad-id", "no-chain", "bad-der", "bad-key"],
)
def test_x509_svids_rejects(authority: TestAuthority, overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidSvid):
        parse.x509_svids(svid_message(authority, **overrides))


def test_x509_svids_rejects_empty_and_bad_federated_keys(authority: TestAuthority) -> None:
    with pytest.raises(InvalidSvid):
        parse.x509_svids(pb.X509SVIDResponse())
    message = svid_message(authority)
    message.federated_bundles["spiffe://Bad.Org"] = authority.bundle().x509_der()
    with pytest.raises(InvalidBundle):
        parse.x509_svids(message)


def test_jwt_bundles_accept_keys_without_use(authority: TestAuthority) -> None:
    jwks = authority.bundle().jwt_jwks().replace(b'"use":"jwt-svid",', b"")
    assert b'"use"' not in jwks
    (bundle,) = parse.jwt_bundles([("spiffe://example.org", jwks)])
    assert [a.kid for a in bundle.jwt_authorities] == [authority.jwt_kid]
    for bad in (b"not json", b'{"keys": 1}', b"[]"):
        with pytest.raises(InvalidBundle):
            parse.jwt_bundles([("spiffe://example.org", bad)])


def test_claims_restores_integers() -> None:
    struct = struct_pb2.Struct()
    struct.update({"exp": 1700000000, "aud": ["a", "b"], "x": 1.5, "n": {"k": 2}})
    assert parse.claims(struct) == {"exp": 1700000000, "aud": ["a", "b"], "x": 1.5, "n": {"k": 2}}
