"""Generated SPIFFE Workload API messages (packaged copy; see README.md)."""
