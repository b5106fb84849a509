"""The system's openssl agrees with our X509-SVID profile: it verifies our chains, shows our flags.

openssl reads the wall clock, so these tests use authorities on real time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from s2s.core.x509svid import X509Svid
from s2s.testing import TestAuthority

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

WORKLOAD = "spiffe://example.org/ns/shop/sa/billing"
PEM = serialization.Encoding.PEM


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )


def write_chain(tmp_path: Path, svid: X509Svid, bundle_pem: bytes) -> tuple[Path, Path, Path]:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(bundle_pem)
    intermediate = tmp_path / "intermediate.pem"
    intermediate.write_bytes(b"".join(c.public_bytes(PEM) for c in svid.cert_chain[1:]))
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(svid.leaf.public_bytes(PEM))
    return bundle, intermediate, leaf


def verify(tmp_path: Path, svid: X509Svid, bundle_pem: bytes, *extra: str) -> str:
    bundle, intermediate, leaf = write_chain(tmp_path, svid, bundle_pem)
    done = openssl("verify", *extra, "-CAfile", bundle, "-untrusted", intermediate, leaf)
    return done.stdout + done.stderr if done.returncode else "OK"


@pytest.fixture(scope="module")
def ca() -> TestAuthority:
    return TestAuthority("example.org")


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_verifies_the_chain(tmp_path: Path, ca: TestAuthority, purpose: str) -> None:
    svid = ca.issue_x509_svid(WORKLOAD, dns_names=["billing.local"])
    assert verify(tmp_path, svid, ca.bundle_pem(), "-x509_strict", "-purpose", purpose) == "OK"


def test_openssl_rejects_a_foreign_root(tmp_path: Path, ca: TestAuthority) -> None:
    svid = ca.issue_x509_svid(WORKLOAD)
    result = verify(tmp_path, svid, TestAuthority("example.org").bundle_pem())
    assert "unable to get local issuer certificate" in result


def test_openssl_rejects_a_forged_issuer(tmp_path: Path, ca: TestAuthority) -> None:
    forged = ca.issue_x509_svid(WORKLOAD, issuer=TestAuthority("example.org"))
    assert "unable to get local issuer certificate" in verify(tmp_path, forged, ca.bundle_pem())


def test_openssl_rejects_expired_and_early(tmp_path: Path, ca: TestAuthority) -> None:
    expired = ca.issue_x509_svid(WORKLOAD, expired=True)
    assert "certificate has expired" in verify(tmp_path, expired, ca.bundle_pem())
    early = ca.issue_x509_svid(WORKLOAD, not_yet_valid=True)
    assert "certificate is not yet valid" in verify(tmp_path, early, ca.bundle_pem())


def test_openssl_rejects_a_missing_intermediate(tmp_path: Path, ca: TestAuthority) -> None:
    svid = ca.issue_x509_svid(WORKLOAD, include_intermediate=False)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(svid.leaf.public_bytes(PEM))
    done = openssl("verify", "-CAfile", bundle, leaf)
    assert done.returncode != 0


def text_of(tmp_path: Path, pem: bytes) -> str:
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    done = openssl("x509", "-in", path, "-text", "-noout")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_openssl_shows_the_leaf_profile(tmp_path: Path, ca: TestAuthority) -> None:
    svid = ca.issue_x509_svid(WORKLOAD, dns_names=["billing.local"])
    text = text_of(tmp_path, svid.leaf.public_bytes(PEM))
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in text
    assert (
        "X509v3 Extended Key Usage: \n"
        "                TLS Web Server Authentication, TLS Web Client Authentication"
    ) in text
    assert (
        f"X509v3 Subject Alternative Name: \n                URI:{WORKLOAD}, DNS:billing.local\n"
    ) in text
    assert "Subject: O = s2s, CN = billing.local" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "ecdsa-with-SHA256" in text


def test_openssl_shows_the_ca_profile(tmp_path: Path, ca: TestAuthority) -> None:
    for cert, pathlen in ((ca.root, ""), (ca.intermediate, ", pathlen:0")):
        text = text_of(tmp_path, cert.public_bytes(PEM))
        assert f"X509v3 Basic Constraints: critical\n                CA:TRUE{pathlen}\n" in text
        assert "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign" in text
        assert (
            "X509v3 Subject Alternative Name: \n                URI:spiffe://example.org\n" in text
        )
        assert f"Subject: O = SPIFFE, serialNumber = {cert.serial_number}\n" in text


def test_openssl_shows_a_bad_profile(tmp_path: Path, ca: TestAuthority) -> None:
    """The twin: a bad option is visible to openssl as well."""
    svid = ca.issue_x509_svid(WORKLOAD, two_uri_sans=True)
    text = text_of(tmp_path, svid.leaf.public_bytes(PEM))
    assert f"URI:{WORKLOAD}, URI:{WORKLOAD}-second" in text
    svid = ca.issue_x509_svid(WORKLOAD, cert_sign_usage=True)
    assert "Digital Signature, Certificate Sign" in text_of(tmp_path, svid.leaf.public_bytes(PEM))
