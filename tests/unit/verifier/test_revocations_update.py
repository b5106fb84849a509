"""WatchRevocations messages -> RevocationsUpdate: records parsed and checked, timings sane; a
malformed message is Unavailable (the feed keeps its last set and reconnects), never a crash."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from s2s.core.errors import Unavailable
from s2s.core.revocation import RevocationKind, RevocationRecord
from s2s.verifier.workload_client import _revocations_update
from s2s.workload_proto import s2s_revocations_pb2 as rpb

AT = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def message(**kw: object) -> rpb.RevocationsUpdate:
    fields: dict[str, object] = {
        "revision": 3, "full": True, "records_json": b"[]", "synced": True,
        "age_seconds": 1.5, "lag_after_seconds": 40.0, "heartbeat_seconds": 5.0,
    }  # fmt: skip
    fields.update(kw)
    return rpb.RevocationsUpdate(**fields)  # type: ignore[arg-type]


def test_a_full_update_carries_the_records_and_the_agents_timings() -> None:
    records = [
        RevocationRecord.for_jti("j", revoked_at=AT, expires_at=AT + dt.timedelta(hours=1)),
        RevocationRecord.for_spiffe_id(
            "spiffe://example.org/a", revoked_at=AT, expires_at=AT + dt.timedelta(hours=1)
        ),
    ]
    data = json.dumps([r.to_json() for r in records]).encode()
    update = _revocations_update(message(records_json=data))
    assert update.records == tuple(records)
    assert (update.revision, update.age, update.lag_after, update.heartbeat) == (3, 1.5, 40, 5)
    assert {r.kind for r in update.records} == {RevocationKind.JTI, RevocationKind.SPIFFE_ID}


def test_a_heartbeat_has_no_records_and_an_unsynced_agent_no_age() -> None:
    beat = _revocations_update(message(full=False, records_json=b""))
    assert beat.records is None
    assert _revocations_update(message(synced=False)).age is None


@pytest.mark.parametrize(
    "records_json",
    [b"not json", b"{}", b'[{"kind": "jti"}]', b'[{"kind": "bogus", "value": "v", '
     b'"revoked_at": "2030-01-01T00:00:00+00:00", "expires_at": "2030-01-01T01:00:00+00:00"}]'],
)  # fmt: skip
def test_malformed_records_are_unavailable(records_json: bytes) -> None:
    with pytest.raises(Unavailable, match="the agent sent"):
        _revocations_update(message(records_json=records_json))


@pytest.mark.parametrize(
    "timing",
    [
        {"age_seconds": -1.0},
        {"age_seconds": math.nan},
        {"age_seconds": math.inf},
        {"lag_after_seconds": 0.0},
        {"lag_after_seconds": math.nan},
        {"heartbeat_seconds": 0.0},
        {"heartbeat_seconds": 1e12},
    ],
)
def test_timings_that_make_no_sense_are_unavailable(timing: dict[str, float]) -> None:
    with pytest.raises(Unavailable, match="make no sense"):
        _revocations_update(message(**timing))
