#!/usr/bin/env python3
"""A lab run's campaign multipath traces (OUT/mda.jsonl, `tracemesh mda --json` of a
campaign with multipath rounds) against the oracle's ECMP branches.

usage: check_mda_campaign.py SCENARIO OUT_DIR LAB_BIN [--min-share 0.99] [--json]

For every stored multipath trace whose run lies inside one routing window of the oracle
(its start, relative to OUT/lab.json's t0, at least --margin seconds, default 2, from
every event edge after it), the (vantage, target) pair's branches in that window
(`LAB_BIN check --json SCENARIO`'s `ecmp_paths`, or its single path when it has one) must
each have answered at their TTL, except hops the oracle marks may-be-silent. Prints the
share of traces that found every branch, exits 1 below --min-share (or with no trace to
judge).
"""

import ipaddress
import json
import subprocess
import sys
import tomllib


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    scen, out, lab = args[:3]
    min_share, margin, as_json = 0.99, 2.0, False
    rest = args[3:]
    while rest:
        flag = rest.pop(0)
        if flag == "--min-share":
            min_share = float(rest.pop(0))
        elif flag == "--margin":
            margin = float(rest.pop(0))
        elif flag == "--json":
            as_json = True
        else:
            print(f"error: unknown flag {flag}", file=sys.stderr)
            return 2
    with open(scen, "rb") as f:
        s = tomllib.load(f)
    oracle = json.loads(
        subprocess.run([lab, "check", "--json", scen], check=True, capture_output=True).stdout
    )
    t0 = json.load(open(f"{out}/lab.json"))["t0"]
    names = {}
    for t in s.get("target", []):
        probes = t.get("probe") or [str(next(ipaddress.ip_network(t["prefix"]).hosts()))]
        for p in probes:
            names[str(ipaddress.ip_address(p))] = t["name"]
    for v in s.get("vantage", []):
        names[v["addr"]] = v["name"]
    edges = sorted({float(e[k]) for e in s.get("event", []) for k in ("start_s", "end_s")})
    ecmp = oracle.get("ecmp_paths", {})
    windows = sorted(float(k) for k in ecmp)
    results, skipped = [], 0
    for line in open(f"{out}/mda.jsonl"):
        r = json.loads(line)
        at = r["start"] - t0
        if any(at - margin < e < at + margin for e in edges) or not windows:
            skipped += 1
            continue
        window = max([w for w in windows if w <= at] or [windows[0]])
        key = next(k for k in ecmp if float(k) == window)
        pair = f"{r['vantage']}>{names.get(r['dst'], r['dst'])}"
        branches = ecmp[key].get(pair)
        if branches is None:
            paths = oracle.get("paths", {})
            branches = [paths[k][pair] for k in paths if float(k) == window and pair in paths[k]]
        got = {(h["ttl"], i["addr"]) for h in r["hops"] for i in h["interfaces"]}
        want = {
            (h[0], h[1])
            for b in branches
            for h in b
            if h[1] not in (None, "DEST") and not h[4]
        }
        missing = sorted(want - got)
        results.append({"round": r["round"], "pair": pair, "probes": r["probes_sent"],
                        "branches": len(branches), "missing": missing})
    ok = sum(not x["missing"] for x in results)
    share = ok / len(results) if results else 0.0
    summary = {"scenario": s["name"], "traces": len(results), "found_all": ok, "share": share,
               "skipped_at_edges": skipped, "probes": sum(x["probes"] for x in results),
               "results": results}
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"{s['name']}: campaign MDA found every ECMP branch in {ok}/{len(results)} traces "
              f"= {share:.3f} ({skipped} at event edges skipped; {summary['probes']} probes)")
        for x in results:
            if x["missing"]:
                print(f"  round {x['round']} {x['pair']}: missing {x['missing']}")
    return 0 if results and share >= min_share else 1


if __name__ == "__main__":
    sys.exit(main())
