#!/usr/bin/env bash
# Bounded coverage-guided fuzzing with cargo-afl (AFL++), on stable Rust.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]        (default 30)
#
# Installs cargo-afl if it is missing, builds the four targets instrumented, seeds each
# from the real encoders (fuzz_seeds), runs afl-fuzz for the given time per target and
# prints one line per target: executions, paths found, crashes, hangs. Any crash or
# hang fails the run; its input is copied to out/fuzz/TARGET/ so that it can be added to
# fuzz/regressions/TARGET/ (replayed by `cargo test -p tracemesh-fuzz`) once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
TARGETS=(${FUZZ_TARGETS:-reply spool scenario grpc import})

if ! cargo afl --version >/dev/null 2>&1; then
  cargo install --locked cargo-afl
fi
# Builds AFL++ itself (afl-fuzz and its runtime) once per toolchain; quiet when done.
cargo afl config --build >/dev/null 2>&1 || true

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  AFL_NO_AFFINITY=1 AFL_QUIET=1
T=${CARGO_TARGET_DIR:-target}/afl
cargo afl build --locked -p tracemesh-fuzz --features afl --bins --target-dir "$T"

mkdir -p out
WORK=$(mktemp -d "$PWD/out/fuzz-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$T/debug/fuzz_seeds" "$WORK/in"
mkdir -p "$WORK/out"
mkdir -p out/fuzz
failed=0
for t in "${TARGETS[@]}"; do
  # -V: stop after SECS seconds; -t: 1 s per input is a hang (the parsers take µs).
  cargo afl fuzz -V "$SECS" -t 1000 -i "$WORK/in/$t" -o "$WORK/out/$t" \
    "$T/debug/fuzz_$t" >"$WORK/$t.log" 2>&1 || {
      echo "afl-fuzz failed on $t:"; tail -20 "$WORK/$t.log"; exit 1; }
  stats="$WORK/out/$t/default/fuzzer_stats"
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  crashes=$(get saved_crashes); hangs=$(get saved_hangs)
  printf 'fuzz %-9s %10s execs in %3s s (%s/s), %5s paths, %s crashes, %s hangs\n' \
    "$t" "$(get execs_done)" "$(get run_time)" "$(get execs_per_sec)" "$(get corpus_count)" \
    "$crashes" "$hangs"
  if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
    mkdir -p "out/fuzz/$t"
    cp "$WORK/out/$t/default/crashes/"id* "$WORK/out/$t/default/hangs/"id* "out/fuzz/$t/" 2>/dev/null || true
    echo "fuzz $t: inputs that crash or hang are in out/fuzz/$t/"
    failed=1
  fi
done
exit "$failed"
