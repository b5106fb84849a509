"""Federated bundles against a real CA: ``s2s-ca bundle set|list|delete`` (with their refusals),
entries that federate (``--federates-with``, only with a trust domain whose bundle the CA holds;
the filter), and delivery to agents through the entries long-poll (only the bundles their entries
federate with; woken when one changes or goes away)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from ca_harness import TRUST_DOMAIN, Agent, RunningCa

from s2s.cli.ca import main as s2s_ca
from s2s.core.bundle import MAX_BUNDLE_BYTES, Bundle
from s2s.core.spiffe_id import TrustDomain
from s2s.testing import TestAuthority

pytestmark = pytest.mark.asyncio

OTHER = "other.test"


async def cli(ca: RunningCa, *args: str) -> int:
    return await asyncio.to_thread(s2s_ca, ["--socket", str(ca.server.options.admin_socket), *args])


async def cli_json(ca: RunningCa, capsys: Any, *args: str) -> Any:
    assert await cli(ca, *args, "--json") == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def bundle_file(tmp_path: Path, bundle: Bundle, name: str = "b.json") -> str:
    path = tmp_path / name
    path.write_bytes(bundle.encode())
    return str(path)


async def set_other(ca: RunningCa, capsys: Any, tmp_path: Path, bundle: Bundle) -> Any:
    path = bundle_file(tmp_path, bundle)
    return await cli_json(ca, capsys, "bundle", "set", "--trust-domain", OTHER, "--file", path)


async def test_bundle_set_list_delete(ca: RunningCa, capsys: Any, tmp_path: Path) -> None:
    other = TestAuthority(OTHER).bundle()
    record = await set_other(ca, capsys, tmp_path, other)
    assert record["trust_domain"] == OTHER
    assert record["source"] == "manual"
    assert record["sequence"] == 1
    assert (record["x509_authorities"], record["jwt_authorities"]) == (1, 1)
    assert Bundle.decode(TrustDomain.parse(OTHER), json.dumps(record["bundle"])) == other
    listed = await cli_json(ca, capsys, "bundle", "list")
    assert [r["trust_domain"] for r in listed] == [OTHER]
    assert await cli(ca, "bundle", "list") == 0
    assert OTHER in capsys.readouterr().out
    # one bundle itself, as a document to pass on, or its roots as PEM
    assert await cli(ca, "bundle", "list", "--trust-domain", OTHER) == 0
    assert Bundle.decode(TrustDomain.parse(OTHER), capsys.readouterr().out) == other
    assert await cli(ca, "bundle", "list", "--trust-domain", OTHER, "--format", "pem") == 0
    assert capsys.readouterr().out.encode() == other.x509_pem()
    assert await cli(ca, "bundle", "list", "--trust-domain", "absent.test") == 4
    capsys.readouterr()
    assert await cli(ca, "bundle", "delete", OTHER) == 0
    assert f"deleted {OTHER}" in capsys.readouterr().out
    assert await cli_json(ca, capsys, "bundle", "list") == []
    assert await cli(ca, "bundle", "delete", OTHER) == 4  # twin: nothing left to delete
    assert OTHER in capsys.readouterr().err


async def test_bundle_set_refusals(ca: RunningCa, capsys: Any, tmp_path: Path) -> None:
    good = bundle_file(tmp_path, TestAuthority(OTHER).bundle())
    # our own trust domain is never a federated one
    assert await cli(ca, "bundle", "set", "--trust-domain", TRUST_DOMAIN, "--file", good) == 2
    assert "own trust domain" in capsys.readouterr().err
    # a document holding another trust domain's keys (its root names third.test)
    wrong = bundle_file(tmp_path, TestAuthority("third.test").bundle(), "wrong.json")
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", wrong) == 2
    assert "third.test" in capsys.readouterr().err
    malformed = tmp_path / "bad.json"
    malformed.write_text('{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AAAA"]}]}')
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", str(malformed)) == 2
    assert "x5c" in capsys.readouterr().err
    not_json = tmp_path / "pem.txt"
    not_json.write_bytes(TestAuthority(OTHER).bundle_pem())
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", str(not_json)) == 2
    assert "JSON" in capsys.readouterr().err
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (MAX_BUNDLE_BYTES + 1))
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", str(huge)) == 2
    assert "larger than" in capsys.readouterr().err
    assert await cli(ca, "bundle", "set", "--trust-domain", "Not A Domain", "--file", good) == 2
    capsys.readouterr()
    # the API's own size check, for a client that sends a big document anyway
    with pytest.raises(Exception, match="larger than"):
        await ca.admin_call(
            "POST",
            "/v1/federation/bundles",
            {"trust_domain": OTHER, "bundle": " " * (MAX_BUNDLE_BYTES + 1)},
        )
    assert await cli_json(ca, capsys, "bundle", "list") == []  # nothing was stored
    # a PEM file of another trust domain's root, as SPIRE's bundle show -format pem prints
    wrong_pem = tmp_path / "third.pem"
    wrong_pem.write_bytes(TestAuthority("third.test").bundle_pem())
    set_pem = ["bundle", "set", "--trust-domain", OTHER, "--format", "pem", "--file"]
    assert await cli(ca, *set_pem, str(wrong_pem)) == 2
    assert "third.test" in capsys.readouterr().err
    assert await cli(ca, *set_pem, good) == 2  # JSON is not PEM
    capsys.readouterr()
    # twins: the good file is accepted, and its PEM form
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", good) == 0
    assert await cli(ca, *set_pem, str(not_json)) == 0
    capsys.readouterr()
    pem_record = (await cli_json(ca, capsys, "bundle", "list"))[0]
    assert (pem_record["x509_authorities"], pem_record["jwt_authorities"]) == (1, 0)


async def test_entries_federate_only_with_known_trust_domains(
    ca: RunningCa, capsys: Any, tmp_path: Path, agent: Agent
) -> None:
    base = ["entry", "create", "--parent-id", agent.spiffe_id, "--selector", "unix:uid:1"]
    sid = f"spiffe://{TRUST_DOMAIN}/fed"
    assert await cli(ca, *base, "--spiffe-id", sid, "--federates-with", OTHER) == 2
    assert "no federated bundle for other.test" in capsys.readouterr().err
    await set_other(ca, capsys, tmp_path, TestAuthority(OTHER).bundle())
    created = await cli_json(ca, capsys, *base, "--spiffe-id", sid, "--federates-with", OTHER)
    assert created["federates_with"] == [OTHER]
    # own trust domain refused (its bundle is always delivered)
    own = await cli(ca, *base, "--spiffe-id", sid + "2", "--federates-with", TRUST_DOMAIN)
    assert own == 2
    assert "own trust domain" in capsys.readouterr().err
    assert await cli(ca, *base, "--spiffe-id", sid + "3", "--federates-with", "bad domain") == 2
    capsys.readouterr()
    plain = await cli_json(ca, capsys, *base, "--spiffe-id", f"spiffe://{TRUST_DOMAIN}/plain")
    assert "federates_with" not in plain
    found = await cli_json(ca, capsys, "entry", "list", "--federates-with", OTHER)
    assert [e["id"] for e in found] == [created["id"]]
    assert len(await cli_json(ca, capsys, "entry", "list")) == 2  # twin: no filter
    cleared = await cli_json(ca, capsys, "entry", "update", created["id"], "--no-federation")
    assert "federates_with" not in cleared
    assert await cli_json(ca, capsys, "entry", "list", "--federates-with", OTHER) == []
    upd = await cli(ca, "entry", "update", created["id"], "--federates-with", "absent.test")
    assert upd == 2
    assert "absent.test" in capsys.readouterr().err


async def entries(agent: Agent, **query: Any) -> dict[str, Any]:
    status, body = await agent.call(
        "GET", "/v1/agent/entries", params={k: str(v) for k, v in query.items()}
    )
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def test_agents_get_the_bundles_their_entries_federate_with(
    ca: RunningCa, capsys: Any, tmp_path: Path
) -> None:
    authority = TestAuthority(OTHER)
    await set_other(ca, capsys, tmp_path, authority.bundle())
    fed, plain = await ca.attest(), await ca.attest()
    await ca.entry(fed, "/fed", federates_with=[OTHER])
    await ca.entry(plain, "/plain")
    got = await entries(fed)
    assert list(got["federated_bundles"]) == [OTHER]
    held = Bundle.decode(TrustDomain.parse(OTHER), json.dumps(got["federated_bundles"][OTHER]))
    assert held == authority.bundle()
    other_view = await entries(plain)
    assert other_view["federated_bundles"] == {}  # twin: its entry does not federate
    # a long-poll passing the federated revision is answered when the bundle changes
    rev, since = got["federated_revision"], got["revision"]
    poll = asyncio.create_task(entries(fed, since=since, wait=20, federated=rev))
    idle = asyncio.create_task(entries(plain, since=since, wait=1.5))
    await asyncio.sleep(0)  # let both polls start before the change
    rotated = dataclasses.replace(authority.bundle(), sequence=2)
    started = time.monotonic()
    path = bundle_file(tmp_path, rotated, "rotated.json")
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", path) == 0
    woke = await asyncio.wait_for(poll, 10)
    assert time.monotonic() - started < 5
    assert woke["federated_revision"] != rev
    assert woke["federated_bundles"][OTHER]["spiffe_sequence"] == 2
    assert (await idle)["federated_bundles"] == {}
    # the same content again wakes no one: the poll runs to its wait
    rev = woke["federated_revision"]
    assert await cli(ca, "bundle", "set", "--trust-domain", OTHER, "--file", path) == 0
    quiet = await entries(fed, since=since, wait=0.5, federated=rev)
    assert quiet["federated_revision"] == rev
    # a deleted bundle wakes the poll and is gone from the answer
    poll = asyncio.create_task(entries(fed, since=since, wait=20, federated=rev))
    await asyncio.sleep(0)
    assert await cli(ca, "bundle", "delete", OTHER) == 5  # refused: an entry federates with it
    assert "1 entry federates with other.test" in capsys.readouterr().err
    assert not poll.done()
    assert await cli(ca, "bundle", "delete", OTHER, "--force") == 0
    gone = await asyncio.wait_for(poll, 10)
    assert gone["federated_bundles"] == {}
