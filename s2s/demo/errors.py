"""The demo's own failure: a step that did not happen (the message says which)."""

from __future__ import annotations

__all__ = ["DemoFailed"]


class DemoFailed(Exception):
    """A step of the demo did not happen; the launcher prints it and exits with status 1."""
