"""certs-dev/generate.py: what it writes verifies with openssl and with the X509-SVID profile check,
keys are private, and the foreign-root twin is refused."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s2s.core.bundle import Bundle
from s2s.core.spiffe_id import TrustDomain
from s2s.core.x509svid import check_x509_svid, spiffe_id_of

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "certs-dev" / "generate.py"
TD = "dev.example.test"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("certs") / "out"
    done = run_generator("--out", str(target), "--trust-domain", TD)
    assert done.returncode == 0, done.stderr
    assert f"spiffe://{TD}/server" in done.stdout
    return target


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def openssl_verify(out: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "bundle.pem"),
            "-untrusted",
            str(out / "intermediate.pem"),
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "path"), [("server", "server"), ("client", "client"), ("web", "web")]
)
def test_svids_follow_the_profile(out: Path, name: str, path: str) -> None:
    chain = load_chain(out / name / "svid.pem")
    assert len(chain) == 2
    assert str(check_x509_svid(chain)) == f"spiffe://{TD}/{path}"
    key = serialization.load_pem_private_key((out / name / "svid_key.pem").read_bytes(), None)
    assert key.public_key() == chain[0].public_key()
    root = load_chain(out / "bundle.pem")[0]
    chain[0].verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(root)


def test_keys_are_private_and_dirs_closed(out: Path) -> None:
    keys = [*out.glob("*.key"), *out.glob("*/svid_key.pem")]
    assert len(keys) == 3 + 4
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_spiffe_bundle_matches_pem(out: Path) -> None:
    td = TrustDomain.parse(TD)
    bundle = Bundle.decode(td, (out / "bundle.spiffe.json").read_bytes())
    assert bundle.x509_authorities == tuple(load_chain(out / "bundle.pem"))
    assert len(bundle.jwt_authorities) == 1
    jwt_key = serialization.load_pem_private_key((out / "jwt.key").read_bytes(), None)
    assert bundle.jwt_authorities[0].public_key == jwt_key.public_key()
    assert spiffe_id_of(bundle.x509_authorities[0]).is_root()
    assert json.loads((out / "bundle.spiffe.json").read_text())["spiffe_sequence"] == 1


def test_intruder_chains_to_a_foreign_root(out: Path) -> None:
    chain = load_chain(out / "intruder" / "svid.pem")
    check_x509_svid(chain)  # a well-formed SVID...
    root = load_chain(out / "bundle.pem")[0]
    with pytest.raises(ValueError, match=r"[Ii]ssuer"):
        chain[1].verify_directly_issued_by(root)  # ...that our root did not sign


@needs_openssl
def test_openssl_verifies_the_svids(out: Path) -> None:
    for name in ("server", "client", "web"):
        done = openssl_verify(out, out / name / "svid.pem")
        assert done.returncode == 0, done.stdout + done.stderr
        assert ": OK" in done.stdout


@needs_openssl
def test_openssl_refuses_the_intruder(out: Path) -> None:
    done = openssl_verify(out, out / "intruder" / "svid.pem")
    assert done.returncode != 0
    assert "unable to get local issuer certificate" in done.stdout + done.stderr


def test_second_run_needs_force(out: Path) -> None:
    before = (out / "root.pem").read_bytes()
    done = run_generator("--out", str(out), "--trust-domain", TD)
    assert done.returncode == 2
    assert "--force" in done.stderr
    assert "Traceback" not in done.stderr
    assert (out / "root.pem").read_bytes() == before


def test_force_replaces_and_custom_workloads(tmp_path: Path) -> None:
    target = tmp_path / "o"
    first = run_generator("--out", str(target), "--workload", "api=svc/api,localhost")
    assert first.returncode == 0, first.stderr
    old_root = (target / "root.pem").read_bytes()
    again = run_generator("--out", str(target), "--force", "--workload", "api=svc/api,localhost")
    assert again.returncode == 0, again.stderr
    assert (target / "root.pem").read_bytes() != old_root
    chain = load_chain(target / "api" / "svid.pem")
    assert str(check_x509_svid(chain)) == "spiffe://dev.s2s.test/svc/api"
    assert chain[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["localhost"]


@pytest.mark.parametrize(
    "args",
    [
        ("--trust-domain", "Not A Domain"),
        ("--trust-domain", "spiffe://x/y"),
        ("--workload", "noequals"),
        ("--workload", "intruder=client"),
        ("--svid-ttl", "0"),
        ("--svid-ttl", "soon"),
    ],
)
def test_bad_arguments_are_refused_clearly(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = run_generator("--out", str(tmp_path / "o"), *args)
    assert done.returncode == 2
    assert "error" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o" / "root.pem").exists()
