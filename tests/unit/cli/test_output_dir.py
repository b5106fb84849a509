"""``--write DIR`` never hands keys to another local user: directories someone else owns or may
write into are refused, files are written atomically beside their destination and a planted
link or foreign file is refused, not written through.

The tests that need a second uid chown to 65534 and run as root; the rest inject the caller's uid.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from s2s.cli.agent import cli as agent_cli
from s2s.cli.ca import cli as ca_cli
from s2s.cli.output_dir import OutputDir, OutputFile
from s2s.core.errors import InvalidRequest

OTHER = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")
FILES = [OutputFile("svid.0.pem", b"chain", 0o644), OutputFile("svid.0.key", b"KEY", 0o600)]


def write(path: Path, **kwargs: int) -> list[Path]:
    with OutputDir.open(path, **kwargs) as out:
        return out.write(FILES)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def leftovers(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name.endswith(".tmp")]


# ---- accepted ---------------------------------------------------------------------------------


def test_new_directory_gets_0700_and_files_their_modes(tmp_path: Path) -> None:
    out = tmp_path / "a" / "svids"
    assert write(out) == [out / "svid.0.pem", out / "svid.0.key"]
    assert mode(out) == 0o700
    assert (mode(out / "svid.0.key"), (out / "svid.0.key").read_bytes()) == (0o600, b"KEY")
    assert (mode(out / "svid.0.pem"), (out / "svid.0.pem").read_bytes()) == (0o644, b"chain")
    assert leftovers(out) == []


def test_rewriting_replaces_own_files_with_new_inodes(tmp_path: Path) -> None:
    write(tmp_path)
    before = (tmp_path / "svid.0.key").stat().st_ino
    (tmp_path / "svid.0.key").chmod(0o644)  # a loosened old file does not loosen the new one
    with OutputDir.open(tmp_path) as out:
        out.write([OutputFile("svid.0.key", b"NEW", 0o600)])
    assert (tmp_path / "svid.0.key").read_bytes() == b"NEW"
    assert (tmp_path / "svid.0.key").stat().st_ino != before
    assert mode(tmp_path / "svid.0.key") == 0o600


def test_a_sticky_shared_directory_takes_new_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    write(shared)
    assert mode(shared / "svid.0.key") == 0o600


# ---- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dir_mode", "who"), [(0o770, "its group"), (0o777, "others")])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, dir_mode: int, who: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(dir_mode)
    with pytest.raises(InvalidRequest, match=f"writable by {who}"):
        write(shared)
    assert list(shared.iterdir()) == []


def test_a_sticky_shared_directory_refuses_existing_names(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "svid.0.key").write_bytes(b"planted")
    with pytest.raises(InvalidRequest, match="already exists in a directory others can write"):
        write(shared)
    assert (shared / "svid.0.key").read_bytes() == b"planted"
    assert not (shared / "svid.0.pem").exists()  # checked before anything was written


def test_a_directory_of_another_uid_is_refused(tmp_path: Path) -> None:
    me = os.geteuid()
    with pytest.raises(InvalidRequest, match=f"owned by uid {me}, not by you"):
        write(tmp_path, uid=me + 1)
    assert leftovers(tmp_path) == []


@as_root
def test_a_directory_chowned_to_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(InvalidRequest, match=f"owned by uid {OTHER}"):
        write(theirs)
    link = tmp_path / "link"
    link.symlink_to(theirs)  # a link to it is judged by what it points to
    with pytest.raises(InvalidRequest, match=f"owned by uid {OTHER}"):
        write(link)
    assert list(theirs.iterdir()) == []


@as_root
def test_a_key_file_precreated_by_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "svid.0.key"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(InvalidRequest, match=rf"svid\.0\.key is owned by uid {OTHER}"):
        write(tmp_path)
    assert planted.read_bytes() == b""  # the key never went into their file
    assert not (tmp_path / "svid.0.pem").exists()
    assert leftovers(tmp_path) == []


def test_a_planted_symlink_is_neither_followed_nor_replaced(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "svid.0.key").symlink_to(victim)
    with pytest.raises(InvalidRequest, match=r"svid\.0\.key is a symbolic link"):
        write(out)
    assert victim.read_bytes() == b"precious"
    assert (out / "svid.0.key").is_symlink()
    dangling = out / "svid.0.pem"
    (out / "svid.0.key").unlink()
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        write(out)
    assert not (tmp_path / "would-be-created").exists()


def test_a_destination_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "svid.0.key").mkdir()
    with pytest.raises(InvalidRequest, match="not a regular file"):
        write(tmp_path)


def test_a_file_given_as_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidRequest, match=r"cannot use .* as the output directory"):
        write(tmp_path / "file")


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_file_names_must_be_plain(name: str) -> None:
    with pytest.raises(InvalidRequest, match="plain file name"):
        OutputFile(name, b"")


# ---- the CLIs refuse before fetching or minting, with exit 2 ----------------------------------


def test_s2s_agent_fetch_refuses_a_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    socket = f"unix://{tmp_path}/no-agent.sock"  # never reached: the directory is checked first
    done = CliRunner().invoke(
        agent_cli, ["api", "fetch", "x509", "--socket", socket, "--write", str(shared)]
    )
    assert done.exit_code == 2, done.output
    assert "writable by others" in done.output


def test_s2s_agent_fetch_reaches_the_agent_with_a_private_directory(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path}/no-agent.sock"
    done = CliRunner().invoke(
        agent_cli, ["api", "fetch", "x509", "--socket", socket, "--write", str(tmp_path / "o")]
    )
    assert done.exit_code == 3, done.output  # agent not reachable: the directory was fine


@as_root
def test_s2s_ca_mint_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    done = CliRunner().invoke(
        ca_cli,
        ["--socket", str(tmp_path / "no-ca.sock"), "x509", "mint", "--spiffe-id",
         "spiffe://example.org/w", "--write", str(theirs)],
    )  # fmt: skip
    assert done.exit_code == 2, done.output
    assert f"owned by uid {OTHER}" in done.output
