"""Run the doctest examples of the public value objects in s2s.core."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import s2s.core

MODULES = sorted(m.name for m in pkgutil.iter_modules(s2s.core.__path__, "s2s.core."))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
