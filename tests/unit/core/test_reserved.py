"""The paths s2s reserves for itself: one value each, and the predicates built on them."""

from __future__ import annotations

import pytest

from s2s.core import reserved
from s2s.core.errors import InvalidSpiffeId
from s2s.core.spiffe_id import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
OTHER = TrustDomain("other.org")


def test_values_are_pinned() -> None:
    # Agents and CA servers in the field hold SVIDs with these paths; changing one strands them.
    assert reserved.RESERVED_PATH == "/s2s"
    assert reserved.AGENT_PATH_PREFIX == "/s2s/agent/"
    assert reserved.JOIN_TOKEN_AGENT_PATH_PREFIX == "/s2s/agent/join_token/"
    assert reserved.CA_PATH_PREFIX == "/s2s/ca/"


def test_every_prefix_is_under_the_reserved_path() -> None:
    for prefix in (
        reserved.AGENT_PATH_PREFIX,
        reserved.JOIN_TOKEN_AGENT_PATH_PREFIX,
        reserved.CA_PATH_PREFIX,
    ):
        assert prefix.startswith(reserved.RESERVED_PATH + "/")
        assert reserved.is_reserved(TD.id(prefix + "x"))


def test_ids_built_from_the_prefixes() -> None:
    agent = reserved.join_token_agent_id(TD, "a1")
    assert agent == SpiffeId.parse("spiffe://example.org/s2s/agent/join_token/a1")
    assert reserved.ca_server_id(TD, "ca-0") == SpiffeId.parse("spiffe://example.org/s2s/ca/ca-0")
    assert reserved.is_agent_id(agent, TD)
    assert reserved.is_ca_id(reserved.ca_server_id(TD, "ca-0"), TD)


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://example.org/s2s",
        "spiffe://example.org/s2s/x",
        "spiffe://example.org/s2s/agent/join_token/a1",
        "spiffe://example.org/s2s/ca/ca-0",
    ],
)
def test_reserved_ids(text: str) -> None:
    assert reserved.is_reserved(SpiffeId.parse(text))


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://example.org",
        "spiffe://example.org/s2sx/app",
        "spiffe://example.org/S2S/agent/x",
        "spiffe://example.org/app/s2s",
    ],
)
def test_ids_outside_the_reserved_path(text: str) -> None:
    assert not reserved.is_reserved(SpiffeId.parse(text))


@pytest.mark.parametrize(
    ("text", "td"),
    [
        ("spiffe://other.org/s2s/agent/join_token/a1", TD),  # another trust domain's agent
        ("spiffe://example.org/s2s/agentx/a1", TD),
        ("spiffe://example.org/s2s/agent", TD),
        ("spiffe://example.org/s2s/ca/ca-0", TD),
        ("spiffe://example.org/billing", TD),
        ("spiffe://example.org/s2s/agent/join_token/a1", OTHER),
    ],
)
def test_not_agent_ids(text: str, td: TrustDomain) -> None:
    assert not reserved.is_agent_id(SpiffeId.parse(text), td)


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://other.org/s2s/ca/ca-0",
        "spiffe://example.org/s2s/ca",
        "spiffe://example.org/s2s/cax/ca-0",
        "spiffe://example.org/s2s/agent/join_token/a1",
    ],
)
def test_not_ca_ids(text: str) -> None:
    assert not reserved.is_ca_id(SpiffeId.parse(text), TD)


def test_a_replica_name_is_one_segment() -> None:
    with pytest.raises(InvalidSpiffeId):
        reserved.ca_server_id(TD, "a/b")
