"""``bench.etcd_capacity`` in a tiny form on a real 3-member cluster: every figure is there and
plausible, and the records it times were really written (it checks two of them back)."""

from __future__ import annotations

from pathlib import Path

from bench.etcd_capacity import measure
from s2s.testing_etcd import EtcdCluster


def test_capacity_figures_from_a_real_cluster(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path) as cluster:
        table = measure(cluster, records=60, writers=4, runs=1, batches=(1, 20))
    assert set(table) == {1, 20}
    for figures in table.values():
        assert figures["ours_per_s"] > 0
        assert figures["raw_per_s"] > 0
        assert figures["ours_cpu_ms"] >= 0
        assert figures["raw_cpu_ms"] >= 0
        assert 250 < figures["value_bytes"] < 400  # one issued-serial record's JSON
