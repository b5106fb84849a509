"""PemFileX509Source with federated bundle files (what ``s2s-agent api fetch x509 --write`` writes):
each file is its trust domain's own bundle, a peer of that trust domain is accepted over mTLS, and
a changed file is followed; twins: no federated file (the peer is refused), a federated file
naming our own trust domain, a bad trust domain name, a missing file."""

from __future__ import annotations

from pathlib import Path

import pytest
from verifier_support import exchange, serving, source_of, wait_for, write_atomically, write_svid

from s2s.core.bundle import Bundle
from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority
from s2s.verifier.authorize import authorize_member_of
from s2s.verifier.revocation_choice import no_revocation_check
from s2s.verifier.source_pem import PemFileX509Source
from s2s.verifier.sync import open_pem_source
from s2s.verifier.tls import client_context, server_context

OWN = TestAuthority("example.org")
OTHER = TestAuthority("other.org")
OTHER_TD = TrustDomain.parse("other.org")


async def test_a_federated_file_lets_a_peer_of_that_trust_domain_in(tmp_path: Path) -> None:
    paths = write_svid(tmp_path, OWN.issue_x509_svid("spiffe://example.org/api"), OWN.bundle_pem())
    federated = tmp_path / "federated.other.org.pem"
    federated.write_bytes(OTHER.bundle_pem())
    client = client_context(
        source_of(OTHER.issue_x509_svid("spiffe://other.org/caller"), OTHER.bundle(), OWN.bundle()),
        authorize=authorize_member_of("example.org"),
        revocations=no_revocation_check(),
    )
    async with PemFileX509Source(*paths, federated={"other.org": federated}) as source:
        bundles = source.current().bundles
        assert bundles.trust_domains() == {OWN.trust_domain, OTHER_TD}
        assert bundles.get(OTHER_TD) == Bundle(OTHER_TD, (OTHER.root,))  # its own, not merged
        server = server_context(
            source, authorize=authorize_member_of("other.org"), revocations=no_revocation_check()
        )
        async with serving(server) as served:
            assert await exchange(served.port, client) == b"spiffe://other.org/caller"
    # twin: without the federated file the same peer is refused
    async with PemFileX509Source(*paths) as plain:
        server = server_context(
            plain, authorize=authorize_member_of("other.org"), revocations=no_revocation_check()
        )
        async with serving(server) as served:
            assert await exchange(served.port, client) == b""
            assert served.peers == []


async def test_a_changed_federated_file_is_followed(tmp_path: Path) -> None:
    paths = write_svid(tmp_path, OWN.issue_x509_svid("spiffe://example.org/api"), OWN.bundle_pem())
    federated = tmp_path / "federated.other.org.pem"
    federated.write_bytes(OTHER.bundle_pem())
    rotated = TestAuthority("other.org")
    async with PemFileX509Source(
        *paths, federated={OTHER_TD: federated}, poll_interval=0.02
    ) as source:
        write_atomically(federated, OTHER.bundle_pem() + rotated.bundle_pem())
        await wait_for(
            lambda: source.current().bundles.get(OTHER_TD) == Bundle(
                OTHER_TD, (OTHER.root, rotated.root)
            )
        )  # fmt: skip


def test_bad_federated_files_are_refused(tmp_path: Path) -> None:
    paths = write_svid(tmp_path, OWN.issue_x509_svid("spiffe://example.org/api"), OWN.bundle_pem())
    good = tmp_path / "federated.other.org.pem"
    good.write_bytes(OTHER.bundle_pem())
    for federated, message in (
        ({"example.org": good}, "own trust domain"),
        ({"Not A Domain": good}, "federated"),
        ({"other.org": tmp_path / "missing.pem"}, "missing.pem"),
    ):
        with pytest.raises(InvalidConfig, match=message):
            PemFileX509Source(*paths, federated=federated)


def test_the_synchronous_facade_takes_federated_files(tmp_path: Path) -> None:
    paths = write_svid(tmp_path, OWN.issue_x509_svid("spiffe://example.org/api"), OWN.bundle_pem())
    federated = tmp_path / "federated.other.org.pem"
    federated.write_bytes(OTHER.bundle_pem())
    with open_pem_source(*paths, federated={"other.org": str(federated)}) as source:
        assert OTHER_TD in source.current().bundles.trust_domains()
    with open_pem_source(*paths) as plain:  # twin
        assert OTHER_TD not in plain.current().bundles.trust_domains()
