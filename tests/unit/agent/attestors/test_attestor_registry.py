"""Attestors by name, and the composite the agent builds from them: selectors united, any
refusal refuses. The unix attestor runs against a /proc laid out in a temp dir."""

from __future__ import annotations

import doctest
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from s2s.agent.attestors import registry
from s2s.agent.attestors.base import Attestor, AttestorOptions
from s2s.agent.attestors.composite import CompositeAttestor
from s2s.agent.attestors.peercred import PeerCredentials
from s2s.agent.attestors.registry import ATTESTORS, build_attestor, check_attestor_names
from s2s.agent.attestors.unix import UnixAttestor
from s2s.agent.config import AgentConfig, load_config
from s2s.cli.agent import cli
from s2s.core.errors import AttestationFailed, InvalidConfig, NotAuthorized
from s2s.core.selectors import SELECTOR_KINDS, Selector

FIELDS = " ".join(str(n) for n in range(3, 30))  # stat field n holds n: start time 22
MINIMAL = {
    "trust_domain": "example.org",
    "ca_urls": ("https://ca.example.org:8443",),
    "data_dir": "/var/lib/s2s-agent",
}


def fake_proc(root: Path, pid: int = 7, uid: int = 1000) -> Path:
    """/proc/<pid> with stat, status and an exe link to a small binary."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (x) {FIELDS}\n")
    (d / "status").write_text(f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t100\t100\t100\t100\n")
    exe = root / "bin-x"
    exe.write_bytes(b"\x7fELF" + b"\0" * 64)
    (d / "exe").symlink_to(exe)
    return exe


def peer(pid: int = 7, uid: int = 1000) -> PeerCredentials:
    return PeerCredentials(pid=pid, uid=uid, gid=100, start_time=22)


class Fixed:
    """A small attestor of its own: fixed selectors, or a refusal (a real implementation of
    the protocol, not a mock)."""

    def __init__(self, *selectors: str, refuse: Exception | None = None) -> None:
        self.selectors = frozenset(Selector.parse(s) for s in selectors)
        self.refuse = refuse
        self.calls: list[str] = []

    def admit(self, peer: PeerCredentials) -> PeerCredentials:
        self.calls.append("admit")
        if self.refuse is not None:
            raise self.refuse
        return peer

    def attest(self, peer: PeerCredentials) -> frozenset[Selector]:
        self.calls.append("attest")
        if self.refuse is not None:
            raise self.refuse
        return self.selectors

    def recheck(self, peer: PeerCredentials) -> None:
        self.calls.append("recheck")
        if self.refuse is not None:
            raise self.refuse


def test_unix_is_registered_and_its_selector_kinds_too() -> None:
    assert set(ATTESTORS) == {"unix"}
    assert "unix" in SELECTOR_KINDS
    assert registry.DEFAULT_ATTESTORS == ("unix",)


def test_the_registry_docstring_examples_hold() -> None:
    result = doctest.testmod(registry, optionflags=doctest.ELLIPSIS)
    assert result.attempted
    assert not result.failed


def test_build_attestor_runs_the_unix_attestor_with_the_agents_settings(tmp_path: Path) -> None:
    exe = fake_proc(tmp_path)
    options = AttestorOptions(sha256_max_bytes=0, proc_root=str(tmp_path))
    attestor = build_attestor(["unix"], options)
    assert isinstance(attestor, CompositeAttestor)
    [unix] = attestor.attestors
    assert isinstance(unix, UnixAttestor)
    admitted = attestor.admit(peer())
    assert admitted.image is not None
    assert admitted.image.exe == str(exe)
    selectors = attestor.attest(admitted)
    assert Selector("unix", "uid:1000") in selectors
    assert Selector("unix", f"path:{exe}") in selectors
    assert any(s.value.startswith("sha256:") for s in selectors)
    attestor.recheck(admitted)
    # Twin: the size limit reaches the unix attestor (the binary is 68 bytes).
    limited = build_attestor(["unix"], replace(options, sha256_max_bytes=8))
    assert not any(s.value.startswith("sha256:") for s in limited.attest(limited.admit(peer())))


def test_build_attestor_refuses_a_pid_that_is_not_there(tmp_path: Path) -> None:
    fake_proc(tmp_path)
    attestor = build_attestor(["unix"], AttestorOptions(0, proc_root=str(tmp_path)))
    with pytest.raises(AttestationFailed):
        attestor.admit(peer(pid=8))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["docker"], "unknown workload attestor 'docker' (known: unix)"),
        (["unix", "k8s"], "unknown workload attestor 'k8s' (known: unix)"),
        (["Unix"], "unknown workload attestor 'Unix'"),
        ([], "at least one workload attestor is needed (known: unix)"),
    ],
)
def test_unknown_or_no_attestors_are_refused_with_the_known_ones(
    names: list[str], message: str
) -> None:
    with pytest.raises(InvalidConfig) as err:
        build_attestor(names, AttestorOptions(0))
    assert message in str(err.value)


def test_names_keep_their_order_without_repeats() -> None:
    assert check_attestor_names(["unix", "unix"]) == ("unix",)
    assert check_attestor_names(("unix",)) == ("unix",)


def test_options_refuse_a_negative_size() -> None:
    with pytest.raises(InvalidConfig, match="sha256_max_bytes"):
        AttestorOptions(sha256_max_bytes=-1)


def test_composite_unites_selectors_and_runs_every_attestor() -> None:
    a, b = Fixed("unix:uid:1000"), Fixed("unix:uid:1000", "unix:gid:100")
    composite = CompositeAttestor([a, b])
    admitted = composite.admit(peer())
    assert composite.attest(admitted) == {Selector("unix", "uid:1000"), Selector("unix", "gid:100")}
    composite.recheck(admitted)
    assert a.calls == b.calls == ["admit", "attest", "recheck"]


@pytest.mark.parametrize("error", [AttestationFailed("gone"), NotAuthorized("exec'd")])
def test_composite_refuses_what_any_attestor_refuses(error: Exception) -> None:
    ok, refusing = Fixed("unix:uid:1000"), Fixed(refuse=error)
    for order in ([ok, refusing], [refusing, ok]):
        composite = CompositeAttestor(order)
        for call in (composite.admit, composite.attest, composite.recheck):
            with pytest.raises(type(error)):
                call(peer())


def test_composite_needs_an_attestor_and_is_an_attestor() -> None:
    with pytest.raises(InvalidConfig, match="at least one"):
        CompositeAttestor([])
    attestor: Attestor = CompositeAttestor([Fixed("unix:uid:1")])  # mypy checks the protocol
    assert attestor.attest(peer()) == {Selector("unix", "uid:1")}


# -- configuration: attestors = [...] / S2S_AGENT_ATTESTORS / --attestor -------------------------


def test_attestors_default_to_unix() -> None:
    assert load_config(flags=MINIMAL, environ={}).attestors == ("unix",)


def test_attestors_from_toml_env_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'trust_domain = "example.org"\nca_url = "https://ca:1"\ndata_dir = "/d"\n'
        'attestors = ["unix", "unix"]\n'
    )
    assert load_config(environ={}, config_file=path).attestors == ("unix",)
    assert load_config(environ={"S2S_AGENT_ATTESTORS": " unix "}, config_file=path).attestors == (
        "unix",
    )
    flags = {"attestors": ("unix",)}
    assert load_config(flags=flags, environ={}, config_file=path).attestors == ("unix",)


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        ("toml", '["unix", "docker"]', "unknown workload attestor 'docker' (known: unix)"),
        ("toml", "[]", "at least one workload attestor"),
        ("toml", "3", "must be an attestor name or a list of names"),
        ("toml", "[3]", "must be a string"),
        ("env", "unix,docker", "unknown workload attestor 'docker' (known: unix)"),
        ("flag", "docker", "unknown workload attestor 'docker' (known: unix)"),
    ],
)
def test_bad_attestors_name_the_setting_and_where_it_came_from(
    tmp_path: Path, source: str, value: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    text = 'trust_domain = "example.org"\nca_url = "https://ca:1"\ndata_dir = "/d"\n'
    environ: dict[str, str] = {}
    flags: dict[str, object] = {}
    if source == "toml":
        text += f"attestors = {value}\n"
    elif source == "env":
        environ["S2S_AGENT_ATTESTORS"] = value
    else:
        flags["attestors"] = (value,)
    path.write_text(text)
    where = {"toml": f"file {path}", "env": "env S2S_AGENT_ATTESTORS", "flag": "flag --attestor"}[
        source
    ]
    with pytest.raises(InvalidConfig) as err:
        load_config(flags=flags, environ=environ, config_file=path)
    assert message in str(err.value)
    assert f"attestors (from {where})" in str(err.value)


def test_config_value_checks_attestors_too() -> None:
    config = load_config(flags=MINIMAL, environ={})
    for bad in (("nope",), (), ("unix", "unix")):
        with pytest.raises(InvalidConfig):
            AgentConfig(
                trust_domain=config.trust_domain,
                ca_urls=config.ca_urls,
                data_dir=config.data_dir,
                attestors=bad,
            )


def test_cli_flag_attestor_is_checked(tmp_path: Path) -> None:
    args = ["run", "--trust-domain", "example.org", "--ca-url", "https://ca:8443",
            "--data-dir", str(tmp_path), "--attestor", "unix", "--attestor", "docker"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={k: "" for k in os.environ if k.startswith("S2S_")})
    assert result.exit_code == 1, result.output
    assert "unknown workload attestor 'docker' (known: unix)" in result.output
    assert "--attestor" in result.output
