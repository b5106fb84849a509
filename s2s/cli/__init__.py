"""s2s.cli."""
