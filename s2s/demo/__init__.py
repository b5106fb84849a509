"""The s2s demo: a trust domain on this machine as real processes (``python -m s2s.demo``).

:mod:`s2s.demo.launcher` runs the CA, an agent and two workloads (:mod:`s2s.demo.server`,
:mod:`s2s.demo.client`) and prints what happens: identities issued, mTLS calls with the peer's
SPIFFE ID, rotations, a revocation and the recovery.
"""
