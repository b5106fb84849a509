"""Selectors (``type:value``, e.g. ``unix:uid:1000``) and registration-entry matching.

An entry matches a caller when every selector of the entry is among the caller's selectors
(SPIRE: "selectors are a subset of the workload's selectors").

``Selector.parse`` checks the shape only (the agent's attestor and stored entries use it).
``validate_selector`` also checks the selector against ``SELECTOR_KINDS``, the registry of every
selector an attestor produces, so an entry never names a selector that can never match: a new
attestor adds its kinds there, in one place.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from s2s.core.errors import InvalidSelector

__all__ = [
    "MAX_SELECTOR_BYTES",
    "SELECTOR_KINDS",
    "Selector",
    "SelectorKind",
    "matches",
    "parse_entry_selectors",
    "parse_selectors",
    "validate_selector",
]

MAX_SELECTOR_BYTES = 1024
_TYPE = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    """One attested property of a workload or node.

    >>> s = Selector.parse("unix:uid:1000")
    >>> s.type, s.value, str(s)
    ('unix', 'uid:1000', 'unix:uid:1000')
    """

    type: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Selector:
        if not isinstance(text, str):
            raise InvalidSelector("a selector must be text like 'unix:uid:1000'")
        if len(text.encode("utf-8")) > MAX_SELECTOR_BYTES:
            raise InvalidSelector(f"selector is longer than {MAX_SELECTOR_BYTES} bytes")
        kind, sep, value = text.partition(":")
        if not sep:
            raise InvalidSelector(f"selector {text!r} must be 'type:value', e.g. 'unix:uid:1000'")
        if _TYPE.fullmatch(kind) is None:
            raise InvalidSelector(
                f"selector type {kind!r} must be lowercase letters, digits, '_' or '-'"
            )
        if value == "":
            raise InvalidSelector(f"selector {text!r} has an empty value")
        if value != value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise InvalidSelector(
                f"selector {text!r} has surrounding whitespace or control characters"
            )
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def parse_selectors(texts: Iterable[str]) -> frozenset[Selector]:
    """Parse several selectors; an entry needs at least one."""
    selectors = frozenset(Selector.parse(t) for t in texts)
    if not selectors:
        raise InvalidSelector("at least one selector is required")
    return selectors


@dataclass(frozen=True, slots=True)
class SelectorKind:
    """One kind of selector an attestor produces: ``<type>:<name>:<value>`` where ``check``
    accepts ``value``; ``rule`` says in words what it accepts (shown when it refuses)."""

    type: str
    name: str
    rule: str
    check: Callable[[str], bool]


_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no id" to the kernel
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")  # canonical: as str(int) writes it
_ACCOUNT = re.compile(r"[A-Za-z0-9_.][^\s:/,]{0,255}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PATH_MAX = 4096


def _is_id(value: str) -> bool:
    return _DECIMAL.fullmatch(value) is not None and int(value) <= _MAX_ID


def _is_account(value: str) -> bool:
    return _ACCOUNT.fullmatch(value) is not None


def _is_binary_path(value: str) -> bool:
    # readlink(/proc/<pid>/exe) is absolute and normalized; anything else never matches.
    return (
        value.startswith("/")
        and not value.startswith("//")
        and len(value.encode("utf-8")) <= _PATH_MAX
        and posixpath.normpath(value) == value
    )


def _is_sha256(value: str) -> bool:
    return _SHA256.fullmatch(value) is not None


_ID_RULE = "a decimal number from 0 to 4294967294 without leading zeros"
_NAME_RULE = "an account name (letters, digits, '_' or '.' first; no whitespace, ':', '/' or ',')"

# The unix workload attestor (s2s.agent.attestors.unix) produces exactly these. A new attestor
# adds its kinds here, next to its entry in s2s.agent.attestors.registry.
_UNIX_KINDS: Final = (
    SelectorKind("unix", "uid", _ID_RULE, _is_id),
    SelectorKind("unix", "user", _NAME_RULE, _is_account),
    SelectorKind("unix", "gid", _ID_RULE, _is_id),
    SelectorKind("unix", "group", _NAME_RULE, _is_account),
    SelectorKind("unix", "supplementary_gid", _ID_RULE, _is_id),
    SelectorKind("unix", "supplementary_group", _NAME_RULE, _is_account),
    SelectorKind(
        "unix", "path", "an absolute, normalized path (no '.', '..' or '//')", _is_binary_path
    ),
    SelectorKind("unix", "sha256", "64 lowercase hexadecimal digits", _is_sha256),
)


def _registry(kinds: Iterable[SelectorKind]) -> Mapping[str, Mapping[str, SelectorKind]]:
    by_type: dict[str, dict[str, SelectorKind]] = {}
    for kind in kinds:
        by_type.setdefault(kind.type, {})[kind.name] = kind
    return MappingProxyType({t: MappingProxyType(k) for t, k in by_type.items()})


SELECTOR_KINDS: Final = _registry(_UNIX_KINDS)
"""Selector type -> name -> kind, for every selector an attestor of s2s produces."""


def validate_selector(
    selector: Selector, kinds: Mapping[str, Mapping[str, SelectorKind]] = SELECTOR_KINDS
) -> Selector:
    """``selector`` if an attestor can produce it; otherwise :class:`InvalidSelector` naming the
    rule it breaks.

    >>> validate_selector(Selector.parse("unix:uid:1000"))
    Selector(type='unix', value='uid:1000')
    >>> validate_selector(Selector.parse("unix:uid:-5"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    s2s.core.errors.InvalidSelector: selector 'unix:uid:-5': the value of unix:uid must be a ...
    """
    names = kinds.get(selector.type)
    if names is None:
        known = ", ".join(sorted(kinds))
        raise InvalidSelector(
            f"selector {str(selector)!r}: no attestor produces type {selector.type!r} "
            f"(known types: {known})"
        )
    name, sep, value = selector.value.partition(":")
    kind = names.get(name)
    if kind is None or not sep:
        known = ", ".join(f"{selector.type}:{n}" for n in names)
        raise InvalidSelector(
            f"selector {str(selector)!r} is not one the {selector.type} attestor produces "
            f"(known: {known}, each followed by ':<value>')"
        )
    if not kind.check(value):
        raise InvalidSelector(
            f"selector {str(selector)!r}: the value of {kind.type}:{kind.name} must be {kind.rule}"
        )
    return selector


def parse_entry_selectors(texts: Iterable[str]) -> frozenset[Selector]:
    """The selectors of a registration entry: parsed, each one an attestor can produce
    (:func:`validate_selector`), at least one."""
    return frozenset(validate_selector(s) for s in parse_selectors(texts))


def matches(entry_selectors: frozenset[Selector], caller_selectors: frozenset[Selector]) -> bool:
    """True when every selector of the entry is among the caller's (and the entry has some)."""
    return bool(entry_selectors) and entry_selectors <= caller_selectors
