"""The pyOpenSSL soak's verdict (bench/soak/pyopenssl.py): a clean run passes; a failed
handshake, a broken long-lived connection, RSS or fd growth after the warm-up, or a rotation a
side never saw each fail it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.soak.pyopenssl import WARMUP, Authority, Files, judge, summary


def args(**over: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"tls": "pyopenssl", "duration": 600.0, "long_lived": 4, **over})


def authority(tmp_path: Path, leaves: int = 3) -> Authority:
    auth = Authority(Files(tmp_path), svid_ttl=60.0)
    auth.counts["leaves"] = leaves
    return auth


def timeline(server_rss: float = 80.0, server_fds: int = 30) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate((60.0, WARMUP, WARMUP + 60, WARMUP + 120)):
        last = i == 3
        out.append(
            {
                "t": t,
                "server": {
                    "rss_mib": server_rss if last else 80.0,
                    "fds": server_fds if last else 30,
                },
                "client": {"rss_mib": 75.0, "fds": 28},
            }
        )
    return out


def clean() -> tuple[dict[str, Any], dict[str, Any]]:
    server = {"counts": {"handshakes_ok": 100, "reloads": 4}, "rejections": {}}
    client = {
        "counts": {
            "raw_handshakes_ok": 90,
            "http_handshakes_ok": 30,
            "long_lived_open": 4,
            "long_lived_lines_ok": 400,
            "reloads": 4,
        },
        "rejections": {},
    }
    return server, client


def test_a_clean_run_passes(tmp_path: Path) -> None:
    server, client = clean()
    report = judge(args(), authority(tmp_path), server, client, timeline())
    assert report["passed"], report["failures"]
    assert report["handshakes"]["failed"] == 0
    assert "PASSED" in summary(report)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s, c: c["counts"].update({"raw_handshakes_failed": 1}), "failures"),
        (lambda s, c: s["counts"].update({"handshakes_failed": 1}), "failures"),
        (lambda s, c: c["counts"].update({"long_lived_failed": 1, "long_lived_open": 3}), "long"),
        (lambda s, c: s.update({"rejections": {"expired": 1.0}}), "rejections"),
        (lambda s, c: c["counts"].update({"reloads": 2}), "rotations"),
    ],
)
def test_a_failed_handshake_or_connection_or_missed_rotation_fails(
    tmp_path: Path, change: Any, why: str
) -> None:
    server, client = clean()
    change(server, client)
    report = judge(args(), authority(tmp_path), server, client, timeline())
    assert not report["passed"]
    assert any(why in f for f in report["failures"]), report["failures"]


def test_growth_after_the_warm_up_fails(tmp_path: Path) -> None:
    server, client = clean()
    grown = judge(args(), authority(tmp_path), server, client, timeline(server_rss=95.0))
    assert not grown["passed"]
    assert any("RSS grew" in f for f in grown["failures"])
    leaking = judge(args(), authority(tmp_path), server, client, timeline(server_fds=60))
    assert any("fds grew" in f for f in leaking["failures"])
    # twin: growth before the warm-up ends is not held against the run
    early = timeline()
    early[0]["server"]["rss_mib"] = 40.0
    assert judge(args(), authority(tmp_path), server, client, early)["passed"]
