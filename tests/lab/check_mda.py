#!/usr/bin/env python3
"""MDA in the lab: every ECMP branch the oracle knows, found by `trace --mda`.

usage: check_mda.py SCENARIO LAB_BIN AGENT_BIN [--also SCENARIO]... [--confidence 99] [--proto udp|tcp|icmp] [--min-share 0.99] [--cookie N] [--json]

Runs `LAB_BIN check --json SCENARIO` for the oracle's `ecmp_paths` (the same as
`shared/tools/scenario.py --json`), builds the emulated internet with `LAB_BIN emulate`,
and from each vantage's namespace runs `AGENT_BIN trace --mda` (UDP by default: source
ports vary; the lab hashes ICMP's checksum too, so --proto icmp checks that variation)
toward every probe address of every target. A (pair, address) counts as found when every
branch's hops that cannot be silent (the oracle's may_be_silent flag: rate limits) answered
at their TTL in the MDA's interfaces. Prints the share of pairs with ECMP branches found
whole and exits 1 below --min-share; with --also, over every scenario's pairs together.
--cookie pins the agent's flows (TRACEMESH_COOKIE): a stopping rule at 99 % per hop still
misses a branch now and then on random flows, and a gate on pinned flows gives the same
verdict on every run.
Needs root (namespaces); probes stay inside the lab.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time
import tomllib


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    scen, lab, agent = args[:3]
    scens = [scen]
    conf, min_share, as_json, proto, cookie = "99", 0.99, False, "udp", None
    rest = args[3:]
    while rest:
        flag = rest.pop(0)
        if flag == "--confidence":
            conf = rest.pop(0)
        elif flag == "--min-share":
            min_share = float(rest.pop(0))
        elif flag == "--proto":
            proto = rest.pop(0)
        elif flag == "--also":
            scens.append(rest.pop(0))
        elif flag == "--cookie":
            cookie = rest.pop(0)
        elif flag == "--json":
            as_json = True
        else:
            print(f"error: unknown flag {flag}", file=sys.stderr)
            return 2
    summaries = []
    for sc in scens:
        summary = run_one(sc, lab, agent, conf, proto, cookie)
        if summary is None:
            return 1
        summaries.append(summary)
        if as_json:
            print(json.dumps(summary))
        else:
            ok, n = summary["found_all"], summary["pairs"]
            print(f"{summary['scenario']}: MDA ({proto}) at {conf} % found every ECMP branch for {ok}/"
                  f"{n} (pair, address) = {summary['share']:.3f}; {summary['probes']} probes, "
                  f"{summary['seconds']:.1f} s")
            for r in summary["results"]:
                if not r["found_all"]:
                    print(f"  {r['pair']} {r['dst']}: missing {r['missing']}; there (interfaces, "
                          f"silent flows, probes): {r['at_missing']}")
    ok = sum(x["found_all"] for x in summaries)
    n = sum(x["pairs"] for x in summaries)
    share = ok / n if n else 0.0
    if len(summaries) > 1 and not as_json:
        print(f"all: {ok}/{n} = {share:.3f} (gate {min_share})")
    return 0 if share >= min_share else 1


def run_one(scen, lab, agent, conf, proto, cookie=None):
    with open(scen, "rb") as f:
        s = tomllib.load(f)
    oracle = json.loads(
        subprocess.run([lab, "check", "--json", scen], check=True, capture_output=True).stdout
    )
    ecmp = oracle.get("ecmp_paths", {})
    # Paths as the network starts (events come later in the scenario's time).
    at0 = ecmp.get("0.0") or ecmp.get("0") or (next(iter(ecmp.values())) if ecmp else {})
    if not at0:
        print(f"{scen}: no ECMP pair in the oracle; nothing to check", file=sys.stderr)
        return None
    # A target without `probe` is traced at the first host address of its prefix.
    targets = {
        t["name"]: t.get("probe") or [str(next(ipaddress.ip_network(t["prefix"]).hosts()))]
        for t in s.get("target", [])
    }
    # Pairs toward a vantage trace its own address.
    targets.update({v["name"]: [v["addr"]] for v in s.get("vantage", [])})
    vantages = [v["name"] for v in s.get("vantage", [])]

    emu = subprocess.Popen(
        [lab, "emulate", scen, "--duration", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ns = {}
    try:
        deadline = time.time() + 120
        while len(ns) < len(vantages) and time.time() < deadline:
            line = emu.stdout.readline()
            if not line:
                break
            # "vantage NAME (ADDR): ip netns exec NS ..."
            if line.startswith("vantage "):
                name = line.split()[1]
                ns[name] = line.split("ip netns exec ")[1].split()[0]
        if len(ns) < len(vantages):
            print("error: the emulator did not come up", file=sys.stderr)
            return None
        results = []
        t0 = time.time()
        for v in vantages:
            pairs = [p for p in at0 if p.split(">")[0] == v]
            dsts = sorted({a for p in pairs for a in targets.get(p.split(">")[1], [])})
            if not dsts:
                continue
            out = subprocess.run(
                ["ip", "netns", "exec", ns[v], agent, "trace", "--mda", "--proto", proto,
                 "--confidence", conf, "--rate", "500", "--wait-ms", "1500",
                 "--allow", "0.0.0.0/0", "--allow", "::/0", *dsts],
                capture_output=True, text=True,
                env={**os.environ, **({"TRACEMESH_COOKIE": cookie} if cookie else {})},
            )
            found = {}
            for line in out.stdout.splitlines():
                r = json.loads(line)
                found[r["dst"]] = (
                    {(h["ttl"], i["addr"]) for h in r["hops"] for i in h["interfaces"]},
                    r["probes_sent"],
                    {h["ttl"]: (len(h["interfaces"]), h["stars"], h["probes"]) for h in r["hops"]},
                )
            for p in pairs:
                for dst in targets.get(p.split(">")[1], []):
                    ifaces, probes, per_ttl = found.get(dst, (set(), 0, {}))
                    missing = []
                    for branch in at0[p]:
                        for ttl, addr, _lo, _hi, may_be_silent in branch:
                            if addr == "DEST" or may_be_silent or addr is None:
                                continue
                            if (ttl, addr) not in ifaces:
                                missing.append([ttl, addr])
                    results.append({
                        "pair": p, "dst": dst, "branches": len(at0[p]),
                        "found_all": not missing, "missing": missing, "probes": probes,
                        # At the TTLs with a miss: (interfaces, silent flows, probes).
                        "at_missing": {t: per_ttl.get(t) for t, _ in missing},
                    })
        secs = time.time() - t0
    finally:
        emu.terminate()
        try:
            emu.wait(timeout=60)
        except subprocess.TimeoutExpired:
            emu.kill()
    ok = sum(r["found_all"] for r in results)
    return {
        "scenario": s.get("name", scen), "confidence": int(conf), "pairs": len(results),
        "found_all": ok, "share": ok / len(results) if results else 0.0,
        "probes": sum(r["probes"] for r in results), "seconds": round(secs, 1),
        "results": results,
    }


if __name__ == "__main__":
    sys.exit(main())
