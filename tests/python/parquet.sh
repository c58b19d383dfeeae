#!/usr/bin/env bash
# Parquet for the tools people already use: imports the real Atlas and scamper files
# from ../shared/data into a fresh coordinator, exports them as Hive-partitioned Parquet
# with origin ASes from the shared prefix table, and checks that DuckDB and Spark
# (local mode, OpenJDK 17) count the same traces, hops and per-AS hops as
# `tracemesh traces --json`. Installs duckdb and pyspark into a venv; Java must be on
# the PATH (Debian: openjdk-17-jre-headless). Needs ../shared/data: fails without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TRACEMESH_BIN:-target/debug}
SHARED=${SHARED:-../shared/data}
[ -d "$SHARED/atlas" ] && [ -d "$SHARED/scamper" ] && [ -f "$SHARED/asn/ipasn6_20151101.dat.gz" ] ||
  { echo "parquet.sh needs $SHARED (atlas, scamper, asn)" >&2; exit 1; }
command -v java >/dev/null || { echo "parquet.sh needs java (openjdk-17-jre-headless)" >&2; exit 1; }
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# VENV: an existing venv with both (development); CI makes a fresh one.
PY=${VENV:-$WORK/venv}/bin/python
export SPARK_LOCAL_IP=127.0.0.1
if [ -z "${VENV:-}" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q duckdb pyspark
fi

D="$WORK/coord"
"$BIN/tracemesh" --data "$D" import --format atlas "$SHARED"/atlas/*.json "$SHARED"/atlas/*.jsonl
"$BIN/tracemesh" --data "$D" import --format warts "$SHARED"/scamper/*.warts
"$BIN/tracemesh" --data "$D" import --format scamper-json "$SHARED"/scamper/mlab-*.jsonl
"$BIN/tracemesh" --data "$D" serve --listen 127.0.0.1:0 >"$WORK/serve.log" 2>&1 &
for _ in $(seq 100); do [ -s "$D/coordinator.addr" ] && break; sleep 0.2; done
PFX=(--pfx2as "$SHARED/asn/ipasn6_20151101.dat.gz")
"$BIN/tracemesh" --data "$D" traces --since 1970-01-01T00:00:00Z --json "${PFX[@]}" >"$WORK/traces.jsonl"
"$BIN/tracemesh" --data "$D" export --format parquet --out "$WORK/parquet" "${PFX[@]}"
find "$WORK/parquet" -name '*.parquet' | sort | sed "s|$WORK/||"
"$PY" tests/python/parquet_check.py "$WORK/parquet" "$WORK/traces.jsonl" "$@"
