"""The audit log of admin changes, read as JSON lines the way the CA writes them: each change
names its caller (uid and pid of the admin socket's peer) and carries the whole change; refused
admin calls are audited too; secrets never appear."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from ca_harness import TRUST_DOMAIN, Agent, RunningCa

from s2s.ca.audit import AUDIT_FIELDS, AUDIT_LOGGER
from s2s.core.errors import Conflict, InvalidRequest, InvalidSelector, NotFound
from s2s.log import JsonFormatter

pytestmark = pytest.mark.asyncio

CLI = [sys.executable, "-m", "s2s.cli.ca"]


class AuditLines(logging.Handler):
    """The ``s2s.audit`` logger's lines, formatted as the CA's JSON log formats them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(extra_fields=AUDIT_FIELDS))
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(self.format(record))

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        decoded = [json.loads(t) for t in self.text]
        return [d for d in decoded if event is None or d["event"] == event]

    def change(self, action: str) -> dict[str, Any]:
        found = [d for d in self.lines("audit.admin.change") if d["action"] == action]
        assert len(found) == 1, (action, self.text)
        return found[0]


@pytest.fixture
def audit() -> Iterator[AuditLines]:
    handler = AuditLines()
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def me() -> dict[str, int]:
    return {"uid": os.getuid(), "pid": os.getpid()}  # the admin client runs in this process


async def test_entry_changes_carry_caller_and_whole_entry(
    ca: RunningCa, agent: Agent, audit: AuditLines
) -> None:
    selectors = ["unix:uid:1000", "unix:gid:50"]
    created = await ca.entry(agent, "/billing", selectors=selectors, x509_svid_ttl=120,
                             jwt_svid_ttl=60, dns_names=["billing.local"])  # fmt: skip
    line = audit.change("entry.create")
    assert {k: line[k] for k in ("uid", "pid")} == me()
    assert line["entry_id"] == created["id"]
    assert line["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/billing"
    assert line["parent_id"] == agent.spiffe_id
    assert line["selectors"] == ["unix:gid:50", "unix:uid:1000"]
    assert line["x509_svid_ttl"] == 120
    assert line["jwt_svid_ttl"] == 60
    assert line["dns_names"] == ["billing.local"]
    await ca.admin_call("PATCH", f"/v1/entries/{created['id']}", {"x509_svid_ttl": 90})
    updated = audit.change("entry.update")
    assert updated["changed"] == ["x509_svid_ttl"]
    assert updated["x509_svid_ttl"] == 90
    assert updated["selectors"] == ["unix:gid:50", "unix:uid:1000"]  # the whole entry after it
    assert updated["uid"] == os.getuid()
    await ca.admin_call("DELETE", f"/v1/entries/{created['id']}")
    deleted = audit.change("entry.delete")
    assert deleted["parent_id"] == agent.spiffe_id
    assert deleted["pid"] == os.getpid()


async def test_token_ban_and_revocation_lines_name_target_and_reason_never_the_token(
    ca: RunningCa, agent: Agent, audit: AuditLines
) -> None:
    token = await ca.token()
    generated = audit.change("token.generate")
    assert generated["agent_id"] == token["agent_id"]
    assert generated["expires_at"] == token["expires_at"]
    assert generated["uid"] == os.getuid()
    await ca.admin_call("POST", "/v1/revocations", {"agent": agent.spiffe_id, "reason": "stolen"})
    revoked = audit.change("revoke.agent")
    assert revoked["target"] == agent.spiffe_id
    assert revoked["reason"] == "stolen"
    assert revoked["pid"] == os.getpid()
    banned = audit.change("agent.ban")  # revoking an agent bans it: same caller
    assert banned["agent_id"] == agent.spiffe_id
    assert banned["uid"] == os.getuid()
    everything = "\n".join(audit.text)
    assert token["token"] not in everything
    assert "PRIVATE KEY" not in everything


async def test_refused_admin_changes_are_audited(
    ca: RunningCa, agent: Agent, audit: AuditLines
) -> None:
    bad = {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/x", "parent_id": agent.spiffe_id,
           "selectors": ["nonsense"]}  # fmt: skip
    with pytest.raises((InvalidRequest, InvalidSelector)):
        await ca.admin_call("POST", "/v1/entries", bad)
    with pytest.raises(NotFound):
        await ca.admin_call("DELETE", "/v1/entries/no-such-entry")
    created = await ca.entry(agent)
    with pytest.raises(Conflict):
        await ca.admin_call("PATCH", f"/v1/entries/{created['id']}", {"hint": "x", "revision": 999})
    refused = audit.lines("audit.admin.refused")
    assert [r["error"] for r in refused] == [refused[0]["error"], "not_found", "conflict"]
    assert refused[0]["error"] in {"invalid_request", "invalid_selector"}
    assert refused[0]["action"] == "POST /v1/entries"
    assert refused[1]["target"] == "no-such-entry"
    assert "revision" in refused[2]["detail"]
    for line in refused:
        assert line["uid"] == os.getuid()
        assert line["pid"] == os.getpid()
    # twins: an accepted change is not a refusal, and a read that finds nothing changes nothing
    assert [c["action"] for c in audit.lines("audit.admin.change")] == ["entry.create"]
    with pytest.raises(NotFound):
        await ca.admin_call("GET", "/v1/entries/no-such-entry")
    assert len(audit.lines("audit.admin.refused")) == 3


async def test_the_cli_process_is_named_as_the_caller(ca: RunningCa, audit: AuditLines) -> None:
    sock = str(ca.server.options.admin_socket)
    process = await asyncio.to_thread(
        subprocess.Popen,
        [*CLI, "--socket", sock, "token", "generate", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0, err
    line = audit.change("token.generate")
    assert line["pid"] == process.pid
    assert line["pid"] != os.getpid()
    assert line["uid"] == os.getuid()
    assert json.loads(out)["token"] not in "\n".join(audit.text)


async def test_root_rotation_lines_name_both_roots_and_the_caller(
    ca: RunningCa, audit: AuditLines
) -> None:
    prepared = await ca.admin_call("POST", "/v1/root-rotation/step", {})
    state = prepared["state"]
    line = audit.change("root_rotation.prepare")
    assert line["old_root"] == state["old_root"]
    assert line["new_root"] == state["new_root"]
    assert line["bundle_sequence"] == state["target_sequence"]
    assert line["uid"] == os.getuid()
    # a refused step (--new during it) is audited as refused, and changes nothing
    with pytest.raises(Conflict):
        await ca.admin_call("POST", "/v1/root-rotation/step", {"new": True})
    refused = audit.lines("audit.admin.refused")
    assert [r["path"] for r in refused] == ["/v1/root-rotation/step"]
    assert refused[0]["error"] == "conflict"
    assert len(audit.lines("audit.admin.change")) == 1
