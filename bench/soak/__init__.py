"""The soak: the whole s2s system as real processes through many simulated lifecycles.

``python -m bench.soak [--duration S] [--short]`` (``make soak``) runs a 3-member etcd cluster,
two CA replicas, three agents and five workloads on ``s2s.verifier`` calling each other over mTLS
and with JWT-SVIDs, while SVIDs, intermediates and the root rotate, credentials are revoked every
few seconds and processes are killed and restarted. It writes a JSON report and a summary, and
exits non-zero when a legitimate call failed, a revoked credential was accepted past its bound,
something was lost across a restart or a process was left behind.
"""
