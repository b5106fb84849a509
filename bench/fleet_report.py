"""The fleet benchmark's tables (Markdown) and their place in bench/RESULTS.md (section Fleet)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Fleet (`python -m bench.fleet`)"
FAULTS_HEADING = "## Fleet faults (`python -m bench.fleet --faults`)"


def _ms(seconds: float) -> str:
    """Milliseconds; a cost below 0 (idle and renewals subtracted from a noisy reading) is
    shown as below the noise, not as a number."""
    if math.isnan(seconds):
        return "-"
    return "<0 (noise)" if seconds < 0 else f"{seconds * 1000:,.2f}"


def _lat(p: Any) -> str:
    p50, p99, n = p
    return "-" if not n else f"{p50 * 1000:,.0f} / {p99 * 1000:,.0f}"


def render(m: dict[str, Any]) -> str:
    shape, base = m["shape"], {int(k): v for k, v in m["baseline"].items()}
    lines = [
        HEADING,
        "",
        f"Run {m['date']}, {m.get('form') or ('--quick' if m['quick'] else 'full form')},"
        f" {m['wall_seconds']:.0f} s"
        f" wall. {shape['agents']} simulated agents ({shape['processes']} processes, one aiohttp"
        f" session and agent SVID each, real mTLS to the agent API) with {shape['entries']} live"
        f" entries each; the rest of the registry is dormant entries (a parent nobody runs),"
        " and the store holds registry/10 revoked JWT ids, so the revocation set every"
        " revocation long-poll answer carries grows with the registry."
        f" SVID lifetime {shape['ttl']} s to compress time (renewal at half-life +-10%: the fleet"
        f" asks {shape['agents'] * shape['entries'] / (shape['ttl'] / 2):.1f} renewals/s, as"
        f" {shape['agents'] * shape['entries'] * 300 // shape['ttl']:,} workloads with 5-minute"
        " SVIDs would). A 3-member etcd cluster on loopback; CA replicas are `s2s-ca serve`"
        " processes; the machine has 2 cores shared with everything else (CA, etcd, agents and"
        " other engineers' work), so latencies include run-queue waits.",
        "",
        "In-process baseline (same run, `Issuer.sign_x509_svids` on SQLite, process CPU): "
        + ", ".join(f"{_ms(v)} ms per SVID at batch {k}" for k, v in sorted(base.items()))
        + ".",
        "",
        "**Cost per CA replica** (CPU from /proc/PID/stat; renewals = that replica's"
        ' `s2s_ca_svids_issued_total{kind="x509"}`; idle = CPU with no agent connected (its'
        " loops, etcd watches, our /metrics scrapes); all-in = CPU / renewals; marginal = (CPU -"
        " idle) / renewals, compared with the in-process cost at the fleet's batch size. The"
        " simulated agents run the real agent's loops, so marginal also carries every agent's"
        " background calls (the entries and revocation long-polls answered at least every 30 s,"
        " the bundle fetched every 30 s): an upper bound of a renewal's own cost. Per change /"
        " revocation: CPU beyond idle and the renewals signed meanwhile)",
        "",
        "| registry | replicas | replica | idle CPU % | renewals/s | CPU ms/renewal all-in |"
        " marginal | x in-process | CPU ms/entry change | CPU ms/revocation | RSS MB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in m["configs"]:
        s, ch, rv = c["steady"], c["changes"], c["revocations"]
        ref = base.get(max(1, round(s["batch"])), base[1])
        for name in s["cpu"]:
            rate = s["x509"][name] / s["seconds"]
            per = s["cpu_per_renewal"][name]
            lines.append(
                f"| {c['size']:,} | {c['replicas']} | {name} | {c['idle'][name] * 100:.1f} |"
                f" {rate:.1f} | {_ms(s['cpu_per_renewal_all'][name])} | {_ms(per)} |"
                f" {per / ref:.2f} | {_ms(ch['cpu_per_change'].get(name, math.nan))} |"
                f" {_ms(rv['cpu_per_revocation'].get(name, math.nan))} |"
                f" {s['rss_mb'].get(name, math.nan):.0f} |"
            )
    lines += [
        "",
        "**Fan-out and etcd** (latencies p50 / p99 in ms; an entry change is the creation of"
        " an entry for one random simulated agent; long-poll answers per change: how many"
        " agents the change woke, fleet-wide)",
        "",
        "| registry | replicas | phase | seconds | entry change -> agent |"
        " long-poll answers/change | revocation -> each subscriber | -> all N | etcd req/s |"
        " etcd KB/s | renewals failed / SVIDs expired |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in m["configs"]:
        rows: list[tuple[str, Any, Any, Any]] = [("steady", c["steady"], None, None)]
        rows.append(("entry changes", c["changes"], c["changes"], None))
        rows.append(("revocations", c["revocations"], None, c["revocations"]))
        if "failover" in c:
            rows.append(("killed replica: one SVID lifetime", c["failover"], None, None))
            rows.append(("killed replica: entry changes", c["after_changes"],
                         c["after_changes"], None))  # fmt: skip
            rows.append(("killed replica: revocations", c["after_revocations"], None,
                         c["after_revocations"]))  # fmt: skip
        for phase, d, ch, rv in rows:
            change = _lat(ch["latency"]) if ch else "-"
            answers = f"{ch['answers_per_change']:.0f}" if ch else "-"
            each = f"{_lat(rv['latency'])} (n={c['agents']})" if rv else "-"
            every = _lat(rv["to_all"]) if rv else "-"
            fleet = d["fleet"]
            lines.append(
                f"| {c['size']:,} | {c['replicas']} | {phase} | {d['seconds']:.0f} | {change} |"
                f" {answers} | {each} | {every} | {d['etcd_rps']:,.0f} |"
                f" {d['etcd_bps'] / 1024:,.0f} |"
                f" {fleet.get('renew_failures', 0):.0f} / {fleet.get('expired', 0):.0f} |"
            )
    killed = [c for c in m["configs"] if "failover" in c]
    if killed:
        lines += [
            "",
            "**Replica killed mid-run** (SIGKILL of the last replica, then one whole SVID lifetime"
            " on the survivors; JWT-SVIDs minted throughout)",
            "",
            "| registry | replicas | killed | renewals | failed attempts (retried) |"
            " SVIDs expired | JWT-SVIDs/s before |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
    for c in killed:
        f = c["failover"]["fleet"]
        lines.append(
            f"| {c['size']:,} | {c['replicas']} | {c['failover']['killed']} |"
            f" {f.get('renewals', 0):,.0f} | {f.get('renew_failures', 0):,.0f} |"
            f" {f.get('expired', 0):,.0f} | {c['jwt']['jwt_per_s']:.1f} |"
        )
    lines += _growth(m["configs"])
    lines += ["", _reading(m)]
    if max(c["size"] for c in m["configs"]) < 100_000:
        lines.append("The 100k registry was not run here (`--sizes 1000,10000,100000`).")
    fills = ", ".join(
        f"{c['size']:,}: {c['fill_seconds']:.0f} s" for c in m["configs"] if c["replicas"] == 1
    )
    lines += [
        "",
        "Registry fill (straight into etcd in transactions of 50 entries or 100 revocations,"
        f" 4 at a time): {fills}.",
    ]
    total_expired = sum(c["fleet_total"].get("expired", 0) for c in m["configs"])
    retries = sum(c.get("admin_retries", 0) for c in m["configs"])
    unattested = sum(c["fleet_total"].get("unattested", 0) for c in m["configs"])
    lines += [
        "",
        f"Simulated agents that could not attest: {unattested:.0f}."
        f" SVIDs expired before their replacement, whole run: {total_expired:.0f}. Admin calls"
        f" of the benchmark retried after an etcd timeout: {retries}.",
        "",
    ]
    return "\n".join(lines)


def _reading(m: dict[str, Any]) -> str:
    """What the run shows, from its own figures."""
    configs = m["configs"]
    agents = m["shape"]["agents"]
    answers = [c["changes"]["answers_per_change"] for c in configs]
    base = {int(k): v for k, v in m["baseline"].items()}
    ratios = []
    for c in configs:
        ref = base.get(max(1, round(c["steady"]["batch"])), base[1])
        ratios += [v / ref for v in c["steady"]["cpu_per_renewal"].values() if not math.isnan(v)]
    total = {k: sum(c["fleet_total"].get(k, 0) for c in configs)
             for k in ("entry_answers", "entry_deltas", "revocation_answers",
                       "revocation_deltas", "crl_fetches")}  # fmt: skip
    text = (
        "Reading: the simulated agents ask as the real agent does (`delta=1` on both"
        f" long-polls once synced): {_share(total['entry_deltas'], total['entry_answers'])} of"
        " the entries answers and"
        f" {_share(total['revocation_deltas'], total['revocation_answers'])} of the revocation"
        f" answers were deltas. An entry change woke {min(answers):.1f}-{max(answers):.1f}"
        f" entries long-polls of the {agents} agents"
        + (
            ": every held poll, the agents the change does not concern with an empty delta."
            if max(answers) > 0.5 * agents and agents > 2
            else " (the agent it concerns; a held poll goes on waiting through others' changes)."
        )
        + " Each revocation also"
        " makes every agent fetch the CRLs once"
        f" ({total['crl_fetches']:,.0f} CRL fetches in the run), as the real agent does."
    )
    if ratios:
        text += (
            f" Marginal CPU per renewal: {min(ratios):.1f}-{max(ratios):.1f}x the in-process"
            " issuance."
        )
    commits: dict[str, list[str]] = {}
    for c in configs:
        where = f"{c['size']:,} x {c['replicas']}"
        commits.setdefault(c.get("commit") or m.get("commit", ""), []).append(where)
    if len(commits) > 1:
        text += (
            " Code measured: "
            + "; ".join(f"commit {k or '?'} ({', '.join(v)})" for k, v in commits.items())
            + "."
        )
    elif m.get("commit"):
        text += f" Code measured: commit {m['commit']}."
    return text


def _share(part: float, whole: float) -> str:
    return "-" if not whole else f"{part / whole:.0%}"


def _mean(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _growth(configs: list[dict[str, Any]]) -> list[str]:
    """How the per-event costs grow from the smallest to the largest registry, per replica
    count (the mean over replicas): the input for incremental updates."""
    out: list[str] = []
    for replicas in sorted({c["replicas"] for c in configs}):
        same = sorted((c for c in configs if c["replicas"] == replicas), key=lambda c: c["size"])
        if len(same) < 2:
            continue
        small, large = same[0], same[-1]
        figures = []
        for label, phase, key in (
            ("CPU per entry change", "changes", "cpu_per_change"),
            ("CPU per revocation", "revocations", "cpu_per_revocation"),
            ("marginal CPU per renewal", "steady", "cpu_per_renewal"),
        ):
            a = _mean(small[phase][key].values())
            b = _mean(large[phase][key].values())
            ratio = f"x{b / a:.1f}" if a > 0 and b > 0 else "ratio not measurable"
            figures.append(f"{label} {_ms(a)} -> {_ms(b)} ms ({ratio})")
        lat = (small["changes"]["latency"][0], large["changes"]["latency"][0])
        figures.append(f"entry change p50 {lat[0] * 1000:,.0f} -> {lat[1] * 1000:,.0f} ms")
        out.append(
            f"- {replicas} replica(s), registry {small['size']:,} -> {large['size']:,}: "
            + "; ".join(figures)
            + "."
        )
    if out:
        out = ["", "**Growth with the registry size** (mean over replicas)", "", *out]
    return out


def render_faults(m: dict[str, Any], *, heading: bool = True) -> str:
    """The herd and etcd-slow tables (``python -m bench.fleet --faults``); without ``heading``
    a further run under the same section."""
    shape, c = m["shape"], m["configs"][0]
    h = c["herd"]
    limits = h["limits"]
    failed = h["failed"]
    lines = [
        *(
            [FAULTS_HEADING, ""]
            if heading
            else ["### " + f"{shape['agents']} simulated agents", ""]
        ),
        f"Run {m['date']}, {m['form']}, {m['wall_seconds']:.0f} s wall, registry {c['size']:,},"
        f" {c['replicas']} CA replica(s), {shape['agents']} simulated agents (the real agent's"
        f" `SvidCache`, `CaRevocationFeed` and `RevocationFollower` over `CaClient`) with"
        f" {shape['entries']} entries each, SVID lifetime {shape['ttl']} s. The replicas reach"
        " the 3-member etcd cluster through a delay proxy (`bench/delay_proxy.py`, one per"
        " member)." + (f" Code measured: commit {m['commit']}." if m.get("commit") else ""),
        "",
        "**Thundering herd**: every replica killed (SIGKILL) and started again at once on its"
        " port; every agent's long-polls break together and its loops retry under the agent's"
        " own backoff (entries, renewals, CRLs: 0.5 s doubling to 30 s, full jitter; revocation"
        " feed: 0.05 s doubling to 2 s, equal jitter). Connections: the CA side of established"
        " TCP connections, sampled every 50 ms; long-polls: `s2s_ca_entry_long_polls`, every"
        " 0.5 s; requests/s: `s2s_ca_http_requests_total` over 3 s before the kill and per"
        " 0.5 s after it. Times are counted from the replica being up again.",
        "",
        "| requests/s before | peak, first 10 s / whole lifetime | connections open before |"
        " peak after (limit) | long-polls peak (limit) | CA down s |"
        " every agent back, p50 / p99 / last s | CA error answers | failed calls: entries /"
        " revocations / renewals | full answers: entries / revocations | CA CPU s until all"
        " back | SVIDs expired |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {h['steady_requests_per_s']:.0f} | {h['peak_requests_first_10s']:.0f} /"
        f" {h['peak_requests_per_s']:.0f} | {h['open_before']} | {h['peak_connections']}"
        f" ({limits['max_connections']:,};"
        f" per address {limits['max_connections_per_ip']:,}) | {h['peak_long_polls']:.0f}"
        f" ({limits['max_long_polls']:,}) | {h['down_seconds']:.1f} |"
        f" {_sec(h['back_after'][0])} / {_sec(h['back_after'][1])} /"
        f" {_sec(h['all_back_after'])} ({h['back']}/{h['agents']}) |"
        f" {h['ca_error_answers']:.0f} | {failed['entry_failures']:.0f} /"
        f" {failed['revocation_failures']:.0f} / {failed['renew_failures']:.0f} |"
        f" {h['entry_full_answers']:.0f} / {h['revocation_full_answers']:.0f} |"
        f" {h['cpu_until_all_back']:.1f} | {h['expired']:.0f} |",
        "",
        "**etcd slow**: each chunk between the replicas and etcd held D ms each way (a round"
        " trip gains 2D). Renewal latency is the agents' `POST /v1/agent/x509` calls as they"
        " see them during the steady phase; the burst is"
        f" {BURST_AGENTS_NOTE} signing one CSR after another for 5 s; entry changes as in the"
        " Fleet table.",
        "",
        "| etcd +D ms | renewal call p50 / p99 ms (n) | renewals/s (asked) | burst SVIDs/s |"
        " entry change -> agent p50 / p99 ms | changes missed | renewals failed | SVIDs"
        " expired |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    asked = shape["agents"] * shape["entries"] / (shape["ttl"] / 2)
    for d in c["slow"]:
        issue = d["issue"]
        lines.append(
            f"| {d['delay_ms']} | {_lat(issue)} ({issue[2]}) | {d['renewals_per_s']:.1f}"
            f" ({asked:.1f}) | {d['burst_per_s']:.0f} | {_lat(d['change_latency'])} |"
            f" {d['changes_missed']} | {d['renew_failures']:.0f} | {d['expired']:.0f} |"
        )
    total = c["fleet_total"]
    lines += [
        "",
        f"Whole run: {total.get('renewals', 0):,.0f} SVIDs renewed, {total.get('expired', 0):.0f}"
        f" expired before their replacement, {total.get('crashed', 0):.0f} simulated agents"
        f" stopped, {total.get('unattested', 0):.0f} could not attest (their join token spent"
        " by an attempt whose answer was lost).",
        "",
    ]
    return "\n".join(lines)


BURST_AGENTS_NOTE = "8 agents per worker process"


def _sec(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.1f}"


def write_results(text: str, path: Path = RESULTS, heading: str = HEADING) -> None:
    """Replace the section ``heading`` of RESULTS.md (or append it)."""
    current = path.read_text()
    pattern = re.compile(re.escape(heading) + r".*?(?=\n## |\Z)", re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: text.rstrip("\n") + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(updated)
