#!/usr/bin/env python3
"""Checks that `tracemesh-lab check --json` prints exactly the oracle's expected paths
(and, for version 2, the oracle's ECMP branch sets) for one scenario.

usage: same_paths.py SCENARIO TRACEMESH_LAB [--oracle DIR]
The oracle directory defaults to ../shared/tools beside the repository. Exits 1 on the
first difference, naming the instant, the pair and both hop lists.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    oracle_dir = argv[argv.index("--oracle") + 1] if "--oracle" in argv else \
        os.path.join(HERE, "..", "..", "..", "shared", "tools")
    scenario, lab = argv[0], argv[1]
    theirs = json.loads(subprocess.check_output(
        [sys.executable, os.path.join(oracle_dir, "scenario.py"), scenario, "--json"]))
    ours = json.loads(subprocess.check_output([lab, "check", scenario, "--json"]))
    pairs = hops = branches = 0
    for key in ("paths", "ecmp_paths"):
        a, b = ours.get(key, {}), theirs.get(key, {})
        if set(a) != set(b):
            sys.exit(f"{scenario}: {key}: instants {sorted(a)} vs the oracle's {sorted(b)}")
        for t in b:
            if set(a[t]) != set(b[t]):
                sys.exit(f"{scenario}: {key} at {t}: pairs differ: {sorted(set(a[t]) ^ set(b[t]))}")
            for pair, want in b[t].items():
                if a[t][pair] != want:
                    sys.exit(f"{scenario}: {key} at {t} {pair}:\n  ours   {a[t][pair]}\n  oracle {want}")
                if key == "paths":
                    pairs += 1
                    hops += len(want)
                else:
                    branches += len(want)
    print(f"{theirs['name']}: {pairs} pair-instants, {hops} hops, {branches} ECMP branches: "
          f"identical to the oracle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
