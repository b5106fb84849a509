"""s2s.store."""
