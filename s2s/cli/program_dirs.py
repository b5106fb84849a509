"""A data directory belongs to one program: the CA's holds its key-encryption key and store, an
agent's its identity and bundle. Pointed at the other's, ``s2s-ca`` and ``s2s-agent run`` stop
with the reason instead of mixing their files (an agent once ran on the CA's directory because
both read one variable)."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from s2s.core.errors import InvalidConfig

__all__ = ["refuse_other_programs_dir"]

Program = Literal["ca", "agent"]
_WHAT: Final = {"ca": "an s2s CA's", "agent": "an s2s agent's"}
_FLAG_HINT: Final = {
    "ca": "--data-dir or S2S_CA_DATA_DIR (e.g. /var/lib/s2s-ca)",
    "agent": "--data-dir or S2S_AGENT_DATA_DIR (e.g. /var/lib/s2s-agent)",
}


def _files_of(program: Program) -> tuple[str, ...]:
    # imported here: the CA CLI need not load the agent's modules, nor the agent the CA's
    if program == "ca":
        from s2s.ca.client import ADMIN_SOCKET_NAME  # noqa: PLC0415
        from s2s.ca.config import KEK_FILENAME, STORE_FILENAME  # noqa: PLC0415

        return (KEK_FILENAME, STORE_FILENAME, ADMIN_SOCKET_NAME)
    from s2s.agent.node import BUNDLE_FILE, IDENTITY_FILE  # noqa: PLC0415

    return (IDENTITY_FILE, BUNDLE_FILE)


def refuse_other_programs_dir(data_dir: Path, *, program: Program) -> None:
    """Raise :class:`InvalidConfig` if ``data_dir`` holds the other program's files."""
    other: Program = "agent" if program == "ca" else "ca"
    try:
        found = [name for name in _files_of(other) if (data_dir / name).exists()]
    except OSError:  # unreadable: the program's own checks say why
        return
    if found:
        raise InvalidConfig(
            f"data dir {data_dir} is {_WHAT[other]} data directory (it holds "
            f"{', '.join(found)}): give the {'CA' if program == 'ca' else 'agent'} its own with "
            f"{_FLAG_HINT[program]}"
        )
