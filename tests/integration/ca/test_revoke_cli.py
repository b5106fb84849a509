"""``s2s-ca revoke``, ``revocations list`` and ``crl`` end to end against ``s2s-ca serve``.

The CA runs as a subprocess (one per module); every command is a subprocess too. ``openssl``
parses the CRLs and ``openssl verify -crl_check`` judges leaves with them. Agents attest and call
the CA over real mTLS.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ca_harness import RunningCa, csr_pem, key_pem, load_chain, new_key, served_leaf
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.client import AdminClient
from s2s.core.revocation import RevocationRecord
from s2s.store.sqlite import SqliteStore
from s2s.verifier.memcert import load_cert_chain_from_memory

TD = "example.org"
CLI = [sys.executable, "-m", "s2s.cli.ca"]
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@dataclass
class Served:
    data_dir: Path
    process: subprocess.Popen[bytes]
    port: int


def s2s_ca(data_dir: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("revoke") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0"],
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    port = 0
    while not port:
        assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
        assert process.poll() is None, f"serve exited: {log.read_text()}"
        found = [json.loads(x) for x in log.read_text().splitlines() if '"ca.started"' in x]
        port = int(found[0]["address"].rsplit(":", 1)[1]) if found else 0
        time.sleep(0.02)
    yield Served(data_dir, process, port)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def https(served: Served, method: str, path: str, body: object = None, *,
          cert: tuple[str, bytes] | None = None) -> tuple[int, str, bytes]:  # fmt: skip
    """One HTTPS call (trusting the bundle; optional client SVID) -> (status, type, body)."""
    bundle = AdminClient(served.data_dir / "admin.sock").get("/v1/bundle", format="pem")
    ctx = ssl.create_default_context(cadata=bundle)
    ctx.check_hostname = False
    if cert is not None:
        load_cert_chain_from_memory(ctx, cert[0].encode(), cert[1])
    conn = http.client.HTTPSConnection("127.0.0.1", served.port, context=ctx, timeout=30)
    try:
        payload = json.dumps(body) if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def https_json(served: Served, method: str, path: str, body: object = None,
               **kw: Any) -> tuple[int, Any]:  # fmt: skip
    status, _, data = https(served, method, path, body, **kw)
    return status, json.loads(data)


def mint(served: Served, tmp: Path, path: str) -> tuple[Path, x509.Certificate]:
    """``s2s-ca x509 mint`` into ``tmp/<name>``: leaf.pem, inter.pem, bundle.pem."""
    out = tmp / path.strip("/").replace("/", "_")
    s2s_ca(
        served.data_dir, "x509", "mint", "--spiffe-id", f"spiffe://{TD}{path}", "--write", str(out)
    )
    chain = load_chain((out / "svid.pem").read_bytes())
    (out / "leaf.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
    (out / "inter.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))
    return out, chain[0]


def verify(served: Served, tmp: Path, out: Path, *, all_levels: bool = False) -> str:
    crls = tmp / "crls.pem"
    crls.write_text(s2s_ca(served.data_dir, "crl").stdout)
    flag = "-crl_check_all" if all_levels else "-crl_check"
    done = openssl(
        "verify", flag, "-CAfile", str(out / "bundle.pem"), "-untrusted", str(out / "inter.pem"),
        "-CRLfile", str(crls), str(out / "leaf.pem"),
    )  # fmt: skip
    return done.stdout + done.stderr


def records(served: Served) -> list[dict[str, Any]]:
    listed = json.loads(s2s_ca(served.data_dir, "revocations", "list", "--json").stdout)
    return list(listed["records"])


def attest(served: Served) -> tuple[str, Any, str]:
    token = json.loads(s2s_ca(served.data_dir, "token", "generate", "--json").stdout)
    key = new_key()
    status, body = https_json(served, "POST", "/v1/agent/attest",
                              {"join_token": token["token"], "csr": csr_pem(key)})  # fmt: skip
    assert status == 200, body
    return body["spiffe_id"], key, body["svid_chain"]


# ---- serial, CRLs and openssl -----------------------------------------------------------------


def test_revoke_serial_then_openssl_rejects_it_and_accepts_others(
    served: Served, tmp_path: Path
) -> None:
    revoked_dir, revoked = mint(served, tmp_path, "/web")
    kept_dir, _ = mint(served, tmp_path, "/web-2")
    assert ": OK" in verify(served, tmp_path, revoked_dir)  # before: every leaf verifies
    done = s2s_ca(served.data_dir, "revoke", "--serial", format(revoked.serial_number, "x"),
                  "--reason", "keyCompromise")  # fmt: skip
    assert done.stdout.startswith(f"serial {revoked.serial_number:x} revoked")
    assert "certificate revoked" in verify(served, tmp_path, revoked_dir)
    assert ": OK" in verify(served, tmp_path, kept_dir)
    assert ": OK" in verify(served, tmp_path, kept_dir, all_levels=True)  # root CRL is there
    assert "certificate revoked" in verify(served, tmp_path, revoked_dir, all_levels=True)


def test_every_crl_parses_with_openssl_and_the_der_endpoint_serves_one(
    served: Served, tmp_path: Path
) -> None:
    pem = s2s_ca(served.data_dir, "crl").stdout
    blocks = re.findall(r"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\n", pem, re.S)
    assert len(blocks) >= 2  # the intermediate and the root
    for i, block in enumerate(blocks):
        (tmp_path / f"{i}.pem").write_text(block)
        text = openssl("crl", "-in", str(tmp_path / f"{i}.pem"), "-noout", "-text").stdout
        assert "Version 2" in text
        assert "X509v3 CRL Number" in text
        assert "X509v3 Authority Key Identifier" in text
        assert "Next Update" in text
    meta = json.loads(s2s_ca(served.data_dir, "crl", "--json").stdout)
    inter = next(c for c in meta if c["kind"] == "x509-intermediate")
    status, media, der = https(served, "GET", f"/v1/crl?issuer={inter['key_id'].upper()}")
    assert (status, media) == (200, "application/pkix-crl")
    (tmp_path / "one.der").write_bytes(der)
    assert (
        openssl("crl", "-inform", "DER", "-in", str(tmp_path / "one.der"), "-noout").returncode == 0
    )
    cli_der = subprocess.run([*CLI, "--data-dir", str(served.data_dir), "crl", "--format", "der",
                              "--issuer", inter["key_id"]], capture_output=True, timeout=60,
                             check=True).stdout  # fmt: skip
    assert x509.load_der_x509_crl(cli_der).issuer == x509.load_der_x509_crl(der).issuer
    status, _, body = https(served, "GET", "/v1/crl?issuer=00ff")  # twin: unknown issuer
    assert status == 404
    assert json.loads(body)["error"] == "not_found"
    assert s2s_ca(served.data_dir, "crl", "--format", "der", check=2).returncode == 2


def test_revoking_twice_is_idempotent(served: Served, tmp_path: Path) -> None:
    _, cert = mint(served, tmp_path, "/twice")
    serial = format(cert.serial_number, "x")
    s2s_ca(served.data_dir, "revoke", "--serial", serial)
    again = s2s_ca(served.data_dir, "revoke", "--serial", serial.upper(), "--json")
    result = json.loads(again.stdout)
    assert result["already_revoked"] is True
    assert result["changed"] == 0
    assert "already revoked" in s2s_ca(served.data_dir, "revoke", "--serial", serial).stdout
    assert [r["value"] for r in records(served)].count(serial) == 1


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--serial", "deadbeef"], 4, "was not issued by this CA"),
        (["--spiffe-id", f"spiffe://{TD}/nobody"], 4, "knows nothing of"),
        (["--agent", f"spiffe://{TD}/s2s/agent/join_token/ghost"], 4, "no agent"),
        (["--serial", "not-hex"], 2, "is not hex"),
        (["--spiffe-id", "spiffe://other.org/x"], 2, "not in trust domain"),
        (["--agent", f"spiffe://{TD}/web"], 2, "not an agent ID"),
        ([], 2, "exactly one of"),
        (["--serial", "ab", "--jti", "x"], 2, "exactly one of"),
    ],
)
def test_bad_targets_get_a_clear_message_and_exit_code(
    served: Served, args: list[str], code: int, fragment: str
) -> None:
    done = s2s_ca(served.data_dir, "revoke", *args, check=code)
    assert fragment in done.stderr


def test_an_unreachable_ca_exits_3(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "--socket", str(tmp_path / "none.sock"), "revoke", "--jti", "x"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 3
    assert "is `s2s-ca serve` running" in done.stderr


# ---- the CA refuses what is revoked ------------------------------------------------------------


def test_a_revoked_agent_svid_is_not_renewed(served: Served) -> None:
    _, key, chain = attest(served)
    serial = format(load_chain(chain)[0].serial_number, "x")
    s2s_ca(served.data_dir, "revoke", "--serial", serial)
    cert = (chain, key_pem(key))
    status, body = https_json(served, "POST", "/v1/agent/renew", {"csr": csr_pem(new_key())},
                              cert=cert)  # fmt: skip
    assert (status, body["error"]) == (403, "revoked"), body


def test_a_revoked_agent_is_banned_refused_and_its_svids_fail_openssl(
    served: Served, tmp_path: Path
) -> None:
    agent_id, key, chain = attest(served)
    entry = json.loads(s2s_ca(served.data_dir, "entry", "create", "--spiffe-id",
                              f"spiffe://{TD}/pay", "--parent-id", agent_id, "--selector",
                              "unix:uid:1000", "--json").stdout)  # fmt: skip
    cert = (chain, key_pem(key))
    request = {"requests": [{"entry_id": entry["id"], "csr": csr_pem(new_key())}]}
    status, body = https_json(served, "POST", "/v1/agent/x509", request, cert=cert)
    assert status == 200, body
    workload = load_chain(body["results"][0]["svid_chain"])
    done = s2s_ca(served.data_dir, "revoke", "--agent", agent_id, "--reason", "node lost")
    assert "agent banned" in done.stdout
    shown = json.loads(s2s_ca(served.data_dir, "agent", "show", agent_id, "--json").stdout)
    assert shown["banned"] is True
    status, body = https_json(served, "POST", "/v1/agent/x509", request, cert=cert)
    assert (status, body["error"]) == (403, "not_authorized"), body
    listed = {r["value"] for r in records(served)}
    assert {agent_id, format(workload[0].serial_number, "x")} <= listed
    out = tmp_path / "w"
    out.mkdir()
    (out / "leaf.pem").write_bytes(workload[0].public_bytes(Encoding.PEM))
    (out / "inter.pem").write_bytes(workload[1].public_bytes(Encoding.PEM))
    (out / "bundle.pem").write_text(
        AdminClient(served.data_dir / "admin.sock").get("/v1/bundle", format="pem")
    )
    assert "certificate revoked" in verify(served, tmp_path, out)


def test_a_revoked_id_is_reissued_fresh(served: Served) -> None:
    agent_id, key, chain = attest(served)
    entry = json.loads(s2s_ca(served.data_dir, "entry", "create", "--spiffe-id",
                              f"spiffe://{TD}/fresh", "--parent-id", agent_id, "--selector",
                              "unix:uid:1000", "--json").stdout)  # fmt: skip
    cert = (chain, key_pem(key))
    request = {"requests": [{"entry_id": entry["id"], "csr": csr_pem(new_key())}]}
    old = https_json(served, "POST", "/v1/agent/x509", request, cert=cert)[1]["results"][0]
    s2s_ca(served.data_dir, "revoke", "--spiffe-id", f"spiffe://{TD}/fresh")
    new = https_json(served, "POST", "/v1/agent/x509", request, cert=cert)[1]["results"][0]
    listed = {r["value"] for r in records(served)}
    assert old["serial"] in listed
    assert new["serial"] not in listed  # issued after the revocation


# ---- the public feed ----------------------------------------------------------------------------


def test_the_feed_long_poll_returns_the_new_record(served: Served) -> None:
    status, feed = https_json(served, "GET", "/v1/revocations")
    assert status == 200
    revision = feed["revision"]
    answer: dict[str, Any] = {}

    def poll() -> None:
        answer["feed"] = https_json(served, "GET", f"/v1/revocations?since={revision}&wait=20")

    waiter = threading.Thread(target=poll)
    started = time.monotonic()
    waiter.start()
    s2s_ca(served.data_dir, "revoke", "--jti", "feed-jti-1")
    waiter.join(timeout=25)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 15
    status, fed = answer["feed"]
    assert status == 200
    assert fed["revision"] > revision
    assert "feed-jti-1" in {r["value"] for r in fed["records"]}
    status, body = https_json(served, "GET", "/v1/revocations?since=-2")  # twin: bad query
    assert (status, body["error"]) == (400, "invalid_request")


# ---- a revoked intermediate ------------------------------------------------------------------


async def test_a_revoked_intermediate_is_replaced_at_once_and_cuts_off_its_leaves(
    ca: RunningCa, tmp_path: Path
) -> None:
    body = {"spiffe_id": f"spiffe://{TD}/old"}
    old = await ca.admin_call("POST", "/v1/x509/mint", body)
    old_chain = load_chain(old["chain_pem"])
    inter = old_chain[1]
    done = await ca.admin_call("POST", "/v1/revocations", {"serial": f"{inter.serial_number:x}"})
    assert done["already_revoked"] is False
    fresh = load_chain((await ca.admin_call("POST", "/v1/x509/mint", body))["chain_pem"])
    assert fresh[1] != inter  # the CA signs with a new intermediate as soon as revoke returned
    assert (await served_leaf(ca)).issuer == fresh[1].subject  # its own TLS certificate too
    crls = tmp_path / "crls.pem"
    status, crl_pem = await ca.public("GET", "/v1/crl?format=pem")
    assert status == 200
    crls.write_text(crl_pem)
    (tmp_path / "bundle.pem").write_bytes(ca.bundle_pem)
    for name, chain in (("old", old_chain), ("fresh", fresh)):
        (tmp_path / f"{name}-leaf.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
        (tmp_path / f"{name}-inter.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))

    def check(name: str) -> str:
        done = openssl(
            "verify", "-crl_check_all", "-CAfile", str(tmp_path / "bundle.pem"), "-untrusted",
            str(tmp_path / f"{name}-inter.pem"), "-CRLfile", str(crls),
            str(tmp_path / f"{name}-leaf.pem"),
        )  # fmt: skip
        return done.stdout + done.stderr

    assert "certificate revoked" in check("old")
    assert ": OK" in check("fresh")


async def test_a_revocation_written_by_another_replica_reaches_the_crl_and_the_feed(
    ca: RunningCa,
) -> None:
    """Another handle on the store (as another CA replica would write) moves the CA's live set,
    its CRL and its feed without any call to this CA."""
    minted = await ca.admin_call("POST", "/v1/x509/mint", {"spiffe_id": f"spiffe://{TD}/peer"})
    leaf = load_chain(minted["chain_pem"])[0]
    now = dt.datetime.now(dt.UTC)
    record = RevocationRecord.for_serial(leaf.serial_number, revoked_at=now,
                                         expires_at=leaf.not_valid_after_utc)  # fmt: skip
    async with await SqliteStore.open(ca.data_dir / "s2s.db", create=False) as other:
        await other.add_revocation(record)
    deadline = time.monotonic() + 10
    while True:
        _, doc = await ca.public("GET", "/v1/crl?format=json")
        crls = [x509.load_der_x509_crl(base64.b64decode(c["der"])) for c in doc["crls"]]
        listed = {r.serial_number for crl in crls for r in crl}
        if leaf.serial_number in listed:
            break
        assert time.monotonic() < deadline, "the CRL never listed the other replica's revocation"
        await asyncio.sleep(0.05)
    status, feed = await ca.public("GET", "/v1/revocations")
    assert status == 200
    assert record.value in {r["value"] for r in feed["records"]}


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("format=xml", 400, "invalid_request"),
        ("issuer=zz", 400, "invalid_request"),
        ("format=der", 400, "invalid_request"),  # DER holds one CRL
        ("issuer=" + "ab" * 20, 404, "not_found"),
    ],
)
async def test_bad_crl_queries_get_clear_errors(
    ca: RunningCa, query: str, status: int, error: str
) -> None:
    got, body = await ca.public("GET", f"/v1/crl?{query}")
    assert (got, body["error"]) == (status, error), body
    assert body["message"]


async def test_the_crl_endpoint_is_public_and_each_crl_is_signed_by_its_issuer(
    ca: RunningCa,
) -> None:
    status, doc = await ca.public("GET", "/v1/crl?format=json")  # no client certificate
    assert status == 200
    roots = x509.load_pem_x509_certificates(ca.bundle_pem)
    minted = await ca.admin_call("POST", "/v1/x509/mint", {"spiffe_id": f"spiffe://{TD}/sig"})
    issuers = [*roots, load_chain(minted["chain_pem"])[1]]
    for entry in doc["crls"]:
        crl = x509.load_der_x509_crl(base64.b64decode(entry["der"]))
        (issuer,) = [c for c in issuers if c.subject == crl.issuer]
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        other = next(c for c in issuers if c is not issuer)
        assert not crl.is_signature_valid(other.public_key())  # type: ignore[arg-type]
