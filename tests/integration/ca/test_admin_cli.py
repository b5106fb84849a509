"""``s2s-ca`` driven as a user would: subprocesses for init, serve and every admin command.

One CA process serves the module's read/write command tests; init, restart and refusal tests
start their own. Pure parsing cases use click's CliRunner.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt as pyjwt
import pytest
from ca_harness import csr_pem, key_pem, load_chain, new_key, start_ca, stop_ca
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding

from s2s.ca.bootstrap import init_data_dir, init_trust_domain
from s2s.ca.client import AdminClient
from s2s.cli.ca import cli
from s2s.cli.ca_process import load_config_file
from s2s.core.errors import Unavailable
from s2s.core.x509svid import check_x509_svid
from s2s.testing import TestAuthority
from s2s.verifier.memcert import load_cert_chain_from_memory

TD = "example.org"
CLI = [sys.executable, "-m", "s2s.cli.ca"]
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def s2s_ca(data_dir: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


def as_json(done: subprocess.CompletedProcess[str]) -> object:
    return json.loads(done.stdout)


@dataclass
class Served:
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


def serve(data_dir: Path, *extra: str) -> Served:
    """Start ``s2s-ca serve`` and wait (with a deadline) for its ``ca.started`` log line."""
    log = data_dir.parent / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", *extra],
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"ca.started"' in line:
                port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                return Served(data_dir, process, log, port)
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"serve did not start in 20 s: {log.read_text()}")


def https(served: Served, method: str, path: str, body: object = None, *,
          cert: tuple[str, bytes] | None = None) -> tuple[int, dict]:  # fmt: skip
    """One HTTPS call to the served CA (trusting its bundle; optional client SVID)."""
    bundle = AdminClient(served.data_dir / "admin.sock").get("/v1/bundle", format="pem")
    ctx = ssl.create_default_context(cadata=bundle)
    ctx.check_hostname = False
    if cert is not None:
        load_cert_chain_from_memory(ctx, cert[0].encode(), cert[1])
    conn = http.client.HTTPSConnection("127.0.0.1", served.port, context=ctx, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)  # fmt: skip
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("cli") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    running = serve(data_dir)
    yield running
    assert running.stop() == 0


def attest(served: Served) -> tuple[str, object, str]:
    token = as_json(s2s_ca(served.data_dir, "token", "generate", "--json"))
    assert isinstance(token, dict)
    assert set(token) >= {"token", "agent_id", "expires_at"}
    key = new_key()
    status, body = https(
        served, "POST", "/v1/agent/attest", {"join_token": token["token"], "csr": csr_pem(key)}
    )
    assert status == 200, body
    return body["spiffe_id"], key, body["svid_chain"]


# ---- init and serve refusals --------------------------------------------------------------


def test_init_makes_owner_only_files_with_no_plaintext_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    done = s2s_ca(data_dir, "init", "--trust-domain", TD, "--json")
    assert as_json(done)["trust_domain"] == TD  # type: ignore[index]
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = list(data_dir.iterdir())
    assert {f.name for f in files} >= {"kek.bin", "s2s.db"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        content = f.read_bytes()
        assert b"PRIVATE KEY" not in content, f
        assert b"-----BEGIN" not in content, f


def test_init_refuses_an_initialized_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    done = s2s_ca(data_dir, "init", "--trust-domain", TD, check=5)
    assert "already holds a trust domain" in done.stderr


def test_init_refuses_a_bad_trust_domain(tmp_path: Path) -> None:
    done = s2s_ca(tmp_path / "ca", "init", "--trust-domain", "Example.ORG", check=2)
    assert "trust domain" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def _refuses_to_serve(data_dir: Path, fragment: str, *extra: str) -> None:
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert fragment in done.stderr, done.stderr


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "ca", TD)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _refuses_to_serve(tmp_path / "ca", "cannot listen on", "--listen", f"127.0.0.1:{port}")
    assert not (tmp_path / "ca" / "admin.sock").exists()


def test_serve_refuses_an_uninitialized_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refuses_to_serve(tmp_path / "empty", "s2s-ca init")


def test_serve_refuses_a_corrupt_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    init_data_dir(data_dir, TD)
    (data_dir / "s2s.db").write_bytes(b"this is not a database" * 100)
    _refuses_to_serve(data_dir, "is not an s2s store")


def test_serve_refuses_another_applications_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    init_data_dir(data_dir, TD)
    (data_dir / "s2s.db").unlink()
    with contextlib.closing(sqlite3.connect(data_dir / "s2s.db")) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.commit()
    _refuses_to_serve(data_dir, "another application")


def test_serve_refuses_a_foreign_key_file(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    init_data_dir(mine, TD)
    init_data_dir(other, TD)
    shutil.copy2(other / "kek.bin", mine / "kek.bin")
    _refuses_to_serve(mine, "key-encryption key")


def test_serve_refuses_a_world_readable_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    init_data_dir(data_dir, TD)
    os.chmod(data_dir / "kek.bin", 0o644)
    _refuses_to_serve(data_dir, "chmod 600")


def test_operator_can_raise_the_ttl_cap_in_the_config_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    init_data_dir(data_dir, TD)
    config = tmp_path / "ca.toml"
    config.write_text(f'data_dir = "{data_dir}"\nlog_format = "json"\n[ttl]\nmax_svid = "10m"\n')
    running = serve(data_dir, "--config", str(config))
    try:
        parent = f"spiffe://{TD}/s2s/agent/join_token/a"
        base = ["entry", "create", "--parent-id", parent, "--selector", "unix:uid:1"]
        s2s_ca(data_dir, *base, "--spiffe-id", f"spiffe://{TD}/a", "--x509-ttl", "10m")
        above = s2s_ca(data_dir, *base, "--spiffe-id", f"spiffe://{TD}/b", "--x509-ttl", "11m",
                       check=2)  # fmt: skip
        assert "cap" in above.stderr
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[ttl]\nx509_svid = "10m"\n', "above max_svid_ttl"),
        ('[ttl]\nforever = "10m"\n', "unknown setting(s) ttl.forever"),
        ('color = "blue"\n', "unknown setting(s) color"),
        ("listen = 8443\n", "must be non-empty text"),
        ('name = "bad/name"\n', "replica name"),
        ('[ttl]\nmax_svid = "ten minutes"\n', "ttl.max_svid"),
        ("listen = [", "cannot read config file"),
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    data_dir = tmp_path / "ca"
    init_data_dir(data_dir, TD)
    (tmp_path / "ca.toml").write_text(text)
    _refuses_to_serve(data_dir, fragment, "--config", str(tmp_path / "ca.toml"))


# ---- admin commands against one running CA ------------------------------------------------


def test_admin_socket_is_owner_only(served: Served) -> None:
    sock = served.data_dir / "admin.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_second_ca_on_the_same_data_dir_is_refused(served: Served) -> None:
    _refuses_to_serve(served.data_dir, "already serving")
    assert s2s_ca(served.data_dir, "healthcheck").stdout.strip() == "ready"  # first one intact


def test_healthcheck(served: Served, tmp_path: Path) -> None:
    assert s2s_ca(served.data_dir, "healthcheck").stdout.strip() == "ready"
    done = s2s_ca(tmp_path, "healthcheck", check=3)
    assert "is `s2s-ca serve` running?" in done.stderr


def test_agents_and_entries(served: Served) -> None:
    agent_id, _key, _chain = attest(served)
    agents = as_json(s2s_ca(served.data_dir, "agent", "list", "--json"))
    assert agent_id in [a["spiffe_id"] for a in agents]  # type: ignore[union-attr, index]
    assert agent_id in s2s_ca(served.data_dir, "agent", "list").stdout
    shown = as_json(s2s_ca(served.data_dir, "agent", "show", agent_id, "--json"))
    assert shown["banned"] is False  # type: ignore[index]

    created = as_json(s2s_ca(
        served.data_dir, "entry", "create", "--spiffe-id", f"spiffe://{TD}/billing",
        "--parent-id", agent_id, "--selector", "unix:uid:1001", "--selector", "unix:gid:50",
        "--x509-ttl", "2m", "--json",
    ))  # fmt: skip
    assert isinstance(created, dict)
    assert created["selectors"] == ["unix:gid:50", "unix:uid:1001"]
    assert created["x509_svid_ttl"] == 120
    entry_id = created["id"]
    listed = as_json(s2s_ca(served.data_dir, "entry", "list", "--parent-id", agent_id, "--json"))
    assert [e["id"] for e in listed] == [entry_id]  # type: ignore[union-attr, index]
    table = s2s_ca(served.data_dir, "entry", "list").stdout
    assert "SPIFFE ID" in table
    assert entry_id in table
    updated = as_json(s2s_ca(
        served.data_dir, "entry", "update", entry_id, "--hint", "primary", "--json"
    ))  # fmt: skip
    assert updated["hint"] == "primary"  # type: ignore[index]
    assert updated["revision"] > created["revision"]  # type: ignore[index]
    assert "primary" in s2s_ca(served.data_dir, "entry", "show", entry_id).stdout
    s2s_ca(served.data_dir, "entry", "delete", entry_id)
    s2s_ca(served.data_dir, "entry", "show", entry_id, check=4)


def test_admin_rejections_have_meaningful_exit_codes(served: Served) -> None:
    bad_id = s2s_ca(served.data_dir, "entry", "create", "--spiffe-id", "spiffe://other.org/x",
                    "--parent-id", f"spiffe://{TD}/s2s/agent/join_token/a",
                    "--selector", "unix:uid:1", check=2)  # fmt: skip
    assert "trust domain" in bad_id.stderr
    s2s_ca(served.data_dir, "agent", "show", f"spiffe://{TD}/s2s/agent/join_token/nope", check=4)
    s2s_ca(served.data_dir, "agent", "evict", f"spiffe://{TD}/s2s/agent/join_token/nope", check=4)
    s2s_ca(served.data_dir, "jwt", "mint", "--spiffe-id", f"spiffe://{TD}/w", "--audience", "a",
           "--ttl", "1h", check=2)  # fmt: skip


@pytest.mark.parametrize(
    ("selector", "rule"),
    [
        ("unix:uid:abc", "decimal number"),
        ("unix:uid:-5", "decimal number"),
        ("unix:path:relative/bin", "absolute"),
        ("unix:sha256:xyz", "64 lowercase hexadecimal"),
        ("unix:foo:bar", "unix:uid"),
        ("k8s:ns:default", "no attestor produces type 'k8s'"),
    ],
)
def test_entry_create_refuses_selectors_that_never_match(
    served: Served, selector: str, rule: str
) -> None:
    parent = f"spiffe://{TD}/s2s/agent/join_token/sel"
    base = ["entry", "create", "--spiffe-id", f"spiffe://{TD}/sel", "--parent-id", parent]
    refused = s2s_ca(served.data_dir, *base, "--selector", "unix:uid:1", "--selector", selector,
                     check=2)  # fmt: skip
    assert selector in refused.stderr, refused.stderr
    assert rule in refused.stderr, refused.stderr
    listed = as_json(s2s_ca(served.data_dir, "entry", "list", "--parent-id", parent, "--json"))
    assert listed == []


def test_ban_and_evict_cut_the_agent_off(served: Served) -> None:
    for action in ("ban", "evict"):
        agent_id, key, chain = attest(served)
        cert = (chain, key_pem(key))
        assert https(served, "GET", "/v1/agent/entries", cert=cert)[0] == 200
        s2s_ca(served.data_dir, "agent", action, agent_id)
        status, body = https(served, "GET", "/v1/agent/entries", cert=cert)
        assert (status, body["error"]) == (403, "not_authorized")
    listed = as_json(s2s_ca(served.data_dir, "agent", "list", "--json"))
    banned = [a for a in listed if a["banned"]]  # type: ignore[union-attr, index]
    assert len(banned) == 1


@needs_openssl
def test_x509_mint_writes_files_openssl_verifies(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "svid"
    done = s2s_ca(served.data_dir, "x509", "mint", "--spiffe-id", f"spiffe://{TD}/tool",
                  "--ttl", "60s", "--write", str(out), "--json")  # fmt: skip
    assert len(as_json(done)["files"]) == 3  # type: ignore[index]
    assert stat.S_IMODE((out / "svid_key.pem").stat().st_mode) == 0o600
    chain = load_chain((out / "svid.pem").read_bytes())
    assert len(chain) == 2
    assert str(check_x509_svid(chain)) == f"spiffe://{TD}/tool"
    pem = s2s_ca(served.data_dir, "bundle", "show", "--format", "pem").stdout
    assert pem.strip() == (out / "bundle.pem").read_text().strip()
    (tmp_path / "leaf.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
    (tmp_path / "inter.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))
    (tmp_path / "foreign.pem").write_bytes(TestAuthority(TD).bundle_pem())
    for roots, ok in ((out / "bundle.pem", True), (tmp_path / "foreign.pem", False)):
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(roots), "-untrusted", str(tmp_path / "inter.pem"),
             str(tmp_path / "leaf.pem")], capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (verified.returncode == 0) is ok, verified.stdout + verified.stderr


def test_jwt_mint_verifies_with_the_bundle_jwks(served: Served) -> None:
    minted = as_json(s2s_ca(served.data_dir, "jwt", "mint", "--spiffe-id", f"spiffe://{TD}/w",
                            "--audience", "db", "--json"))  # fmt: skip
    token = minted["token"]  # type: ignore[index]
    assert s2s_ca(served.data_dir, "jwt", "mint", "--spiffe-id", f"spiffe://{TD}/w",
                  "--audience", "db").stdout.count(".") == 2  # fmt: skip
    bundle = as_json(s2s_ca(served.data_dir, "bundle", "show", "--format", "spiffe"))
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in bundle["keys"] if k.get("kid") == kid)  # type: ignore[index]
    claims = pyjwt.decode(token, pyjwt.PyJWK.from_dict(jwk).key, algorithms=["ES256"],
                          audience="db")  # fmt: skip
    assert claims["sub"] == f"spiffe://{TD}/w"
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, pyjwt.PyJWK.from_dict(jwk).key, algorithms=["ES256"], audience="x")


def test_authority_list(served: Served) -> None:
    found = as_json(s2s_ca(served.data_dir, "authority", "list", "--json"))
    kinds = sorted(a["kind"] for a in found)  # type: ignore[union-attr, index]
    assert kinds == ["jwt", "x509-intermediate", "x509-root"]
    assert "x509-root" in s2s_ca(served.data_dir, "authority", "list").stdout


def test_explicit_socket_option(served: Served, tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "--socket", str(served.data_dir / "admin.sock"), "agent", "list", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_env_data_dir_and_console_script(served: Served) -> None:
    script = Path(sys.executable).with_name("s2s-ca")
    if not script.exists():
        pytest.skip("console script not installed")
    done = subprocess.run(
        [str(script), "healthcheck"], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "S2S_CA_DATA_DIR": str(served.data_dir)},
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "ready")


# ---- restart ------------------------------------------------------------------------------


def test_restart_keeps_entries_agents_and_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    first = serve(data_dir)
    try:
        agent_id, key, chain = attest(first)
        entry = as_json(s2s_ca(
            data_dir, "entry", "create", "--spiffe-id", f"spiffe://{TD}/db",
            "--parent-id", agent_id, "--selector", "unix:uid:5", "--json",
        ))  # fmt: skip
        bundle_before = as_json(s2s_ca(data_dir, "bundle", "show", "--format", "spiffe"))
        authorities_before = as_json(s2s_ca(data_dir, "authority", "list", "--json"))
    finally:
        assert first.stop() == 0
    assert not (data_dir / "admin.sock").exists()
    with pytest.raises(Unavailable):
        AdminClient(data_dir / "admin.sock").get("/readyz")

    second = serve(data_dir)
    try:
        assert as_json(s2s_ca(data_dir, "bundle", "show", "--format", "spiffe")) == bundle_before
        assert as_json(s2s_ca(data_dir, "authority", "list", "--json")) == authorities_before
        agents = as_json(s2s_ca(data_dir, "agent", "list", "--json"))
        assert [a["spiffe_id"] for a in agents] == [agent_id]  # type: ignore[union-attr, index]
        status, listed = https(second, "GET", "/v1/agent/entries", cert=(chain, key_pem(key)))
        assert status == 200
        assert [e["id"] for e in listed["entries"]] == [entry["id"]]  # type: ignore[index]
    finally:
        assert second.stop() == 0


# ---- pure parsing (CliRunner) -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["token", "generate"],  # no --data-dir, no --socket
        ["--data-dir", "/nonexistent", "token", "generate", "--ttl", "5x"],
        ["--data-dir", "/nonexistent", "entry", "create", "--spiffe-id", "spiffe://a/b",
         "--parent-id", "spiffe://a/c"],  # no selector
        ["--data-dir", "/nonexistent", "entry", "update", "abc"],  # nothing to update
        ["--data-dir", "/nonexistent", "bundle", "show", "--format", "der"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, env={"S2S_CA_DATA_DIR": ""})
    assert result.exit_code == 2, result.output


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for name in ("init", "serve", "entry", "token", "agent", "bundle", "authority", "x509",
                 "jwt", "healthcheck"):  # fmt: skip
        assert name in out


# ---- admin socket: only the CA's user -----------------------------------------------------

_RAW_GET = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b"GET /v1/agents HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
print(s.recv(65536).split(b"\\r\\n", 1)[0].decode())
"""


def _as_nobody(sock: Path) -> str:
    """Run the raw GET as uid/gid 65534 with the system interpreter (stdlib only)."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", _RAW_GET, str(sock)], capture_output=True, text=True,
        timeout=30, check=False, user=65534, group=65534, extra_groups=[],
    )  # fmt: skip
    assert not done.stderr, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to act as another user) and /usr/bin/python3",
)
async def test_other_users_are_kept_out_of_the_admin_api() -> None:
    base = Path(tempfile.mkdtemp(prefix="s2s-admin-"))  # 0700; opened below for the probe
    try:
        data_dir = base / "ca"
        await init_trust_domain(data_dir, TD)
        server, task, stop = await start_ca(data_dir)
        sock = server.options.admin_socket
        try:
            os.chmod(base, 0o755)
            assert await asyncio.to_thread(_as_nobody, sock) == "EACCES"  # data dir 0700
            os.chmod(data_dir, 0o711)
            assert await asyncio.to_thread(_as_nobody, sock) == "EACCES"  # socket 0600
            # Second fence: with the file opened up, the CA still refuses another uid.
            os.chmod(sock, 0o666)
            assert await asyncio.to_thread(_as_nobody, sock) == "HTTP/1.1 403 Forbidden"
        finally:
            await stop_ca(server, task, stop)
    finally:
        shutil.rmtree(base)


def test_the_example_deploy_config_loads() -> None:
    example = Path(__file__).parents[3] / "deploy" / "ca.toml"
    flags, ttls = load_config_file(example)
    assert flags["data_dir"] == "/var/lib/s2s-ca"
    assert set(flags) <= {"data_dir", "socket", "listen", "name", "log_level", "log_format",
                          "limits"}  # fmt: skip
    assert all(isinstance(v, dt.timedelta) for v in ttls.values())


def test_logs_are_json_lines_with_audit_and_no_secrets(served: Served, tmp_path: Path) -> None:
    token = as_json(s2s_ca(served.data_dir, "token", "generate", "--json"))["token"]  # type: ignore[index]
    key = new_key()
    status, attested = https(served, "POST", "/v1/agent/attest",
                             {"join_token": token, "csr": csr_pem(key)})  # fmt: skip
    assert status == 200
    minted = as_json(
        s2s_ca(
            served.data_dir,
            "jwt",
            "mint",
            "--spiffe-id",
            f"spiffe://{TD}/w",
            "--audience",
            "db",
            "--json",
        )
    )["token"]  # type: ignore[index]
    s2s_ca(served.data_dir, "x509", "mint", "--spiffe-id", f"spiffe://{TD}/t", "--write",
           str(tmp_path / "out"))  # fmt: skip
    text = served.log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "event"} <= set(line) for line in lines)
    audit = [line for line in lines if line["logger"] == "s2s.audit"]
    issued = {(a["event"], a.get("spiffe_id")) for a in audit}
    assert ("audit.agent.attested", attested["spiffe_id"]) in issued
    assert ("audit.x509_svid.issued", f"spiffe://{TD}/t") in issued
    assert ("audit.jwt_svid.issued", f"spiffe://{TD}/w") in issued
    assert any(a["event"] == "audit.admin.change" for a in audit)
    for secret in (token, minted, "-----BEGIN", "PRIVATE KEY"):
        assert secret not in text
