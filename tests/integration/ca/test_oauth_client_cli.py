"""``s2s-ca client ...`` against ``s2s-ca serve --jwt-issuer`` (both subprocesses), and a real OAuth
client library (Authlib's OAuth2Session on requests) obtaining tokens from it with a client secret
and with a JWT-SVID assertion; rejecting twins for a wrong secret and a replayed assertion."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from s2s.ca.client import AdminClient

CLI = [sys.executable, "-m", "s2s.cli.ca"]
TD = "example.org"
SID = f"spiffe://{TD}/ns/shop/sa/checkout"
API = "https://billing.example.org"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Served:
    data_dir: Path
    issuer: str
    bundle: Path


def s2s_ca(data_dir: Path, *args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("oauth") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    issuer = f"https://localhost:{port}"
    process = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "serve", "--listen", f"127.0.0.1:{port}",
         "--jwt-issuer", issuer],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        admin = AdminClient(data_dir / "admin.sock")
        deadline = time.monotonic() + 30
        while True:
            try:
                if admin.call("GET", "/readyz")["ready"]:
                    break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("s2s-ca serve did not become ready") from None
            time.sleep(0.05)
        bundle = data_dir.parent / "bundle.pem"
        bundle.write_text(admin.call("GET", "/v1/bundle", query={"format": "pem"}))
        yield Served(data_dir, issuer, bundle)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _session(_: Served, **kw: str) -> OAuth2Session:
    return OAuth2Session(**kw)


def test_client_cli_and_authlib_with_a_secret(served: Served) -> None:
    created = s2s_ca(served.data_dir, "client", "create", "--client-id", "reports", "--secret",
                     "--scope", "billing.read", "--audience", API)  # fmt: skip
    client_id, secret = created.stdout.split()
    assert client_id == "reports"
    assert "not shown again" in created.stderr
    shown = json.loads(s2s_ca(served.data_dir, "client", "show", "reports", "--json").stdout)
    assert "client_secret" not in shown
    assert shown["secrets"] == 1

    session = _session(served, client_id="reports", client_secret=secret)
    token = session.fetch_token(
        served.issuer + "/oauth/token", grant_type="client_credentials", verify=str(served.bundle)
    )
    assert token["scope"] == "billing.read"
    jwks = requests.get(served.issuer + "/oauth/jwks.json", verify=str(served.bundle), timeout=10)
    key = jwt.PyJWKSet.from_dict(jwks.json())[
        jwt.get_unverified_header(token["access_token"])["kid"]
    ]
    claims = jwt.decode(token["access_token"], key, algorithms=["ES256"], audience=API,
                        issuer=served.issuer)  # fmt: skip
    assert claims["client_id"] == "reports"

    # The last character changed (a secret that already ends in "A" gets "B").
    other = "B" if secret.endswith("A") else "A"
    wrong = _session(served, client_id="reports", client_secret=secret[:-1] + other)
    with pytest.raises(OAuthError, match="invalid_client"):
        wrong.fetch_token(
            served.issuer + "/oauth/token",
            grant_type="client_credentials",
            verify=str(served.bundle),
        )

    rotated = s2s_ca(served.data_dir, "client", "rotate-secret", "reports", "--json")
    assert json.loads(rotated.stdout)["secrets"] == 2
    s2s_ca(served.data_dir, "client", "rotate-secret", "reports", "--finish")
    with pytest.raises(OAuthError, match="invalid_client"):
        session.fetch_token(
            served.issuer + "/oauth/token",
            grant_type="client_credentials",
            verify=str(served.bundle),
        )


def test_client_cli_and_authlib_with_a_jwt_svid(served: Served) -> None:
    s2s_ca(served.data_dir, "client", "create", "--spiffe-id", SID, "--scope", "billing.read",
           "--scope", "billing.write", "--audience", API)  # fmt: skip
    listed = json.loads(s2s_ca(served.data_dir, "client", "list", "--json").stdout)
    assert SID in [c["client_id"] for c in listed]
    minted = s2s_ca(served.data_dir, "jwt", "mint", "--spiffe-id", SID, "--audience",
                    served.issuer + "/oauth/token", "--json")  # fmt: skip
    assertion = json.loads(minted.stdout)["token"]
    session = _session(served, client_id=SID, token_endpoint_auth_method="none")
    token = session.fetch_token(
        served.issuer + "/oauth/token", grant_type="client_credentials", scope="billing.write",
        client_assertion_type=ASSERTION_TYPE, client_assertion=assertion, verify=str(served.bundle),
    )  # fmt: skip
    assert token["scope"] == "billing.write"
    with pytest.raises(OAuthError, match="invalid_client"):  # the same assertion again
        session.fetch_token(
            served.issuer + "/oauth/token", grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE, client_assertion=assertion,
            verify=str(served.bundle),
        )  # fmt: skip

    s2s_ca(served.data_dir, "client", "update", "--scope", "billing.read", SID)
    done = s2s_ca(served.data_dir, "client", "create", "--spiffe-id", SID, "--audience", API,
                  check=5)  # fmt: skip
    assert "already exists" in done.stderr
    s2s_ca(served.data_dir, "client", "create", "--client-id", "x", "--audience", API, check=2)
    s2s_ca(served.data_dir, "client", "delete", SID)
    s2s_ca(served.data_dir, "client", "show", SID, check=4)
