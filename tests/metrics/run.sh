#!/usr/bin/env bash
# Prometheus metrics of a real run, parsed by the reference Python parser (PyPI
# prometheus-client): a real coordinator (`serve --metrics`) and one real agent
# (`run --metrics`) tracing loopback as root; the coordinator's count of ingested traces
# must equal the traces stored. Then the live view (`serve --http`) in headless Chromium.
# Needs the workspace built, python3 with venv, and chromium.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TRACEMESH_BIN:-target/debug}
WORK=$(mktemp -d)
cleanup() { kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q prometheus-client

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(port); CM=$(port); AM=$(port); HTTP=$(port)
# Live detection on (an adversary nobody meets on loopback) so that the live view and
# the diversion gauges are there too.
printf '127.0.0.0\t8\t64500\n' >"$WORK/pfx2as.txt"
"$BIN/tracemesh" serve --data "$WORK/coord" --listen "127.0.0.1:$PORT" \
  --metrics "127.0.0.1:$CM" --http "127.0.0.1:$HTTP" \
  --adversary 64512 --pfx2as "$WORK/pfx2as.txt" >"$WORK/serve.log" 2>&1 &
for _ in $(seq 50); do [ -f "$WORK/coord/coordinator.addr" ] && break; sleep 0.2; done
TOKEN=$("$BIN/tracemesh" --data "$WORK/coord" token create --name metrics-agent --country CA)
"$BIN/tracemesh-agent" run --state "$WORK/agent" --token "$TOKEN" --allow 127.0.0.0/8 \
  --metrics "127.0.0.1:$AM" >"$WORK/agent.log" 2>&1 &
for _ in $(seq 50); do
  "$BIN/tracemesh" --data "$WORK/coord" agents --json | grep -q '"connected":true' && break
  sleep 0.2
done
ID=$("$BIN/tracemesh" --data "$WORK/coord" campaign create --targets 127.0.0.1 127.0.0.2 127.0.0.3 \
      --every 1s --rounds 3 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 100); do
  n=$("$BIN/tracemesh" --data "$WORK/coord" traces --campaign "$ID" --json | wc -l)
  [ "$n" -ge 9 ] && break
  sleep 0.2
done
# Acknowledgements (and the agent's spool deletions) follow the flush; give them a moment.
sleep 1
STORED=$("$BIN/tracemesh" --data "$WORK/coord" traces --since 1970-01-01T00:00:00Z --json | wc -l)
"$WORK/venv/bin/python" tests/metrics/check_metrics.py \
  --coordinator "http://127.0.0.1:$CM/metrics" --agent "http://127.0.0.1:$AM/metrics" \
  --stored "$STORED" --expect-traces 9 --dashboard deploy/grafana/tracemesh.json
# The live view in headless Chromium: drawn, no console error, nothing fetched from
# anywhere but itself (no diversions on loopback: no paths, no ingress markers).
echo '{"diversions": [], "incidents": []}' >"$WORK/none.json"
python3 tests/report/check_report.py "http://127.0.0.1:$HTTP/" --diversions "$WORK/none.json"
