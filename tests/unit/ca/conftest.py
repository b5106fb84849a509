"""Registers the CA service fixtures (defined in ca_helpers.py)."""

from __future__ import annotations

from ca_helpers import ca, clock, config, kek, store

__all__ = ["ca", "clock", "config", "kek", "store"]
