#!/usr/bin/env python3
"""Scrapes a coordinator's and an agent's /metrics, parses them with prometheus-client's
text parser (the reference implementation of the format), and checks the values against
the run: traces ingested == traces stored, one session up, probes sent and answered.
Prints one JSON line with the figures; exits 1 with the reasons when a check fails."""

import argparse
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode()
    if not ctype.startswith("text/plain"):
        raise SystemExit(f"{url}: content type {ctype!r}")
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            samples[key] = s.value
    return samples, types


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--stored", type=int, required=True, help="traces the store holds")
    ap.add_argument("--expect-traces", type=int, required=True)
    ap.add_argument("--dashboard", help="Grafana dashboard JSON whose queries must name only exported metrics")
    a = ap.parse_args()
    c, ct = scrape(a.coordinator)
    g, gt = scrape(a.agent)
    fail = []

    def need(cond, what):
        if not cond:
            fail.append(what)

    ingested = c.get("tracemesh_traces_ingested_total")
    need(ct.get("tracemesh_traces_ingested") == "counter", "traces_ingested is not a counter")
    need(ingested == a.stored, f"coordinator ingested {ingested} traces, the store holds {a.stored}")
    need(a.stored >= a.expect_traces, f"{a.stored} traces stored, expected {a.expect_traces}")
    need(c.get("tracemesh_sessions") == 1, f"sessions {c.get('tracemesh_sessions')}, expected 1")
    need(ct.get("tracemesh_ingest_latency_seconds") == "histogram", "ingest latency is not a histogram")
    need(c.get("tracemesh_ingest_latency_seconds_count", 0) >= 1, "no ingest latency observed")
    need(c.get('tracemesh_ingest_latency_seconds_bucket{le="+Inf"}') == c.get("tracemesh_ingest_latency_seconds_count"),
         "ingest latency +Inf bucket != count")
    need(c.get("tracemesh_dispatch_seconds_count", 0) >= 1, "no campaign dispatch observed")
    need(c.get("tracemesh_store_size_bytes", 0) > 0, "store size 0")
    need("tracemesh_diversions_open" in c, "no diversions_open gauge")
    sent = g.get("tracemesh_agent_probes_sent_total", 0)
    replies = g.get("tracemesh_agent_replies_total", 0)
    need(sent >= a.expect_traces, f"agent sent {sent} probes for {a.expect_traces} traces")
    need(replies >= a.expect_traces, f"agent got {replies} replies")
    need(g.get("tracemesh_agent_traces_done_total") == a.stored,
         f"agent finished {g.get('tracemesh_agent_traces_done_total')} traces, the store holds {a.stored}")
    need(g.get('tracemesh_agent_session_state{state="up"}') == 1, "agent session not up")
    need(g.get("tracemesh_agent_spool_depth") == 0, f"spool depth {g.get('tracemesh_agent_spool_depth')} after acks")
    need(g.get("tracemesh_agent_rate_limit_pps", 0) > 0, "no rate limit")
    need("tracemesh_agent_clock_offset_seconds" in g, "no clock offset")
    need(gt.get("tracemesh_agent_drops") == "counter", "drops is not a counter")
    dashboard_metrics = 0
    if a.dashboard:
        import re
        with open(a.dashboard) as f:
            dash = json.load(f)
        exported = {k.split("{")[0] for k in list(c) + list(g)}
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        named = {m for e in exprs for m in re.findall(r"tracemesh_[a-z_]+", e)}
        dashboard_metrics = len(named)
        missing = sorted(named - exported)
        need(not missing, f"dashboard queries metrics nobody exports: {missing}")
    out = {
        "dashboard_metrics": dashboard_metrics,
        "traces_stored": a.stored,
        "coordinator_traces_ingested": ingested,
        "coordinator_traces_duplicate": c.get("tracemesh_traces_duplicate_total"),
        "sessions": c.get("tracemesh_sessions"),
        "ingest_batches": c.get("tracemesh_ingest_latency_seconds_count"),
        "ingest_latency_mean_ms": round(1e3 * c.get("tracemesh_ingest_latency_seconds_sum", 0)
                                        / max(1, c.get("tracemesh_ingest_latency_seconds_count", 1)), 3),
        "dispatches": c.get("tracemesh_dispatch_seconds_count"),
        "store_size_bytes": c.get("tracemesh_store_size_bytes"),
        "agent_probes_sent": sent,
        "agent_replies": replies,
        "agent_traces_done": g.get("tracemesh_agent_traces_done_total"),
        "agent_drops": {k: v for k, v in g.items() if k.startswith("tracemesh_agent_drops_total")},
        "agent_spool_depth": g.get("tracemesh_agent_spool_depth"),
        "agent_clock_offset_s": g.get("tracemesh_agent_clock_offset_seconds"),
        "agent_session_up": g.get('tracemesh_agent_session_state{state="up"}'),
        "ok": not fail,
    }
    print(json.dumps(out))
    for f in fail:
        print(f"check_metrics: {f}", file=sys.stderr)
    sys.exit(1 if fail else 0)


if __name__ == "__main__":
    main()
