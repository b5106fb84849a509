"""Workload attestors by name: what ``attestors = [...]`` in the agent's configuration means.

Adding an attestor is one new module in this package plus one line in :data:`ATTESTORS`; the
selector kinds it produces are registered in :data:`s2s.core.selectors.SELECTOR_KINDS`, so that
entries can name them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from s2s.agent.attestors.base import AttestorFactory, AttestorOptions
from s2s.agent.attestors.composite import CompositeAttestor
from s2s.agent.attestors.unix import unix_attestor
from s2s.core.errors import InvalidConfig

__all__ = ["ATTESTORS", "DEFAULT_ATTESTORS", "build_attestor", "check_attestor_names"]

ATTESTORS: Final[Mapping[str, AttestorFactory]] = MappingProxyType(
    {
        "unix": unix_attestor,
    }
)
DEFAULT_ATTESTORS: Final = ("unix",)


def check_attestor_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in order without repeats; :class:`InvalidConfig` for none or an unknown one.

    >>> check_attestor_names(["unix", "unix"])
    ('unix',)
    >>> check_attestor_names(["docker"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    s2s.core.errors.InvalidConfig: unknown workload attestor 'docker' (known: unix)
    """
    out = tuple(dict.fromkeys(names))
    if not out:
        raise InvalidConfig(f"at least one workload attestor is needed (known: {_known()})")
    for name in out:
        if name not in ATTESTORS:
            raise InvalidConfig(f"unknown workload attestor {name!r} (known: {_known()})")
    return out


def build_attestor(names: Iterable[str], options: AttestorOptions) -> CompositeAttestor:
    """The attestors ``names`` (see :func:`check_attestor_names`), run together."""
    return CompositeAttestor([ATTESTORS[name](options) for name in check_attestor_names(names)])


def _known() -> str:
    return ", ".join(sorted(ATTESTORS))
