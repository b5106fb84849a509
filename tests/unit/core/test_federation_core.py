"""s2s.core.federation: endpoint URLs, relationship records, the checks on a fetched bundle
(size, parse, another trust domain's keys, sequence going backwards) and refresh timing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.errors import InvalidBundle, InvalidConfig, InvalidRequest
from s2s.core.federation import (
    EPOCH,
    EndpointProfile,
    FederationRelationship,
    RefreshPolicy,
    RefreshStatus,
    check_endpoint_url,
    validate_fetched_bundle,
)
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.testing import TestAuthority

B = TrustDomain.parse("b.test")
C = TrustDomain.parse("c.test")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ENDPOINT_ID = SpiffeId.parse("spiffe://b.test/s2s/bundle-endpoint")


@pytest.mark.parametrize(
    "url",
    [
        "https://b.test/bundle",
        "https://127.0.0.1:8443/",
        "https://[::1]:8443/x?y=1",
    ],
)
def test_endpoint_url_accepted(url: str) -> None:
    assert check_endpoint_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://b.test/bundle", "https"),
        ("ftp://b.test/", "https"),
        ("https://user:pw@b.test/", "userinfo"),
        ("https://user@b.test/", "userinfo"),
        ("https:///bundle", "host"),
        ("https://b.test/#frag", "fragment"),
        ("https://b.test:99999/", "malformed"),
        ("https://b.test/ x", "spaces"),
        ("https://a..b/", "bad host"),
        ("https://" + "a" * 70 + ".test/", "bad host"),
        ("", "1-2048"),
        ("https://b.test/" + "a" * 3000, "1-2048"),
    ],
)
def test_endpoint_url_refused(url: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_endpoint_url(url)


def _spiffe_rel(**kw: object) -> FederationRelationship:
    base = {
        "trust_domain": B,
        "bundle_endpoint_url": "https://b.test/",
        "profile": EndpointProfile.HTTPS_SPIFFE,
        "endpoint_spiffe_id": ENDPOINT_ID,
        "created_at": NOW,
        "updated_at": NOW,
    }
    base.update(kw)
    return FederationRelationship(**base)  # type: ignore[arg-type]


def test_relationship_round_trip_and_self_serving() -> None:
    rel = _spiffe_rel(status=RefreshStatus(NOW, NOW, None, 0, NOW + dt.timedelta(minutes=5)))
    assert FederationRelationship.from_json(json.loads(json.dumps(rel.to_json()))) == rel
    assert rel.self_serving
    other = _spiffe_rel(endpoint_spiffe_id=SpiffeId.parse("spiffe://c.test/bundle-server"))
    assert not other.self_serving
    web = _spiffe_rel(profile=EndpointProfile.HTTPS_WEB, endpoint_spiffe_id=None)
    assert not web.self_serving
    assert FederationRelationship.from_json(web.to_json()) == web


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"endpoint_spiffe_id": None}, "needs the endpoint's SPIFFE ID"),
        ({"endpoint_spiffe_id": SpiffeId.parse("spiffe://b.test")}, "needs a path"),
        ({"profile": EndpointProfile.HTTPS_WEB}, "no SPIFFE ID"),
        ({"bundle_endpoint_url": "http://b.test/"}, "https"),
        ({"created_at": dt.datetime(2026, 1, 1)}, "aware"),
    ],
)
def test_relationship_refused(changes: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        _spiffe_rel(**changes)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"trust_domain": "B.TEST!"}, "trust domain|SPIFFE"),
        ({"profile": "https_ftp"}, "profile"),
        ({"endpoint_spiffe_id": "spiffe://b.test/a/../b"}, "SPIFFE ID"),
        ({"created_at": "yesterday"}, "ISO 8601"),
        ({"created_at": "2026-01-01T00:00:00"}, "offset"),
        ({"status": {"failures": -1}}, "failures"),
        ({"status": "broken"}, "status"),
    ],
)
def test_relationship_json_refused(doc: dict[str, object], why: str) -> None:
    good = _spiffe_rel().to_json()
    with pytest.raises(InvalidRequest, match=why):
        FederationRelationship.from_json({**good, **doc})


def test_status_failed_then_succeeded() -> None:
    status = RefreshStatus().failed(NOW, "x" * 2000, NOW + dt.timedelta(seconds=30))
    assert status.failures == 1
    assert status.last_error is not None
    assert len(status.last_error) == 500
    assert status.last_success_at is None
    again = status.failed(NOW, "down", NOW)
    assert again.failures == 2
    ok = again.succeeded(NOW, NOW + dt.timedelta(minutes=5))
    assert (ok.failures, ok.last_error, ok.last_success_at) == (0, None, NOW)
    assert RefreshStatus.from_json(ok.to_json()) == ok


# ---- a fetched bundle ----------------------------------------------------------------------------


def test_fetched_bundle_accepted() -> None:
    bundle = dataclasses.replace(TestAuthority(B).bundle(), sequence=7, refresh_hint=60)
    got = validate_fetched_bundle(B, bundle.encode(), previous=None)
    assert got == bundle
    # Same sequence (content may change with it) and a higher one are accepted.
    assert validate_fetched_bundle(B, bundle.encode(), previous=bundle) == bundle
    older = dataclasses.replace(bundle, sequence=6)
    assert validate_fetched_bundle(B, bundle.encode(), previous=older) == bundle


def test_fetched_bundle_sequence_backwards_refused() -> None:
    bundle = dataclasses.replace(TestAuthority(B).bundle(), sequence=7)
    newer = dataclasses.replace(bundle, sequence=8)
    with pytest.raises(InvalidBundle, match=r"went backwards \(7 after 8\)"):
        validate_fetched_bundle(B, bundle.encode(), previous=newer)


def test_fetched_bundle_of_another_trust_domain_refused() -> None:
    c_bundle = TestAuthority(C).bundle()  # its root names spiffe://c.test
    with pytest.raises(InvalidBundle, match=r"authority of trust domain c\.test"):
        validate_fetched_bundle(B, c_bundle.encode(), previous=None)
    mixed = Bundle(B, (TestAuthority(B).root, TestAuthority(C).root))
    with pytest.raises(InvalidBundle, match=r"c\.test"):
        validate_fetched_bundle(B, mixed.encode(), previous=None)


def test_fetched_bundle_oversized_refused() -> None:
    with pytest.raises(InvalidBundle, match="larger than 100 bytes"):
        validate_fetched_bundle(B, TestAuthority(B).bundle().encode(), previous=None, max_bytes=100)
    with pytest.raises(InvalidBundle, match="larger than"):
        validate_fetched_bundle(B, b" " * (MAX_BUNDLE_BYTES + 1), previous=None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>not json</html>",
        b"[]",
        b'{"spiffe_sequence": 1}',
        b'{"keys": [], "keys": []}',
        b'{"keys": [], "spiffe_sequence": -1}',
        b"\xff\xfe",
        b'{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["!!"]}]}',
    ],
)
def test_fetched_bundle_malformed_refused(body: bytes) -> None:
    with pytest.raises(InvalidBundle):
        validate_fetched_bundle(B, body, previous=None)


# ---- refresh timing ------------------------------------------------------------------------------


def test_refresh_policy_bounds_and_jitter() -> None:
    policy = RefreshPolicy(minimum=dt.timedelta(seconds=10), maximum=dt.timedelta(minutes=10))
    assert policy.interval(None) == dt.timedelta(minutes=5)
    assert policy.interval(1) == dt.timedelta(seconds=10)
    assert policy.interval(86400) == dt.timedelta(minutes=10)
    low = policy.after_success(300, rand=0.999)
    assert dt.timedelta(seconds=270) <= low <= dt.timedelta(seconds=300)
    # Failures back off from the minimum and never beyond the polling interval.
    waits = [policy.after_failure(n, 120, rand=0.0).total_seconds() for n in range(1, 8)]
    assert waits == [10.0, 20.0, 40.0, 80.0, 120.0, 120.0, 120.0]
    assert policy.after_failure(50, 120, rand=0.999) <= dt.timedelta(seconds=120)


def test_refresh_policy_refuses_bad_bounds() -> None:
    with pytest.raises(InvalidConfig):
        RefreshPolicy(minimum=dt.timedelta(0))
    with pytest.raises(InvalidConfig):
        RefreshPolicy(minimum=dt.timedelta(hours=2), maximum=dt.timedelta(hours=1))


def test_epoch_is_utc() -> None:
    assert EPOCH.utcoffset() == dt.timedelta(0)
