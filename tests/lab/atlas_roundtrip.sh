#!/usr/bin/env bash
# Detection over imported Atlas traces, end to end: a lab run (root, network namespaces),
# its traces exported as Atlas JSON, a fresh store, the export re-imported with its probe
# file, and `tracemesh diversions` run again with the lab's tables: the same records.
# usage: tests/lab/atlas_roundtrip.sh SCENARIO.toml [OUT_DIR [--reuse]]  (BIN: the binaries)
#   --reuse: OUT_DIR already holds that scenario's lab run (CI's), do not run it again.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
SCEN=$1
OUT=${2:-$(mktemp -d)/lab}
if [ "${3:-}" != "--reuse" ]; then
  "$BIN/tracemesh-lab" run "$SCEN" --out "$OUT" >"$OUT.lab.json"
fi
[ -d "$OUT/coordinator" ] || { echo "no lab run in $OUT" >&2; exit 1; }
ADV=$(python3 -c 'import sys,tomllib; print(" ".join(f"--adversary {a}" for a in tomllib.load(open(sys.argv[1],"rb"))["adversary_asns"]))' "$SCEN")
TABLES=(--pfx2as "$OUT/inputs/pfx2as.txt" --asnames "$OUT/inputs/asnames.json")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
serve() {
  rm -f "$1/coordinator.addr"
  "$BIN/tracemesh" --data "$1" serve --listen 127.0.0.1:0 >"$1.serve.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 150); do [ -s "$1/coordinator.addr" ] && return; sleep 0.2; done
  echo "coordinator in $1 did not come up" >&2; exit 1
}
stop() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }

# The lab's store, read by the same CLI both times (the lab's own report ran in its
# namespaces with aliases resolved live; both runs here see the same store content
# apart from the traces' origin).
serve "$OUT/coordinator"
# shellcheck disable=SC2086
"$BIN/tracemesh" --data "$OUT/coordinator" diversions --json "${TABLES[@]}" $ADV >"$OUT/before.json"
"$BIN/tracemesh" --data "$OUT/coordinator" export --format atlas --out "$OUT/atlas.jsonl"
stop

FRESH="$OUT/reimported"
rm -rf "$FRESH"
"$BIN/tracemesh" --data "$FRESH" import --format atlas --atlas-probes "$OUT/atlas.jsonl.probes.json" "$OUT/atlas.jsonl"
serve "$FRESH"
# shellcheck disable=SC2086
"$BIN/tracemesh" --data "$FRESH" diversions --json "${TABLES[@]}" $ADV >"$OUT/after.json"
stop
python3 tests/lab/atlas_roundtrip.py "$OUT/before.json" "$OUT/after.json" "$OUT/atlas.jsonl.probes.json"
