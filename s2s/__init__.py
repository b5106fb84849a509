"""s2s: workload identity for microservices, the SPIFFE way."""

__version__ = "0.1.0"
