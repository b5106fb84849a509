"""Writing SVIDs and keys into a directory the user names (``--write DIR``) without handing them
to another local user.

A directory that someone else owns, or that others may write into, lets them pre-create
``svid.0.key`` (and read the key written into it) or plant a symbolic link that redirects the
write. So :meth:`OutputDir.open` opens the directory once and checks what it opened: owned by
the caller, not writable by group or others unless it is sticky (then only new names may be
written, as the sticky bit stops others from replacing them). Every file is then written
relative to that descriptor, atomically: a fresh temporary file (``O_EXCL | O_NOFOLLOW``, mode
0600 until written), fsync, rename over the destination (rename replaces a link, never follows
it), fsync of the directory. A destination that is a link, not a regular file, or owned by
someone else is refused, not replaced: it means someone tampered with the directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from s2s.core.errors import InvalidRequest

__all__ = ["OutputDir", "OutputFile"]

_TEMP_OPEN = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file to write: a plain name (no ``/``), its bytes and its final mode."""

    name: str
    data: bytes
    mode: int = 0o600

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in {".", ".."}:
            raise InvalidRequest(f"{self.name!r} is not a plain file name")


class OutputDir:
    """A checked, open output directory (use :meth:`open`; close it or use ``with``)."""

    def __init__(self, path: Path, fd: int, *, shared: bool, uid: int) -> None:
        self.path = path
        self._fd = fd
        self._shared = shared  # sticky and writable by others: new names only
        self._uid = uid

    @classmethod
    def open(cls, path: Path, *, uid: int | None = None) -> OutputDir:
        """Create ``path`` (0700) if missing, open it and check it is safe to write keys into;
        :class:`InvalidRequest` saying why not."""
        uid = os.geteuid() if uid is None else uid
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidRequest(
                f"cannot use {path} as the output directory: {_why(exc)}"
            ) from None
        try:
            shared = _check_directory(path, os.fstat(fd), uid)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, shared=shared, uid=uid)

    def write(self, files: Sequence[OutputFile]) -> list[Path]:
        """Write every file atomically; check every destination before writing any."""
        for file in files:
            self._check_destination(file.name)
        try:
            for file in files:
                self._replace(file)
            os.fsync(self._fd)  # the renames themselves survive a crash
        except OSError as exc:
            raise InvalidRequest(f"cannot write into {self.path}: {_why(exc)}") from None
        return [self.path / file.name for file in files]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_destination(self, name: str) -> None:
        shown = self.path / name
        try:
            st = os.lstat(name, dir_fd=self._fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise InvalidRequest(f"cannot check {shown}: {_why(exc)}") from None
        if self._shared:
            raise InvalidRequest(
                f"{shown} already exists in a directory others can write to; remove it or write "
                "into a directory only you can write to"
            )
        if stat.S_ISLNK(st.st_mode):
            raise InvalidRequest(
                f"{shown} is a symbolic link; refusing to write through or over it"
            )
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(f"{shown} exists and is not a regular file")
        if st.st_uid != self._uid:
            raise InvalidRequest(
                f"{shown} is owned by uid {st.st_uid}, not by you (uid {self._uid}); remove it "
                "first"
            )

    def _replace(self, file: OutputFile) -> None:
        temp = f".{file.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, _TEMP_OPEN, 0o600, dir_fd=self._fd)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(file.data)
                out.flush()
                os.fchmod(out.fileno(), file.mode)
                os.fsync(out.fileno())
            os.rename(temp, file.name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self._fd)
            raise


def _check_directory(path: Path, st: os.stat_result, uid: int) -> bool:
    """Refuse a directory someone else controls; True when it is shared but sticky."""
    if st.st_uid != uid:
        raise InvalidRequest(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}): its owner could read "
            "or replace the keys written there; write into a directory you own"
        )
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    if mode & stat.S_ISVTX:
        return True
    raise InvalidRequest(
        f"{path} is writable by {'others' if mode & stat.S_IWOTH else 'its group'} "
        f"(mode {mode:04o}): they could plant files or links in it; use a directory only you "
        "can write to (chmod go-w)"
    )


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
