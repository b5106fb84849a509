"""Federation between real CAs on loopback: CA A serves its bundle endpoint, CA B keeps a
relationship with A and refreshes A's bundle through it.

Accepted: the endpoint's document (refresh hint, sequence) over https_spiffe and https_web; B
following A through a whole root rotation with no operator action. Rejected, with the last good
bundle kept and the reason in the relationship's status: an endpoint presenting another SPIFFE
ID, one chaining to another root, an https_web certificate from an untrusted CA or for another
host, a document with another trust domain's keys, a sequence that goes backwards, an oversized
or malformed document, an endpoint that is down (the bundle's age grows)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from federation_peers import SHORT, Peer, WebPki, https_answering, running_peer, wait_for
from prometheus_client import generate_latest

from s2s.ca.federated_bundles import SOURCE_ENDPOINT, SOURCE_MANUAL
from s2s.ca.federation_config import BundleEndpointSettings, FederationSettings
from s2s.ca.federation_fetch import BundleFetcher
from s2s.core.bundle import Bundle, BundleSet
from s2s.core.clock import FakeClock, SystemClock
from s2s.core.errors import InvalidBundle, NotAuthorized, Unavailable
from s2s.core.federation import EndpointProfile, FederationRelationship, RefreshPolicy
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.testing import TestAuthority

A, B = TrustDomain.parse("a.test"), TrustDomain.parse("b.test")
A_ENDPOINT = SpiffeId.parse("spiffe://a.test/s2s/bundle-endpoint")
SPIFFE, WEB = EndpointProfile.HTTPS_SPIFFE, EndpointProfile.HTTPS_WEB
FAST = RefreshPolicy(minimum=dt.timedelta(seconds=0.2), maximum=dt.timedelta(seconds=1))


def spiffe_endpoint(hint: int = 1) -> FederationSettings:
    return FederationSettings(
        bundle_endpoint=BundleEndpointSettings(
            address="127.0.0.1:0", refresh_hint=dt.timedelta(seconds=hint)
        )
    )


def roots(bundle: Bundle) -> set[bytes]:
    return {c.public_bytes(Encoding.DER) for c in bundle.x509_authorities}


async def held(peer: Peer, td: TrustDomain) -> Bundle | None:
    record = await peer.server.federated_bundles.get(td)
    return None if record is None else record.bundle


async def federate(b: Peer, a: Peer, **kw: object) -> FederationRelationship:
    """B's relationship with A's https_spiffe endpoint, bootstrapped with A's current bundle."""
    args: dict[str, object] = {
        "url": a.endpoint_url, "profile": SPIFFE, "endpoint_spiffe_id": A_ENDPOINT,
        "bundle": a.server.authority.bundle,
    }  # fmt: skip
    args.update(kw)
    return await b.server.federation.relationships.create(a.td, **args)  # type: ignore[arg-type]


# ---- the endpoint ------------------------------------------------------------------------------


async def test_endpoint_serves_the_bundle_over_https_spiffe(tmp_path: Path) -> None:
    async with running_peer(tmp_path, "a.test", federation=spiffe_endpoint(hint=7)) as a:
        endpoint = a.server.bundle_endpoint
        assert endpoint is not None
        assert endpoint.svid is not None
        assert endpoint.svid.spiffe_id == A_ENDPOINT
        rel = FederationRelationship.create(
            A, a.endpoint_url, SPIFFE, A_ENDPOINT, now=dt.datetime.now(dt.UTC)
        )
        fetcher = BundleFetcher(clock=SystemClock())
        trust = BundleSet.of(a.server.authority.bundle)
        body = await fetcher.fetch(rel, trust)  # no client certificate was asked for
        served = Bundle.decode(A, body)
        assert served.refresh_hint == 7
        assert served.sequence == a.server.authority.bundle.sequence
        assert (
            served.encode()
            == dataclasses.replace(a.server.authority.bundle, refresh_hint=7).encode()
        )

        # Twins: another expected ID; a trust bundle of another root for a.test.
        other_id = dataclasses.replace(rel, endpoint_spiffe_id=A.id("/s2s/not-the-endpoint"))
        with pytest.raises(NotAuthorized, match="not authorized"):
            await fetcher.fetch(other_id, trust)
        stranger = BundleSet.of(Bundle(A, (TestAuthority(A).root,)))
        with pytest.raises(NotAuthorized, match="refused"):
            await fetcher.fetch(rel, stranger)
        with pytest.raises(Unavailable, match=r"no bundle of a\.test"):
            await fetcher.fetch(rel, BundleSet.of())


async def test_endpoint_is_off_by_default(tmp_path: Path) -> None:
    async with running_peer(tmp_path, "a.test") as a:
        assert a.server.bundle_endpoint is None


async def test_https_web_endpoint_and_its_twins(tmp_path: Path) -> None:
    pki = WebPki(tmp_path / "pki")
    cert, key = pki.issue("endpoint", "localhost", "127.0.0.1")
    settings = FederationSettings(
        bundle_endpoint=BundleEndpointSettings(
            address="127.0.0.1:0", profile=WEB, cert_file=cert, key_file=key
        )
    )
    async with running_peer(tmp_path, "a.test", federation=settings) as a:
        rel = FederationRelationship.create(A, a.endpoint_url, WEB, None, now=SystemClock().now())
        trusted = BundleFetcher(clock=SystemClock(), web_ca_file=pki.ca_file)
        fetched = Bundle.decode(A, await trusted.fetch(rel, None))
        assert (
            fetched.encode()
            == dataclasses.replace(a.server.authority.bundle, refresh_hint=300).encode()
        )
        # Twin: the system roots do not know this CA.
        with pytest.raises(NotAuthorized, match=r"certificate verify failed|refused"):
            await BundleFetcher(clock=SystemClock()).fetch(rel, None)
        # Twin: another host name than the certificate's.
        by_ip = dataclasses.replace(
            rel, bundle_endpoint_url=a.endpoint_url.replace("localhost", "127.0.0.2")
        )
        with pytest.raises((NotAuthorized, Unavailable)):
            await trusted.fetch(by_ip, None)

        # The files are reloaded when they change: a new certificate is presented.
        endpoint = a.server.bundle_endpoint
        assert endpoint is not None
        other = WebPki(tmp_path / "pki2", "Another Web CA")
        new_cert, new_key = other.issue("endpoint", "localhost")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        assert await endpoint.reload()
        with pytest.raises(NotAuthorized):
            await trusted.fetch(rel, None)
        moved = BundleFetcher(clock=SystemClock(), web_ca_file=other.ca_file)
        assert Bundle.decode(A, await moved.fetch(rel, None)).trust_domain == A
        # A broken new pair is refused and the last good one kept.
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        assert not await endpoint.reload()
        assert Bundle.decode(A, await moved.fetch(rel, None)).trust_domain == A


# ---- the refresher -----------------------------------------------------------------------------


async def test_b_follows_a_root_rotation_with_no_operator_action(tmp_path: Path) -> None:
    b_settings = FederationSettings(refresh=FAST)
    async with (
        running_peer(tmp_path, "a.test", federation=spiffe_endpoint(hint=1), overrides=SHORT) as a,
        running_peer(tmp_path, "b.test", federation=b_settings) as b,
    ):
        await federate(b, a)
        first = a.server.authority.bundle

        async def b_has(expected: set[bytes]) -> bool:
            got = await b.server.federated_bundles.get(A)  # fetched, not the bootstrap copy
            return (
                got is not None and got.source == SOURCE_ENDPOINT and roots(got.bundle) == expected
            )

        async def b_is_current() -> bool:
            got = await held(b, A)
            return got is not None and got.sequence == a.server.authority.bundle.sequence

        await wait_for(lambda: b_has(roots(first)), "B's first fetch of A's bundle")
        record = await b.server.federated_bundles.get(A)
        assert record is not None
        assert record.source == SOURCE_ENDPOINT
        rotation = a.server.services.root_rotation
        assert rotation is not None

        progress = await rotation.step()  # prepare: the new root joins A's bundle
        assert progress.phase == "prepared", progress
        both = roots(a.server.authority.bundle)
        assert len(both) == 2
        await wait_for(lambda: b_has(both), "B holding both of A's roots")

        async def advanced() -> bool:
            return (await rotation.step()).done

        await wait_for(advanced, "A's rotation to finish", timeout=40)
        new_only = roots(a.server.authority.bundle)
        assert len(new_only) == 1
        assert new_only < both
        await wait_for(lambda: b_has(new_only), "B dropping A's old root")
        # A's endpoint now presents an SVID under the new root; B still fetches it.
        assert (await b.server.federation.refresh(A)).bundle.sequence == (
            a.server.authority.bundle.sequence
        )
        await wait_for(b_is_current, "B current")
        rel = await b.server.federation.relationships.get(A)
        assert rel.status.failures == 0
        assert rel.status.last_error is None


async def test_refresh_refused_and_last_good_bundle_kept(tmp_path: Path) -> None:
    async with (
        running_peer(tmp_path, "a.test", federation=spiffe_endpoint()) as a,
        running_peer(tmp_path, "b.test") as b,
    ):
        refresher = b.server.federation
        # An endpoint presenting another SPIFFE ID than configured.
        await federate(b, a, endpoint_spiffe_id=A.id("/s2s/other"))
        manual = await b.server.federated_bundles.get(A)
        assert manual is not None
        assert manual.source == SOURCE_MANUAL
        with pytest.raises(NotAuthorized, match="not authorized"):
            await refresher.refresh(A)
        status = (await refresher.relationships.get(A)).status
        assert status.failures >= 1  # the loop, woken by the create, may have tried too
        assert status.last_error is not None
        assert "not_authorized" in status.last_error
        assert await b.server.federated_bundles.get(A) == manual

        # An endpoint chaining to another root than the bundle held for A.
        await refresher.relationships.delete(A)
        await federate(b, a, bundle=Bundle(A, (TestAuthority(A).root,)))
        with pytest.raises(NotAuthorized, match="refused"):
            await refresher.refresh(A)

        # The real bundle: accepted. Then a sequence that goes backwards is refused.
        await refresher.relationships.update(A, bundle=a.server.authority.bundle)
        good = await refresher.refresh(A)
        assert good.source == SOURCE_ENDPOINT
        ahead = dataclasses.replace(good.bundle, sequence=good.bundle.sequence + 5)
        await b.server.federated_bundles.put(ahead, source=SOURCE_ENDPOINT, refreshed=True)
        with pytest.raises(InvalidBundle, match="went backwards"):
            await refresher.refresh(A)
        after = await b.server.federated_bundles.get(A)
        assert after is not None
        assert after.bundle == ahead


async def test_documents_refused(tmp_path: Path) -> None:
    pki = WebPki(tmp_path / "pki")
    cert, key = pki.issue("server", "localhost")
    c_bundle = TestAuthority("c.test").bundle()
    b_settings = FederationSettings(web_ca_file=pki.ca_file)
    cases = [
        (c_bundle.encode(), InvalidBundle, "authority of trust domain c.test"),
        (b"<html>maintenance</html>", InvalidBundle, "not valid JSON"),
        (b'{"keys": "none"}', InvalidBundle, "keys"),
        (b" " * ((1 << 20) + 10), InvalidBundle, "larger than"),
        (b"{}", Unavailable, "HTTP 503"),
    ]
    async with running_peer(tmp_path, "b.test", federation=b_settings) as b:
        refresher = b.server.federation
        for body, error, message in cases:
            status = 503 if message == "HTTP 503" else 200
            async with https_answering(cert, key, body, status=status) as url:
                await refresher.relationships.create(A, url=url, profile=WEB)
                with pytest.raises(error, match=message):
                    await refresher.refresh(A)
                assert await b.server.federated_bundles.get(A) is None
                await refresher.relationships.delete(A)
        # The accepting twin: a.test's own bundle from the same server.
        a_bundle = TestAuthority(A).bundle()
        async with https_answering(cert, key, a_bundle.encode()) as url:
            await refresher.relationships.create(A, url=url, profile=WEB)
            assert (await refresher.refresh(A)).bundle == a_bundle


async def test_endpoint_down_keeps_the_last_good_bundle_and_its_age_grows(
    tmp_path: Path,
) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with running_peer(tmp_path, "b.test", clock=clock) as b:
        refresher = b.server.federation
        async with running_peer(tmp_path, "a.test", federation=spiffe_endpoint()) as a:
            await federate(b, a)
            good = await refresher.refresh(A)
        # A is gone now.
        clock.advance(dt.timedelta(seconds=120))
        with pytest.raises(Unavailable, match=r"cannot fetch|did not answer"):
            await refresher.refresh(A)
        assert (await b.server.federated_bundles.get(A)) == good
        rel = await refresher.relationships.get(A)
        failures = rel.status.failures
        assert failures >= 1  # (the loop may have tried as well)
        assert rel.status.last_success_at is not None
        assert rel.status.next_refresh_at is not None
        assert rel.status.next_refresh_at > clock.now()
        await refresher.refresh_due()  # not due yet: nothing tried, the count stays
        assert (await refresher.relationships.get(A)).status.failures == failures
        age = refresher.ages()[A][0]
        assert age is not None
        assert age >= 120
        clock.advance(dt.timedelta(seconds=60))
        later = refresher.ages()[A][0]
        assert later is not None
        assert later >= age + 60
        metrics = generate_latest(b.server.metrics.registry).decode()
        assert 's2s_ca_federation_bundle_age_seconds{trust_domain="a.test"}' in metrics
        gauge = f's2s_ca_federation_refresh_failures{{trust_domain="a.test"}} {failures}.0'
        assert gauge in metrics
        assert 's2s_ca_federation_refreshes_total{result="unavailable",trust_domain="a.test"}' in (
            metrics
        )


async def test_endpoint_svid_is_renewed_before_it_expires(tmp_path: Path) -> None:
    async with running_peer(tmp_path, "a.test", federation=spiffe_endpoint(), overrides=SHORT) as a:
        endpoint = a.server.bundle_endpoint
        assert endpoint is not None
        first = endpoint.svid
        assert first is not None
        lifetime = first.not_after - first.not_before
        assert lifetime <= dt.timedelta(seconds=10)  # server_svid_ttl (8 s) plus the backdate

        def renewed() -> bool:
            svid = endpoint.svid
            return svid is not None and svid.serial != first.serial

        await wait_for(renewed, "the endpoint's SVID renewed at half-life", timeout=15)
        svid = endpoint.svid
        assert svid is not None
        assert svid.spiffe_id == A_ENDPOINT
        assert dt.datetime.now(dt.UTC) < first.not_after  # renewed before the old one expired
        rel = FederationRelationship.create(
            A, a.endpoint_url, SPIFFE, A_ENDPOINT, now=SystemClock().now()
        )
        body = await BundleFetcher(clock=SystemClock()).fetch(
            rel, BundleSet.of(a.server.authority.bundle)
        )
        assert Bundle.decode(A, body).trust_domain == A


async def test_redirects_are_followed_and_checked(tmp_path: Path) -> None:
    pki = WebPki(tmp_path / "pki")
    cert, key = pki.issue("server", "localhost")
    a_bundle = TestAuthority(A).bundle()
    fetcher = BundleFetcher(clock=SystemClock(), web_ca_file=pki.ca_file)

    def rel(url: str) -> FederationRelationship:
        return FederationRelationship.create(A, url, WEB, None, now=SystemClock().now())

    async with https_answering(cert, key, a_bundle.encode()) as target:
        moved = {"Location": target}
        async with https_answering(cert, key, b"", status=302, headers=moved) as first:
            assert Bundle.decode(A, await fetcher.fetch(rel(first), None)) == a_bundle
            # Twin: a chain of redirects longer than three.
            async with (
                https_answering(cert, key, b"", status=307, headers={"Location": first}) as r2,
                https_answering(cert, key, b"", status=307, headers={"Location": r2}) as r3,
                https_answering(cert, key, b"", status=307, headers={"Location": r3}) as r4,
            ):
                with pytest.raises(Unavailable, match="more than 3 times"):
                    await fetcher.fetch(rel(r4), None)
        # Twins: a redirect to plain http, and one without a Location.
        plain = {"Location": target.replace("https://", "http://")}
        async with https_answering(cert, key, b"", status=301, headers=plain) as downgrade:
            with pytest.raises(Unavailable, match="bad URL"):
                await fetcher.fetch(rel(downgrade), None)
        async with https_answering(cert, key, b"", status=302) as nowhere:
            with pytest.raises(Unavailable, match="without a Location"):
                await fetcher.fetch(rel(nowhere), None)
