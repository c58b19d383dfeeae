#!/usr/bin/env python3
"""Checks a lab soak run (`tracemesh-lab run ... --restart-coordinator-every ...`) against
an undisturbed run of the same scenario (`tests/soak/lab_soak.sh` makes both).

    compare_lab.py SCENARIO.toml BASE_OUT FAULTS_OUT [--json]

Counts (FAULTS_OUT/traces.jsonl, lab.json):
- no (campaign, round, vantage, destination) stored twice;
- every vantage but the killed one: every round, every target (stored == expected);
- the killed agent: every round complete or entirely missing, and a missing round only
  where a kill fell in it (from DOWN_S before its start to its end): an agent killed
  mid-round loses that round's results (they are spooled when the round ends) and skips
  rounds that start while it is down; that is the expected count;
- the garbage agent: nothing stored under another name.

Detection (diversions.json of both runs), compared on what does not depend on timing:
(vantage, target, adversary AS, ingress address, hand-off address, first and last round,
rounds) must be the same set, except that the killed agent's records may lose exactly
the rounds it missed (and so start later or end earlier within the undisturbed span), and
a record may start or end one round apart where that round straddles a scenario event's
start or end (which of a round's traces leave before the event's instant is timing, in
any two runs; listed in the figures);
incidents the same (adversary, ingress, vantages, corroboration). Ingress positions and
cities come from RTTs, which differ between any two runs, and are not compared.
Control-link flaps cut an agent off its coordinator, not its probes off the network:
they must change nothing. Probe-path flaps (`--flap-probe`) leave a vantage's traces
answered only by its first hop while they last: the traces are still stored (counted as
above), and that vantage's records may lose exactly rounds that overlapped a cut (a
round seen only as far as the first hop is no evidence either way), never gain one.

Prints the coordinator's RSS curve (one sample a minute with the store's size, each
process's spread) and one JSON line of figures; the RSS must be flat: the median of the
run's last third within RSS_GROWTH_MAX of the middle third's (the first third is the
store cache filling up to its bound). Exits 1 when a check fails.
"""

import argparse
import collections
import json
import sys
import tomllib


# A killed agent is down this long at most (restarted 3 s later, then its start-up and
# session): a round that starts meanwhile is skipped.
DOWN_S = 10
# The coordinator's RSS is flat when the median of the run's last third is within this
# factor of the middle third's (the first is the store cache filling to its bound).
RSS_GROWTH_MAX = 1.15


def load_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def record_key(r):
    return (r["vantage"], r["target"], r["adversary_asn"], r["ingress"]["addr"],
            (r.get("handoff") or {}).get("addr"), r["first_round"], r["last_round"], r["rounds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("base")
    ap.add_argument("faults")
    a = ap.parse_args()
    with open(a.scenario, "rb") as f:
        scen = tomllib.load(f)
    vantages = [v["name"] for v in scen["vantage"]]
    lab = json.load(open(f"{a.faults}/lab.json"))
    rounds, round_s, t0 = lab["rounds"], lab["round_s"], lab["t0"]
    victim = lab.get("victim")
    failures = []

    traces = load_lines(f"{a.faults}/traces.jsonl")
    targets_per_round = None
    seen = collections.Counter()
    per = collections.defaultdict(lambda: collections.defaultdict(set))
    for t in traces:
        seen[(t["campaign"], t["round"], t["vantage"], t["dst"])] += 1
        per[t["vantage"]][t["round"]].add(t["dst"])
    twice = sum(1 for n in seen.values() if n > 1)
    if twice:
        failures.append(f"{twice} (campaign, round, vantage, target) stored more than once")
    all_dsts = set()
    for v in vantages:
        for r in per[v].values():
            all_dsts |= r
    targets_per_round = len(all_dsts)
    strangers = sorted(set(per) - set(vantages) - {"garbage"})
    if strangers:
        failures.append(f"traces under names that are no vantage: {strangers[:5]}")

    kills = [f["t"] for f in lab.get("faults", []) if f["fault"]["action"] == "kill_agent"]
    missed, excused, partial = [], [], []
    expected = 0
    stored = 0
    for v in vantages:
        for r in range(rounds):
            got = len(per[v].get(r, ()))
            stored += got
            start = r * round_s
            if got == targets_per_round:
                expected += targets_per_round
                continue
            if v == victim and got == 0 and any(start - DOWN_S <= k <= start + round_s for k in kills):
                excused.append(r)
                continue
            expected += targets_per_round
            (partial if got else missed).append((v, r, got))
    if missed or partial:
        failures.append(f"rounds missing without a kill to explain them: {missed[:5]}; "
                        f"partial rounds: {partial[:5]}")
    if stored != expected:
        failures.append(f"stored {stored} != expected {expected}")

    base = json.load(open(f"{a.base}/diversions.json"))
    faulted = json.load(open(f"{a.faults}/diversions.json"))
    # A round that straddles an event's start or end may or may not see it for a given
    # target: which of its traces go out before the instant is timing, in any two runs.
    edges = {int(e[k] // round_s) for e in scen.get("event", []) for k in ("start_s", "end_s")}
    # Rounds of each probe-flapped vantage that overlapped a cut of its probe path.
    cut_rounds = collections.defaultdict(set)
    down_at = {}
    for x in lab.get("faults", []):
        act, who = x["fault"]["action"], x["fault"].get("target")
        if act == "probe_path_down":
            down_at[who] = x["t"]
        elif act == "probe_path_up" and who in down_at:
            lo, hi = down_at.pop(who), x["t"]
            cut_rounds[who] |= {r for r in range(rounds) if lo - round_s < r * round_s <= hi}
    flapped = set(lab.get("probe_paths_flapped", []))
    def spans(rep, v):
        out = collections.defaultdict(set)
        for r in rep["diversions"]:
            if r["vantage"] == v:
                out[record_key(r)[:5]] |= set(range(r["first_round"], r["last_round"] + 1))
        return out
    probe_cut_rounds_lost = 0
    for v in sorted(flapped - {victim}):
        sb, sf = spans(base, v), spans(faulted, v)
        for k in set(sb) | set(sf):
            gained = sf.get(k, set()) - sb.get(k, set())
            lost = sb.get(k, set()) - sf.get(k, set())
            if gained - edges or lost - cut_rounds[v] - edges:
                failures.append(f"probe-flapped {v}'s record {k}: rounds gained {sorted(gained)[:5]}, "
                                f"lost outside its cuts {sorted(lost - cut_rounds[v])[:5]}")
            probe_cut_rounds_lost += len(lost & cut_rounds[v])
    b = {record_key(r) for r in base["diversions"] if r["vantage"] != victim and r["vantage"] not in flapped}
    f = {record_key(r) for r in faulted["diversions"]
         if r["vantage"] in vantages and r["vantage"] != victim and r["vantage"] not in flapped}
    def at_edge(rb, rf):
        df, dl = rf[5] - rb[5], rf[6] - rb[6]
        return (abs(df) <= 1 and abs(dl) <= 1 and rf[7] - rb[7] == dl - df
                and (df == 0 or min(rb[5], rf[5]) in edges) and (dl == 0 or max(rb[6], rf[6]) in edges))
    only_b = {k[:5]: k for k in b - f}
    only_f = {k[:5]: k for k in f - b}
    edge_moves = [(only_b[k], only_f[k]) for k in set(only_b) & set(only_f) if at_edge(only_b[k], only_f[k])]
    for kb, kf in edge_moves:
        b.discard(kb)
        f.discard(kf)
    if b != f:
        failures.append(f"detection changed: only undisturbed {sorted(b - f)[:3]}, only faulted {sorted(f - b)[:3]}")
    excused_set = set(excused)
    vb = {record_key(r)[:5]: r for r in base["diversions"] if r["vantage"] == victim}
    vf = {record_key(r)[:5]: r for r in faulted["diversions"] if r["vantage"] == victim}
    victim_rounds_lost = 0

    def victim_fits(rb, rf):
        """Whether the killed agent's record rf is the undisturbed rb minus the rounds it
        missed, each end also free to move one round where that round straddles an event's
        edge (as for every other record)."""
        span = range(rb["first_round"], rb["last_round"] + 1)
        if rb["rounds"] != len(span):
            lost = sum(1 for r in span if r in excused_set)
            return (rf["rounds"] == rb["rounds"] - lost and rf["first_round"] >= rb["first_round"]
                    and rf["last_round"] <= rb["last_round"])
        lo, hi = rb["first_round"], rb["last_round"]
        for ds in (0, -1, 1):
            if ds and (lo - 1 if ds < 0 else lo) not in edges:
                continue
            for de in (0, 1, -1):
                if de and (hi + 1 if de > 0 else hi) not in edges:
                    continue
                got = [r for r in range(lo + ds, hi + de + 1) if r not in excused_set]
                if got and (got[0], got[-1], len(got)) == (rf["first_round"], rf["last_round"], rf["rounds"]):
                    return True
        return False

    for k, rb in vb.items():
        rf = vf.get(k)
        lost = sum(1 for r in range(rb["first_round"], rb["last_round"] + 1) if r in excused_set)
        if rf is None:
            if lost < rb["rounds"]:
                failures.append(f"killed agent's record {k} gone, though only {lost} of its {rb['rounds']} rounds were missed")
            continue
        victim_rounds_lost += lost
        if not victim_fits(rb, rf):
            failures.append(f"killed agent's record {k}: rounds {rb['first_round']}..{rb['last_round']} ({rb['rounds']}) "
                            f"became {rf['first_round']}..{rf['last_round']} ({rf['rounds']}) with {lost} missed")
    if set(vf) - set(vb):
        failures.append(f"killed agent has records the undisturbed run has not: {sorted(set(vf) - set(vb))[:3]}")
    inc = lambda rep: sorted((i["adversary_asn"], i["ingress"], tuple(sorted(i["vantages"])), i["corroborated"])
                             for i in rep.get("incidents", []))
    if inc(base) != inc(faulted):
        failures.append(f"incidents differ: {inc(base)} vs {inc(faulted)}")

    # The coordinator's RSS: one sample a minute, each process's spread, and whether it
    # grows: the median of the last third of the run against the middle third's (samples
    # swing with each round's burst of uploads, and every restart starts afresh, so single
    # samples say little; the first third is the store cache warming up to its bound).
    # The store's size on disk is listed beside it. Both runs when
    # both sampled: the undisturbed run's coordinator lives the whole run.
    def rss_of(run_dir, name):
        lab_run = json.load(open(f"{run_dir}/lab.json"))
        rss = [x if len(x) == 4 else [*x, 0] for x in lab_run.get("coordinator_rss_kib", [])]
        if not rss:
            return None
        by_pid = collections.OrderedDict()
        for t, pid, kib, _ in rss:
            by_pid.setdefault(pid, []).append((t, kib))
        print(f"coordinator RSS, {name} run (t s, pid, MiB, store MiB):")
        last_min = -1
        for t, pid, kib, store in rss:
            if int(t // 60) != last_min:
                last_min = int(t // 60)
                print(f"  {t:7.0f} {pid:>8} {kib / 1024:7.1f} {store / 1024:7.1f}")
        for pid, s in by_pid.items():
            ks = sorted(k for _, k in s)
            print(f"  process {pid}: {s[0][0]:5.0f}-{s[-1][0]:5.0f} s: first {s[0][1] / 1024:.1f}, "
                  f"median {ks[len(ks) // 2] / 1024:.1f}, max {ks[-1] / 1024:.1f} MiB")
        def median(xs):
            xs = sorted(xs)
            return xs[len(xs) // 2] / 1024 if xs else 0.0
        span = max(t for t, *_ in rss)
        first = median([k for t, _, k, _ in rss if span / 3 <= t < 2 * span / 3])
        last = median([k for t, _, k, _ in rss if t >= 2 * span / 3])
        growth = last / first if first else 0.0
        print(f"  median RSS: middle third {first:.1f} MiB, last third {last:.1f} MiB (x{growth:.2f}); "
              f"store {rss[0][3] / 1024:.1f} -> {rss[-1][3] / 1024:.1f} MiB")
        if growth > RSS_GROWTH_MAX:
            failures.append(f"coordinator RSS grew in the {name} run: median {first:.1f} MiB in the middle third, "
                            f"{last:.1f} MiB in the last (x{growth:.2f} > x{RSS_GROWTH_MAX})")
        return {"max_mib": round(max(k for _, _, k, _ in rss) / 1024, 1),
                "median_middle_third_mib": round(first, 1), "median_last_third_mib": round(last, 1),
                "growth": round(growth, 3), "store_mib_end": round(rss[-1][3] / 1024, 1)}
    rss_faults = rss_of(a.faults, "faulted")
    rss_base = rss_of(a.base, "undisturbed")
    figures = {
        "vantages": len(vantages),
        "rounds": rounds,
        "targets": targets_per_round,
        "traces_stored": stored,
        "traces_expected": expected,
        "stored_twice": twice,
        "victim": victim,
        "victim_kills": len(kills),
        "victim_rounds_missed": len(excused),
        "garbage_traces_stored_under_its_name": sum(len(s) for s in per.get("garbage", {}).values()),
        "coordinator_restarts": sum(1 for x in lab.get("faults", []) if x["fault"]["action"] == "restart_coordinator"),
        "link_flaps": sum(1 for x in lab.get("faults", []) if x["fault"]["action"] == "link_down"),
        "probe_path_flaps": sum(1 for x in lab.get("faults", []) if x["fault"]["action"] == "probe_path_down"),
        "probe_flapped_record_rounds_lost": probe_cut_rounds_lost,
        "diversion_records": {"undisturbed": len(base["diversions"]), "faulted": len(faulted["diversions"])},
        "victim_record_rounds_lost": victim_rounds_lost,
        "records_moved_a_round_at_an_event_edge": [[list(x) for x in m] for m in edge_moves],
        "incidents": len(faulted.get("incidents", [])),
        "rss_faulted": rss_faults,
        "rss_undisturbed": rss_base,
        "ok": not failures,
        "failures": failures,
    }
    print(json.dumps(figures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
