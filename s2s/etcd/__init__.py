"""s2s.etcd: the etcd v3 client, wrapped once (TLS, typed values, lease keep-alive, watches).

Shared by the etcd ``Store`` backend (:mod:`s2s.store.etcd`), the verifier's etcd revocation feed
and the agent. Import names from their modules: :mod:`s2s.etcd.client` (``EtcdClient``),
:mod:`s2s.etcd.channel` (endpoints and ``EtcdTls``), :mod:`s2s.etcd.values` (keys, events,
transaction building blocks), :mod:`s2s.etcd.watch` (resumable watches).
"""

from __future__ import annotations

__all__: list[str] = []
