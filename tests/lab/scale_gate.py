#!/usr/bin/env python3
"""Gates a lab run at scale (issue 4): every trace stored, the emulator punctual and not
dearer than it was. Prints the figures issue 4 asks for: emulator CPU, answers per second
(mean and peak) and the added delay (send lateness mean, p50, p99, max), and the CPU
time the hypervisor stole from the machine meanwhile.

usage: scale_gate.py LAB_JSON [--max-mean-late-us F] [--max-tail-late-us F]
                              [--max-p99-late-us F] [--max-cpu-share F]

Lateness is measured from the kernel's stamp of each probe (its entry into the TUN) to
its answer's write, so it holds every wait: the emulator's own work, the CPU it waited
for, and the slices of milliseconds in which the hypervisor ran something else on a
virtual CPU. On the 2-core CI machine (50 agents at 500 pps, the coordinator, the
emulator) the p50 stays near 30 us and the p90 under 100 us, but the p99 follows the
steal: 0.15 ms with 1 s stolen over the campaign, 0.5-0.9 ms with 3-6 s, 1.7-2 ms with
12 s, 5.2 ms with 19 s; while an emulator made 45 % dearer (a 35 us spin per answer)
kept its p99 at 0.2 ms. A gate on the raw p99 thus judged the host, not the emulator.

So the tail is judged at quantile 0.99 minus the share of the campaign's CPU time that
was stolen (`tail_send_late_us`, at `tail_quantile`): the answers a stolen slice could
have held up are left out, as many as the steal explains, and no more. The emulator's
own cost is judged by its CPU time, which excludes steal (24 % of a core on that
machine): a regression that makes it dearer shows there before it shows as lateness.

Defaults: mean <= 1000 us, tail <= 1000 us, CPU <= 50 % of a core; the raw p99 is
printed, and gated only when --max-p99-late-us is given. Before the emulator was
reworked its mean lateness was 86 ms (release) to 529 ms (debug).
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lab_json")
    ap.add_argument("--max-mean-late-us", type=float, default=1000.0)
    ap.add_argument("--max-tail-late-us", type=float, default=1000.0)
    ap.add_argument("--max-p99-late-us", type=float, default=None)
    ap.add_argument("--max-cpu-share", type=float, default=0.5)
    args = ap.parse_args()
    try:
        lab = json.load(open(args.lab_json))
    except (OSError, ValueError) as err:
        sys.exit(f"error: {args.lab_json}: {err}")
    # A field an older lab did not write reads as NaN: printed, and failing its gate.
    e = {k: float("nan") for k in ("answers_per_s_peak_1s", "answers_per_s_peak_100ms",
                                     "p50_send_late_us", "p90_send_late_us",
                                     "p99_send_late_us", "machine_steal_s", "steal_share",
                                     "tail_quantile", "tail_send_late_us")}
    e.update(lab["emulator"])
    print(
        f"{lab['scenario']}: {lab['traces_stored']}/{lab['traces_expected']} traces stored; "
        f"emulator ({e.get('threads', '?')} threads, agents at {lab.get('agent_rate_pps', '?')} pps): "
        f"{e['cpu_s']:.2f} CPU-s = {100 * e['cpu_share_of_one_core']:.1f}% of a core, "
        f"{e['packets_in']} probes in, {e['answers']} answers, "
        f"{e['answers_per_s']:.0f} answers/s mean, {e['answers_per_s_peak_1s']:.0f}/s peak (1 s), "
        f"{e['answers_per_s_peak_100ms']:.0f}/s peak (100 ms); send lateness mean "
        f"{e['mean_send_late_us']:.1f} us, p50 {e['p50_send_late_us']:.1f} us, "
        f"p90 {e['p90_send_late_us']:.1f} us, p99 {e['p99_send_late_us']:.1f} us, "
        f"max {e['max_send_late_us']:.1f} us; machine steal {e['machine_steal_s']:.2f} s "
        f"({100 * e['steal_share']:.1f}% of its CPU time), so the tail is judged at "
        f"p{100 * e['tail_quantile']:.1f}: {e['tail_send_late_us']:.1f} us"
    )
    failed = []
    if lab["traces_stored"] < lab["traces_expected"]:
        failed.append("traces missing")
    if not e["mean_send_late_us"] <= args.max_mean_late_us:
        failed.append(f"mean lateness above {args.max_mean_late_us} us")
    if not e["tail_send_late_us"] <= args.max_tail_late_us:
        failed.append(f"lateness at p{100 * e['tail_quantile']:.1f} (p99 less the steal's "
                      f"share) above {args.max_tail_late_us} us")
    if args.max_p99_late_us is not None and not e["p99_send_late_us"] <= args.max_p99_late_us:
        failed.append(f"p99 lateness above {args.max_p99_late_us} us")
    if not e["cpu_share_of_one_core"] <= args.max_cpu_share:
        failed.append(f"emulator CPU above {100 * args.max_cpu_share:.0f}% of a core")
    if failed:
        sys.exit("error: " + "; ".join(failed))


if __name__ == "__main__":
    main()
