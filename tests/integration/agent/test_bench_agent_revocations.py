"""bench.agent_revocations runs small: one revocation reaches an old client's stream as the whole
set and a delta client's stream as a delta of a few hundred bytes, on a real socket."""

from __future__ import annotations

from pathlib import Path

from bench.agent_revocations import measure


async def test_the_bench_measures_a_whole_set_and_a_delta(socket_dir: Path) -> None:
    result = await measure(300, socket_dir)
    assert result["delta_bytes"] < 400
    assert result["whole_bytes"] > 300 * 100  # every record, each ~200 bytes of JSON
    assert all(result[k] >= 0 for k in ("whole_agent_ms", "delta_agent_ms", "delta_client_ms"))
