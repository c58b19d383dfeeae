#!/usr/bin/env python3
"""Checks a lab run's traces against the oracle: every hop of traces.jsonl must match
scenario.py's expected path at the instant the trace was taken, except traces that
straddle an event edge: an edge between a trace's start and the coordinator's receipt of
it (a bound on its end; both on this machine's clock) means the path may have changed
mid-trace. Where the oracle's path itself loops (a diversion whose way on passes the
diverting router again) and the agent stopped for the loop, the hops past the loop were
never probed and are not compared.

Version 1: address per TTL; RTT within 10% + 0.5 ms of the oracle's.
Version 2: the trace must follow one of the pair's equal-cost branches throughout (the
branch that fits it best is taken, and every hop that does not fit it counts against
it); each RTT must lie in [rtt_min - 0.2 ms, rtt_max + 0.5 ms + 5%] (the tolerance is
for the agent's own send stamps and this machine's scheduling); a hop the oracle marks
may-be-silent (rate-limited) may be `*`.

Both versions judge the agent against what the emulator really did: an answer the
emulator itself sent late (it logs those later than 0.1 ms in OUT/late_answers.jsonl,
timed from the probe's kernel-stamped transmission into its TUN) is expected that much
later. Without that log (older runs) nothing is corrected.

usage: check_paths.py SCENARIO OUT_DIR [--oracle DIR] [--min-addr-share F] [--min-share F]
                      [--max-untapped-share F]
The oracle directory defaults to ../shared/tools beside the repository.
Prints the share of hops whose address matches and the share matching in address and RTT;
exits 1 if the first is below --min-addr-share (default 0.99) or the second below
--min-share (default 0.9), or if more than --max-untapped-share (default 0.05) of the
probes the emulator read were timed from their read rather than from the kernel's stamp
of their transmission (an emulator that stopped using its taps would pass the RTT floors
on a quiet machine and fail them on a busy one). Addresses are deterministic; sub-millisecond RTTs carry the
scheduling noise of a loaded machine, hence the separate floor.
"""
import argparse
import json
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
# How far before its recorded start a trace may already be probing, for the agent's
# clock offset to the coordinator's.
EDGE_MARGIN_S = 0.1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("out_dir")
    ap.add_argument("--oracle", default=os.path.join(HERE, "..", "..", "..", "shared", "tools"))
    ap.add_argument("--min-addr-share", type=float, default=0.99)
    ap.add_argument("--min-share", type=float, default=0.9)
    ap.add_argument("--max-untapped-share", type=float, default=0.05)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.oracle))
    from scenario import Scenario  # noqa: E402

    s = Scenario(args.scenario)
    lab = json.load(open(os.path.join(args.out_dir, "lab.json")))
    t0 = float(lab["t0"])
    edges = [float(e[k]) for e in s.events for k in ("start_s", "end_s")]
    probe_to_target = {p: name for name, tg in s.targets.items() for p in tg["probe"]}
    v2 = s.version == 2
    if v2:
        probe_to_target.update({v["addr"]: name for name, v in s.vantages.items()})
    # (vantage, probe destination, TTL) -> [(scenario second of the probe, ms late)].
    late_log = defaultdict(list)
    late_path = os.path.join(args.out_dir, "late_answers.jsonl")
    if os.path.exists(late_path):
        for line in open(late_path):
            a = json.loads(line)
            late_log[(a["vantage"], a["dst"], int(a["ttl"]))].append((float(a["t_s"]), float(a["late_ms"])))
    hops_total = hops_ok = addr_ok = skipped = traces = loops = corrected = 0
    bad = []
    for line in open(os.path.join(args.out_dir, "traces.jsonl")):
        tr = json.loads(line)
        traces += 1
        t = float(tr["start"]) - t0
        # A record without its receipt time is bounded by the round instead.
        end = float(tr["received_at"]) - t0 if "received_at" in tr else t + s.round_s
        if any(t - EDGE_MARGIN_S <= e <= end for e in edges):
            skipped += 1
            continue
        tname = probe_to_target[tr["dst"]]
        got = {h["ttl"]: h for h in tr["hops"]}
        if v2:
            branches = s.traces(tr["vantage"], tname, t)
        else:
            branches = [[(ttl, addr, rtt, rtt, False) for ttl, addr, rtt in s.hops(tr["vantage"], tname, t)]]
        if tr.get("stop_reason") == "loop" and got:
            last = max(got)
            cut = []
            for br in branches:
                seen = [h[1] for h in br if h[0] <= last and h[1] not in (None, "DEST")]
                cut.append([h for h in br if h[0] <= last] if len(seen) != len(set(seen)) else br)
            if cut != branches:
                loops += 1
            branches = cut

        def late_ms(ttl):
            """How late the emulator sent its answer to this trace's probe at `ttl`."""
            got_late = [ms for ts, ms in late_log.get((tr["vantage"], tr["dst"], ttl), ())
                        if t - EDGE_MARGIN_S <= ts <= end]
            return max(got_late, default=0.0)

        def judge(hop):
            """(address matches, address and RTT match) for one expected hop."""
            ttl, addr, lo, hi, rated = hop
            h = got.get(ttl)
            answered = h is not None and h.get("addr") is not None
            if addr is None or (rated and not answered):
                ok = not answered if addr is None else True
                return ok, ok
            want_addr = tr["dst"] if addr == "DEST" else addr
            if not (answered and h.get("addr") == want_addr):
                return False, False
            rtt = h["rtt_ms"] - late_ms(ttl)
            if v2:
                return True, lo - 0.2 <= rtt <= hi + 0.5 + 0.05 * hi
            return True, abs(rtt - lo) <= 0.1 * lo + 0.5

        # The branch this trace followed: the one most of its hops fit.
        scored = [[judge(hop) for hop in br] for br in branches]
        best = max(range(len(branches)), key=lambda i: (sum(a for a, _ in scored[i]), sum(b for _, b in scored[i])))
        for hop, (addr_match, ok) in zip(branches[best], scored[best]):
            hops_total += 1
            addr_ok += addr_match
            corrected += addr_match and late_ms(hop[0]) > 0
            if ok:
                hops_ok += 1
            elif len(bad) < 10:
                ttl, addr, lo, hi = hop[:4]
                h = got.get(ttl)
                want_addr = tr["dst"] if addr == "DEST" else addr
                bad.append(f"{tr['vantage']}>{tr['dst']} round {tr['round']} t={t:.1f}s ttl {ttl}: "
                           f"want {want_addr} {lo}..{hi} ms, got {h and h.get('addr')} "
                           f"{h and h.get('rtt_ms')}")
    share = hops_ok / hops_total if hops_total else 0.0
    addr_share = addr_ok / hops_total if hops_total else 0.0
    print(f"{s.name}: {hops_ok}/{hops_total} hops match the oracle in address and RTT ({share:.4f}), "
          f"{addr_ok}/{hops_total} in address ({addr_share:.4f}), over {traces - skipped} traces; "
          f"{skipped} traces spanning an event edge skipped; {loops} stopped at a loop the oracle "
          f"predicts, compared up to it; {corrected} hop judgements allowed for an answer the "
          f"emulator logged as sent late")
    # The lab's own timing, for reading a failure: how long probes waited in their TUN
    # and how late answers left (from the kernel's stamp of the probe), CPU wait, steal.
    e = lab.get("emulator", {})
    if e:
        print("  emulator: read wait p50/p99/max {} / {} / {} us; answers late p50/p99/max {} / {} / {} us, "
              "{} logged over 0.1 ms; {} probes untapped; threads waited {} ms for a CPU; steal {} s".format(
                  *(round(e.get(k, float("nan")), 1) for k in (
                      "p50_read_wait_us", "p99_read_wait_us", "max_read_wait_us", "p50_send_late_us",
                      "p99_send_late_us", "max_send_late_us")),
                  e.get("late_answers_logged"), e.get("untapped"),
                  round(e.get("thread_wait_for_cpu_ms", float("nan")), 1), round(e.get("machine_steal_s", float("nan")), 2)))
    for b in bad:
        print("  mismatch:", b)
    if not e or "untapped" not in e or not e.get("packets_in"):
        sys.exit("error: lab.json has no emulator figures (packets read, probes untapped)")
    untapped_share = e["untapped"] / e["packets_in"]
    if untapped_share > args.max_untapped_share:
        sys.exit(f"error: {e['untapped']} of {e['packets_in']} probes ({untapped_share:.4f}) were timed "
                 f"from their read, not their transmission (allowed {args.max_untapped_share})")
    if addr_share < args.min_addr_share:
        sys.exit(f"error: only {addr_share:.4f} of hop addresses match (need {args.min_addr_share})")
    if share < args.min_share:
        sys.exit(f"error: only {share:.4f} of hops match in address and RTT (need {args.min_share})")


if __name__ == "__main__":
    main()
