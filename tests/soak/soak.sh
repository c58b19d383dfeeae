#!/usr/bin/env bash
# Soak under faults, bounded in time, on loopback (real binaries, real TLS, a real sled
# store; probes go to 127.0.0.0/8 only, from the root namespace's loopback):
#
#   tests/soak/soak.sh [SECONDS]        (default 300)
#
# Three steady agents and one victim run a campaign (3 loopback targets every 5 s for
# the whole span) while the coordinator is killed and restarted every 60 s (kill -9 and
# SIGTERM in turn), the victim is killed with -9 every 20 s and restarted 3 s later,
# and a hostile agent (coordinator/examples/garbage_agent.rs) uploads garbage all along.
# Then it checks: each steady agent's traces stored == rounds x targets, the victim's at
# most that, no (round, vantage, target) stored twice, nothing stored under a vantage
# other than the one that uploaded it, the garbage agent's junk kept out of the
# campaign; and prints the coordinator's RSS every 10 s (rss.tsv) with the first and
# last sample of each coordinator process. Exits non-zero when a check fails.
#
# Needs the workspace built: TRACEMESH_BIN (default target/release) with tracemesh,
# tracemesh-agent and examples/garbage_agent (`cargo build --release --workspace
# --examples`). Everything it starts is stopped on exit, and its files removed (kept in
# SOAK_KEEP=DIR if set).
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-300}
BIN=${TRACEMESH_BIN:-target/release}
EVERY=5
TARGETS=(127.0.0.1 127.0.0.2 127.0.0.3)
# Under out/ (ignored by git), not /tmp: a long run's files must not be swept away.
mkdir -p out
WORK=$(mktemp -d "$PWD/out/soak.XXXXXX")
PIDS=()
COORD=""
VICTIM=""

cleanup() {
  for p in "${PIDS[@]}" $COORD $VICTIM; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${SOAK_KEEP:-}" ]; then mkdir -p "$SOAK_KEEP"; cp -r "$WORK"/. "$SOAK_KEEP"/; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for b in tracemesh tracemesh-agent examples/garbage_agent; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b missing (cargo build --release --workspace --examples)"; exit 2; }
done

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tm() { "$BIN/tracemesh" --data "$WORK/coord" "$@"; }

start_coord() {
  rm -f "$WORK/coord/coordinator.addr"
  "$BIN/tracemesh" serve --data "$WORK/coord" --listen "127.0.0.1:$PORT" >>"$WORK/serve.log" 2>&1 &
  COORD=$!
  for _ in $(seq 100); do [ -f "$WORK/coord/coordinator.addr" ] && return 0; sleep 0.1; done
  echo "error: coordinator did not come up"; tail -5 "$WORK/serve.log"; exit 1
}

start_agent() { # NAME [TOKEN]
  local name=$1 tok=${2:-}
  if [ -n "$tok" ]; then
    "$BIN/tracemesh-agent" run --state "$WORK/$name" --token "$tok" --allow 127.0.0.0/8 >>"$WORK/$name.log" 2>&1 &
  else
    "$BIN/tracemesh-agent" run --state "$WORK/$name" --allow 127.0.0.0/8 >>"$WORK/$name.log" 2>&1 &
  fi
  echo $!
}

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

start_coord
STEADY=(steady-0 steady-1 steady-2)
for a in "${STEADY[@]}"; do
  PIDS+=("$(start_agent "$a" "$(tm token create --name "$a")")")
done
VICTIM=$(start_agent victim "$(tm token create --name victim)")
"$BIN/examples/garbage_agent" "$(tm token create --name garbage)" >"$WORK/garbage.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  [ "$(tm agents --json | grep -o '"connected":true' | wc -l)" -ge 5 ] && break
  sleep 0.2
done

ROUNDS=$((DUR / EVERY))
START=$(($(date +%s) + 5))
ID=$(tm campaign create --targets "${TARGETS[@]}" --agents name:steady-0 name:steady-1 \
       name:steady-2 name:victim --every "${EVERY}s" --rounds "$ROUNDS" \
       --start-at "$(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ)" --json |
     python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "soak: campaign $ID, $ROUNDS rounds x ${#TARGETS[@]} targets every ${EVERY}s, ${DUR}s; coordinator restarted every 60s, victim killed every 20s"

printf 't_s\tpid\trss_kib\n' >"$WORK/rss.tsv"
restarts=0; kills=0; t0=$(date +%s)
while :; do
  now=$(($(date +%s) - t0))
  [ "$now" -ge "$DUR" ] && break
  if [ $((now % 10)) -eq 0 ]; then printf '%s\t%s\t%s\n' "$now" "$COORD" "$(rss_kb "$COORD")" >>"$WORK/rss.tsv"; fi
  if [ "$now" -gt 0 ] && [ $((now % 60)) -eq 0 ]; then
    if [ $((restarts % 2)) -eq 0 ]; then kill -9 "$COORD"; else kill -TERM "$COORD"; fi
    wait "$COORD" 2>/dev/null || true
    restarts=$((restarts + 1))
    start_coord
  fi
  if [ "$now" -gt 0 ] && [ $((now % 20)) -eq 0 ]; then
    kill -9 "$VICTIM" 2>/dev/null || true; wait "$VICTIM" 2>/dev/null || true
    kills=$((kills + 1)); sleep 3
    VICTIM=$(start_agent victim)
  fi
  sleep 1
done

# Let the last round finish and every spool drain (agents re-send what is unacked).
end=$((START + ROUNDS * EVERY + 30))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 2
  printf '%s\t%s\t%s\n' "$(($(date +%s) - t0))" "$COORD" "$(rss_kb "$COORD")" >>"$WORK/rss.tsv"
done
for _ in $(seq 60); do
  spooled=$(tm agents --json | python3 -c 'import json,sys; print(sum(a["spooled_results"] for a in json.load(sys.stdin)["agents"] if a["name"] != "garbage"))')
  [ "$spooled" = 0 ] && break
  sleep 1
done

tm traces --campaign "$ID" --json >"$WORK/traces.jsonl"
tm traces --vantage garbage --since 1970-01-01T00:00:00Z --json >"$WORK/garbage-traces.jsonl" || true
python3 - "$WORK" "$ROUNDS" "${#TARGETS[@]}" "$restarts" "$kills" <<'EOF'
import collections, json, sys
work, rounds, targets, restarts, kills = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
recs = [json.loads(l) for l in open(f"{work}/traces.jsonl")]
keys = collections.Counter((r["round"], r["vantage"], r["dst"]) for r in recs)
dups = sum(n - 1 for n in keys.values() if n > 1)
per = collections.Counter(r["vantage"] for r in recs)
expected = rounds * targets
ok = True
print(f"soak: {restarts} coordinator restarts, {kills} victim kills")
for v in ["steady-0", "steady-1", "steady-2", "victim"]:
    print(f"soak: {v:<9} stored {per.get(v, 0):>5} of {expected} expected")
    if v != "victim" and per.get(v, 0) != expected:
        ok = False
    if per.get(v, 0) > expected:
        ok = False
strangers = set(per) - {"steady-0", "steady-1", "steady-2", "victim"}
print(f"soak: duplicates {dups}; vantages other than the campaign's: {sorted(strangers) or 'none'}")
ok &= dups == 0 and not strangers
junk = [json.loads(l) for l in open(f"{work}/garbage-traces.jsonl")]
claimed = sum(1 for r in junk if r["vantage"] != "garbage")
print(f"soak: garbage agent: {len(junk)} of its own junk traces stored (valid-looking ones, under its own name), {claimed} under another name")
ok &= claimed == 0
rows = [l.split("\t") for l in open(f"{work}/rss.tsv").read().split("\n")[1:] if l]
by_pid = collections.OrderedDict()
for t, pid, kb in rows:
    if int(kb) > 0:
        by_pid.setdefault(pid, []).append((int(t), int(kb)))
for pid, s in by_pid.items():
    print(f"soak: coordinator pid {pid}: RSS {s[0][1]/1024:.1f} MiB at t={s[0][0]}s -> {s[-1][1]/1024:.1f} MiB at t={s[-1][0]}s ({len(s)} samples)")
print("soak: RSS curve (t_s MiB): " + " ".join(f"{t}:{kb/1024:.0f}" for t, _, kb in ((int(a), b, int(c)) for a, b, c in rows) if kb))
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
EOF
tail -1 "$WORK/garbage.log" 2>/dev/null || true
