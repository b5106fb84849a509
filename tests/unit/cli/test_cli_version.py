"""``--version`` on both CLIs: the installed s2s version (the one the ``*_build_info`` metrics
carry), Python's and OpenSSL's; it needs no CA, no agent and no settings."""

from __future__ import annotations

import platform
import ssl
import subprocess
import sys
from importlib.metadata import version

import pytest

from s2s import __version__, version_info
from s2s.verifier.metrics import build_version

CLIS = {"s2s-ca": "s2s.cli.ca", "s2s-agent": "s2s.cli.agent"}


def test_version_info_is_the_installed_package_and_what_build_info_says() -> None:
    info = version_info()
    assert info["s2s"] == version("s2s") == build_version() == __version__
    assert info["python"] == platform.python_version()
    assert info["openssl"] == ssl.OPENSSL_VERSION
    assert info["cryptography"] == version("cryptography")


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_version_flag_prints_every_version_and_exits_0(prog: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", CLIS[prog], "--version"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "S2S_CA_DATA_DIR": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = version_info()
    assert done.stdout.startswith(f"{prog} {info['s2s']} ("), done.stdout
    for value in (info["python"], info["openssl"], info["cryptography"]):
        assert value in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("prog", "args"), [("s2s-ca", ["init", "--version"]), ("s2s-agent", ["run", "--version"])]
)
def test_version_is_an_option_of_the_program_not_of_a_command(prog: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", CLIS[prog], *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--version" in done.stderr
    assert version_info()["openssl"] not in done.stdout
