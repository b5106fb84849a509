"""deploy/: manifests parse with the expected kinds and wiring, systemd units pass
``systemd-analyze verify``, the example TOML files go through the real loaders, and every s2s flag
the files use is a real CLI option."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from s2s.agent.config import load_config
from s2s.ca.config import CaConfig
from s2s.ca.store_config import StoreSettings
from s2s.cli.agent import cli as agent_cli
from s2s.cli.ca import cli as ca_cli
from s2s.cli.ca_process import load_config_file as load_ca_config_file
from s2s.core.errors import InvalidConfig
from s2s.core.spiffe_id import TrustDomain

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
UNITS = ("s2s-ca.service", "s2s-agent.service")
VENV_BIN = ROOT / ".venv" / "bin"


def documents(name: str) -> list[dict[str, Any]]:
    with (K8S / name).open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def by_kind(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents(name)}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("namespace.yaml", ["Namespace"]),
        ("etcd.yaml", ["Service", "StatefulSet", "NetworkPolicy"]),
        ("ca.yaml", ["ServiceAccount", "Service", "Job", "Deployment"]),
        ("agent.yaml", ["ServiceAccount", "ConfigMap", "DaemonSet"]),
        ("workload.yaml", ["Deployment"]),
    ],
)
def test_manifests_have_the_expected_kinds(name: str, kinds: list[str]) -> None:
    docs = documents(name)
    assert [d["kind"] for d in docs] == kinds
    for doc in docs:
        assert doc["apiVersion"]
        assert doc["metadata"]["name"]


def test_every_manifest_is_checked() -> None:
    assert {p.name for p in K8S.glob("*.yaml")} == {
        "namespace.yaml",
        "etcd.yaml",
        "ca.yaml",
        "agent.yaml",
        "workload.yaml",
    }


def test_selectors_match_pod_labels() -> None:
    for name in ("etcd.yaml", "ca.yaml", "agent.yaml", "workload.yaml"):
        for doc in documents(name):
            if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
                wanted = doc["spec"]["selector"]["matchLabels"]
                labels = doc["spec"]["template"]["metadata"]["labels"]
                assert wanted.items() <= labels.items(), name
    service = by_kind("etcd.yaml")["Service"]
    assert by_kind("etcd.yaml")["StatefulSet"]["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"


def test_agent_daemonset_shares_the_socket_directory() -> None:
    ds = by_kind("agent.yaml")["DaemonSet"]
    spec = pod_spec(ds)
    assert spec["hostPID"] is True  # SO_PEERCRED pids must be visible in /proc
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["socket-dir"]["hostPath"]["path"] == "/run/s2s"
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["socket-dir"] == "/run/s2s"
    config = tomllib.loads(by_kind("agent.yaml")["ConfigMap"]["data"]["agent.toml"])
    assert config["socket"] == "/run/s2s/agent.sock"
    caps = spec["containers"][0]["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_workload_finds_the_agent_socket() -> None:
    spec = pod_spec(by_kind("workload.yaml")["Deployment"])
    container = spec["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix:///run/s2s/agent.sock"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/run/s2s")
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["hostPath"]["path"] == "/run/s2s"


def test_agent_configmap_loads_through_the_real_loader(tmp_path: Path) -> None:
    text = by_kind("agent.yaml")["ConfigMap"]["data"]["agent.toml"]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    config = load_config(config_file=path, environ={})
    assert config.ca_urls == ("https://s2s-ca.s2s.svc:8443",)
    assert config.metrics_listen == ("0.0.0.0", 9988)


def test_example_agent_toml_loads() -> None:
    config = load_config(config_file=DEPLOY / "agent.toml", environ={})
    assert str(config.trust_domain) == "example.org"
    assert len(config.ca_urls) == 2
    assert config.trust_bundle == DEPLOY / "bundle.pem"  # relative to the file
    assert str(config.socket) == "/run/s2s/agent.sock"
    assert config.join_token is None  # the secret stays out of the file


def test_agent_toml_twin_with_a_typo_is_refused(tmp_path: Path) -> None:
    text = (DEPLOY / "agent.toml").read_text().replace("ca_url =", "ca_urls =")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(InvalidConfig, match="unknown setting 'ca_urls'"):
        load_config(config_file=path, environ={})


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def _ca_flags() -> set[str]:
    return _options(ca_cli) | _options(ca_cli.commands["serve"]) | _options(ca_cli.commands["init"])


def test_example_ca_toml_loads_through_the_real_loader() -> None:
    flags, ttls = load_ca_config_file(DEPLOY / "ca.toml")
    assert flags["data_dir"] == "/var/lib/s2s-ca"
    assert flags["socket"] == "/run/s2s-ca/admin.sock"
    assert "store" not in flags  # SQLite by default; etcd lines are comments
    overrides: dict[str, Any] = dict(ttls)
    config = CaConfig(
        trust_domain=TrustDomain.parse("example.org"), data_dir=Path("/d"), **overrides
    )
    assert config.x509_svid_ttl == config.max_svid_ttl == timedelta(minutes=5)
    assert config.agent_svid_ttl == timedelta(hours=1)


def test_ca_toml_twin_with_a_typo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text((DEPLOY / "ca.toml").read_text().replace("\nlisten =", "\nlisen ="))
    with pytest.raises(InvalidConfig, match="lisen"):
        load_ca_config_file(path)


def test_ca_toml_with_etcd_uncommented_is_a_valid_store(tmp_path: Path) -> None:
    text = (DEPLOY / "ca.toml").read_text()
    for key in ("store", "trust_domain", "etcd_lease_grace"):
        text = text.replace(f"# {key} = ", f"{key} = ")
    path = tmp_path / "ca.toml"
    path.write_text(text)
    flags, _ = load_ca_config_file(path)
    settings = StoreSettings(
        url=flags["store"],
        trust_domain=flags["trust_domain"],
        lease_grace=flags["etcd_lease_grace"],
    )
    assert settings.is_etcd
    assert settings.lease_grace == timedelta(minutes=5)  # the example states the default


def _s2s_flags(words: list[str]) -> tuple[str, list[str]]:
    program = Path(words[0]).name
    return program, [w.split("=", 1)[0] for w in words[1:] if w.startswith("--")]


def _check_flags(words: list[str]) -> None:
    program, flags = _s2s_flags(words)
    if program == "s2s-ca":
        known = _ca_flags()
    else:
        known = _options(agent_cli) | _options(agent_cli.commands["run"])
    missing = [f for f in flags if f not in known]
    assert not missing, f"{program} has no option {missing}"


def _exec_start(unit: str) -> list[str]:
    text = (DEPLOY / "systemd" / unit).read_text()
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", UNITS)
def test_units_use_real_flags(unit: str) -> None:
    _check_flags(_exec_start(unit))


def test_agent_daemonset_uses_real_flags() -> None:
    script = pod_spec(by_kind("agent.yaml")["DaemonSet"])["containers"][0]["args"][0]
    line = next(x for x in script.splitlines() if "s2s-agent" in x)
    _check_flags(shlex.split(line)[1:])  # after "exec"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_ca_pods_use_real_flags(kind: str) -> None:
    container = pod_spec(by_kind("ca.yaml")[kind])["containers"][0]
    _check_flags(container["command"] + container["args"])


def test_ca_pods_may_reach_etcd_and_share_the_kek() -> None:
    policy = by_kind("etcd.yaml")["NetworkPolicy"]
    allowed = [rule["from"][0]["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"]]
    for kind in ("Deployment", "Job"):
        doc = by_kind("ca.yaml")[kind]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(a.items() <= labels.items() for a in allowed), kind
        volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        assert volumes["kek"]["secret"]["secretName"] == "s2s-ca-kek"
    job_args = pod_spec(by_kind("ca.yaml")["Job"])["containers"][0]["args"]
    ca_args = pod_spec(by_kind("ca.yaml")["Deployment"])["containers"][0]["args"]
    store = [a for a in ca_args if a.startswith("--store=")]
    assert store
    assert store[0] in job_args  # init writes the root where the replicas read it


def test_flag_check_rejects_an_unknown_flag() -> None:
    with pytest.raises(AssertionError, match="no option"):
        _check_flags(["/opt/s2s/bin/s2s-ca", "serve", "--listen=1", "--no-such-flag"])


# ---- systemd ----------------------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)


def _verify(unit_text: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify insists that ExecStart's binary exists: point /opt/s2s/bin at this checkout's venv.
    path = tmp_path / name
    path.write_text(unit_text.replace("/opt/s2s/bin/", f"{VENV_BIN}/"))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    done = _verify((DEPLOY / "systemd" / unit).read_text(), unit, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"Unknown|ignoring|Failed|Invalid", output), output


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "s2s-ca.service").read_text()
    done = _verify(
        text.replace("ProtectSystem=strict", "ProtectSystem=stricter"), "x.service", tmp_path
    )
    assert re.search(r"Failed to parse|ignoring", done.stdout + done.stderr)


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=",
        "StateDirectory=",
        "User=",
    ):
        assert setting in text, setting
    path = tmp_path / unit
    path.write_text(text.replace("/opt/s2s/bin/", f"{VENV_BIN}/"))
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 3.0, done.stdout  # "OK" on systemd's 0-10 scale


def test_sysusers_declares_both_users() -> None:
    lines = (DEPLOY / "systemd" / "s2s.sysusers.conf").read_text().splitlines()
    users = {line.split()[1] for line in lines if line.startswith("u ")}
    assert users == {"s2s-ca", "s2s-agent"}
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        assert re.search(r"^User=(\S+)$", text, re.M).group(1) in users  # type: ignore[union-attr]


def test_dockerfile_installs_the_package_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "COPY s2s ./s2s" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert not user[-1].startswith("0")
    assert "COPY . " not in text  # never the whole tree (keys, .s2s-demo, certs-dev/out)
