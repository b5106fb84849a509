"""What a soak run does: lifetimes, call rate, the workloads and the timeline of events.

Two shapes: the long form (``make soak``, 30 minutes unless ``--duration``) and the short form
(``--short``, the CI test: about three minutes of traffic, still crossing an intermediate
rotation, a whole ``rotate-root``, every revocation kind and a CA replica killed with SIGKILL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["BOUNDS", "Plan", "WorkloadSpec", "long_plan", "short_plan"]

TRUST_DOMAIN: Final = "soak.s2s.test"

# Seconds from `s2s-ca revoke` returning to the last acceptance a verifier may still make, per
# path. etcd and the CA long-poll carry a record within a second; the CRL path waits for the CA to
# re-sign the CRL and the agent to fetch it and push it (its refresh loop).
BOUNDS: Final = {"etcd": 2.0, "ca": 2.0, "crl": 5.0, "jwt": 2.0}


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One workload: its name, agent, uid offset and revocation path (crl, etcd or ca)."""

    name: str
    agent: str
    path: str
    jwt: bool  # serves JWT-SVIDs (crl workloads check them against the agent's revocations)


WORKLOADS: Final = (
    WorkloadSpec("alpha", "a", "crl", jwt=True),
    WorkloadSpec("bravo", "b", "etcd", jwt=True),
    WorkloadSpec("charlie", "a", "ca", jwt=True),
    WorkloadSpec("delta", "b", "crl", jwt=True),
    WorkloadSpec("spare", "c", "etcd", jwt=True),  # its agent is revoked mid-run
)
AGENTS: Final = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a run needs to know before it starts (times in seconds)."""

    duration: float
    short: bool
    svid_ttl: int = 20
    agent_svid_ttl: int = 30
    server_svid_ttl: int = 30
    intermediate_ttl: int = 120  # prepared at 1/2, active at 1/6 left: a new one every ~100 s
    jwt_key_ttl: int = 120
    interval: float = 0.5  # seconds between a client's rounds to one server
    revoke_every: float = 5.0
    first_uid: int = 64100
    trust_domain: str = TRUST_DOMAIN
    workloads: tuple[WorkloadSpec, ...] = WORKLOADS
    # (seconds after traffic starts, event name); see scenario.Scenario for each event
    events: tuple[tuple[float, str], ...] = ()

    @property
    def max_event(self) -> float:
        return max((t for t, _ in self.events), default=0.0)


def short_plan() -> Plan:
    """The CI form: ~3 minutes of traffic on a 2-core machine."""
    return Plan(
        duration=170.0,
        short=True,
        intermediate_ttl=60,  # a new intermediate every ~50 s per replica
        jwt_key_ttl=60,
        interval=0.6,
        revoke_every=6.0,
        events=(
            (20.0, "kill-ca"),
            (28.0, "restart-ca"),
            (35.0, "rotate-root"),
            (60.0, "revoke-agent"),
        ),
    )


def long_plan(duration: float) -> Plan:
    """The ``make soak`` form: every fault, repeated through the run."""
    events: list[tuple[float, str]] = [(40.0, "revoke-agent")]
    cycle = (
        (30.0, "kill-ca"),
        (40.0, "restart-ca"),
        (70.0, "stop-etcd"),
        (85.0, "start-etcd"),
        (110.0, "restart-agent"),
        (140.0, "restart-workload"),
        (170.0, "ca-outage"),  # both replicas down for ca_outage seconds
        (200.0, "rotate-root"),
    )
    period = 300.0
    start = 0.0
    while start + 30.0 < duration - 60.0:
        events += [(start + t, name) for t, name in cycle if start + t < duration - 60.0]
        start += period
    return Plan(duration=duration, short=False, events=tuple(sorted(events)))
