"""s2s.verifier."""
