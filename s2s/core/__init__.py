"""s2s.core."""
