#!/usr/bin/env bash
# The soak at lab scale, run by hand (root: the lab's namespaces), bounded in time:
#
#   tests/soak/lab_soak.sh [--minutes N] [--round S] [--targets N] [--out DIR] [--reuse-base]
#                          [--parallel] [--store-cache-mib N]
#
# Generates a 50-vantage version-2 scenario lasting N minutes (default 30;
# scenarios/generate_scale_v2.py: China Telecom diverts three vantages' traffic for a
# while, one benign re-route), runs it under faults (first: its figures matter most), then
# undisturbed; the faults:
#   - the coordinator is killed and restarted every RESTART_EVERY s (default 180; kill -9
#     and SIGTERM in turn),
#   - one diverted vantage's agent (v1) is killed with -9 every 60 s, restarted 3 s later,
#   - two vantages' control links (v0, diverted, and v10) go down for 20 s every 150 s,
#   - two vantages' probe paths (v2, diverted, and v30) are cut beyond their first hop
#     for 20 s every 150 s (the emulator drops their probes there: an upstream link down),
#   - a garbage agent (coordinator/examples/garbage_agent.rs) uploads junk all along,
# sampling the coordinator's RSS every 5 s (the undisturbed run's too). Both coordinators
# get a 32 MiB store cache (TRACEMESH_STORE_CACHE_MIB; --store-cache-mib N): sled's cache
# grows with the data it has touched up to about 2.6 times that figure, and a 30-minute
# run (a store of ~110 MB) never fills the default 256 MiB, so the RSS would still be
# climbing toward that bound; a small cache reaches its bound within minutes, and the rest
# of the run shows whether anything else grows. Then tests/soak/compare_lab.py checks traces
# stored == expected (the killed agent's missed rounds accounted for), none twice, and
# detection unchanged against the undisturbed run, and prints the RSS curve.
# The two runs take 2 x N minutes and a few more (N and a few with --parallel, which runs
# them side by side: each lab has its own namespaces, and both see the same load); each lab run is the one CI runs at
# scale, longer. Not in CI.
#
# Needs release binaries: `cargo build --release -p tracemesh -p tracemesh-agent
# -p tracemesh-lab --bins && cargo build --release -p tracemesh --example garbage_agent`
# (TRACEMESH_BIN, default target/release; the lab finds them beside tracemesh-lab).
set -euo pipefail
cd "$(dirname "$0")/../.."
MIN=30 ROUND=30 TARGETS=40 OUT=out/lab-soak REUSE=0 PARALLEL=0 CACHE=32
RESTART_EVERY=${RESTART_EVERY:-180}
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MIN=$2; shift 2 ;;
    --round) ROUND=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --reuse-base) REUSE=1; shift ;;
    --parallel) PARALLEL=1; shift ;;
    --store-cache-mib) CACHE=$2; shift 2 ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
BIN=${TRACEMESH_BIN:-target/release}
for b in tracemesh tracemesh-agent tracemesh-lab examples/garbage_agent; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b missing (see the header of $0)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "error: the lab needs root (network namespaces)" >&2; exit 2; }
mkdir -p "$OUT"
export TRACEMESH_STORE_CACHE_MIB=$CACHE
S="$OUT/scenario.toml"
python3 scenarios/generate_scale_v2.py --targets "$TARGETS" --duration "$((MIN * 60))" --round "$ROUND" >"$S"
echo "soak: $(grep -c '^\[\[vantage\]\]' "$S") vantages, $TARGETS targets, $MIN min, a round every $ROUND s, store cache $CACHE MiB"

faulted() {
  "$BIN/tracemesh-lab" run "$S" --out "$OUT/faults" --rate 500 \
    --restart-coordinator-every "$RESTART_EVERY" \
    --kill-agent v1 --kill-every 60 \
    --flap-control v0 --flap-control v10 --flap-probe v2 --flap-probe v30 \
    --flap-every 150 --flap-down 20 \
    --garbage-agent --rss-every 5 >"$OUT/faults.lab.json"
}
undisturbed() {
  "$BIN/tracemesh-lab" run "$S" --out "$OUT/base" --rate 500 --rss-every 5 >"$OUT/base.lab.json"
}
if [ "$REUSE" = 1 ] && [ -f "$OUT/base/diversions.json" ]; then
  echo "soak: run under faults ($(date -u +%H:%M:%S)); reusing the undisturbed run in $OUT/base"
  faulted
elif [ "$PARALLEL" = 1 ]; then
  echo "soak: run under faults and undisturbed run side by side ($(date -u +%H:%M:%S))"
  faulted & fp=$!
  undisturbed & bp=$!
  rc=0
  wait $fp || rc=$?
  wait $bp || rc=$?
  [ "$rc" = 0 ] || { echo "error: a lab run failed (rc=$rc); see $OUT/*/logs" >&2; exit 1; }
else
  echo "soak: run under faults ($(date -u +%H:%M:%S))"
  faulted
  echo "soak: undisturbed run ($(date -u +%H:%M:%S))"
  undisturbed
fi
echo "soak: done ($(date -u +%H:%M:%S)); garbage agent: $(tail -1 "$OUT/faults/logs/garbage.log" 2>/dev/null || echo '-')"
python3 tests/soak/compare_lab.py "$S" "$OUT/base" "$OUT/faults"
