"""``s2s-ca token generate`` prints the agent's SPIFFE ID beside the token (the ``--parent-id``
of the agent's entries), in plain output and with ``--json``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from ca_harness import csr_pem, new_key
from test_admin_cli import TD, Served, https, s2s_ca, serve

AGENT_ID = re.compile(rf"spiffe://{re.escape(TD)}/s2s/agent/join_token/[A-Za-z0-9_-]+")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("token") / "ca"
    s2s_ca(data_dir, "init", "--trust-domain", TD)
    running = serve(data_dir)
    yield running
    assert running.stop() == 0


def test_plain_output_is_the_token_then_the_agent_id_and_expiry(served: Served) -> None:
    out = s2s_ca(served.data_dir, "token", "generate").stdout.splitlines()
    assert len(out) == 3, out
    token, agent_line, expiry_line = out
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token), token  # alone on the first line
    assert agent_line.startswith("agent SPIFFE ID: ")
    assert len(AGENT_ID.findall(agent_line)) == 1, agent_line
    assert "--parent-id" in agent_line
    assert expiry_line.startswith("expires: ")


def test_the_printed_id_is_the_one_the_agent_gets(served: Served) -> None:
    generated = json.loads(s2s_ca(served.data_dir, "token", "generate", "--json").stdout)
    assert AGENT_ID.fullmatch(generated["agent_id"])
    body = {"join_token": generated["token"], "csr": csr_pem(new_key())}
    status, attested = https(served, "POST", "/v1/agent/attest", body)
    assert status == 200, attested
    assert attested["spiffe_id"] == generated["agent_id"]
    # twin: the token is single use; the second attestation is refused
    status, _ = https(served, "POST", "/v1/agent/attest", body | {"csr": csr_pem(new_key())})
    assert status in (401, 403), status
