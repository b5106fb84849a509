"""Fixtures for the Workload API tests: a real server on a real Unix socket.

``socket_dir``, ``provider`` and ``server`` are shared with the verifier tests and live in
``tests/integration/conftest.py`` (the socket directory is made under /tmp with mode 0755:
pytest's own tmp dirs are 0700, which would keep the uid-65534 workloads of these tests out).
"""
