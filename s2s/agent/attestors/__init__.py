"""Workload attestors: who is calling the Workload API, as selectors.

``peercred`` reads what the kernel says about a Unix-socket peer, ``unix`` derives the ``unix:*``
selectors from it, ``composite`` runs the configured attestors together, ``registry`` names them
(``attestors = ["unix"]``) and ``base`` holds the :class:`Attestor` protocol. Attestors block
(``/proc`` reads, hashing) and hold no event loop: the Workload API runs them on threads of its
own (``s2s.agent.attest_pool``).
"""

__all__: list[str] = []
