"""s2s.agent."""
