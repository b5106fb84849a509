"""Selectors (``type:value``, e.g. ``unix:uid:1000``) and registration-entry matching.

An entry matches a caller when every selector of the entry is among the caller's selectors
(SPIRE: "selectors are a subset of the workload's selectors").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from s2s.core.errors import InvalidSelector

__all__ = ["MAX_SELECTOR_BYTES", "Selector", "matches", "parse_selectors"]

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


def matches(entry_selectors: frozenset[Selector], caller_selectors: frozenset[Selector]) -> bool:
    """True when every selector of the entry is among the caller's (and the entry has some)."""
    return bool(entry_selectors) and entry_selectors <= caller_selectors
