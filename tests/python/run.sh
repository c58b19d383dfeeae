#!/usr/bin/env bash
# Runs the grpcio consumer against a real coordinator with one real agent on loopback.
# Needs the workspace built (target/debug) and python3 with venv; installs grpcio.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${TRACEMESH_BIN:-target/debug}
WORK=$(mktemp -d)
cleanup() { kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q grpcio grpcio-tools

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/tracemesh" serve --data "$WORK/coord" --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
for _ in $(seq 50); do [ -f "$WORK/coord/coordinator.addr" ] && break; sleep 0.2; done
TOKEN=$("$BIN/tracemesh" --data "$WORK/coord" token create --name py-agent --country CA)
"$BIN/tracemesh-agent" run --state "$WORK/agent" --token "$TOKEN" --allow 127.0.0.0/8 >"$WORK/agent.log" 2>&1 &
for _ in $(seq 50); do
  "$BIN/tracemesh" --data "$WORK/coord" agents --json | grep -q '"connected":true' && break
  sleep 0.2
done
ID=$("$BIN/tracemesh" --data "$WORK/coord" campaign create --targets 127.0.0.1 127.0.0.2 \
      --every 1s --rounds 2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 100); do
  n=$("$BIN/tracemesh" --data "$WORK/coord" traces --campaign "$ID" --json | wc -l)
  [ "$n" -ge 4 ] && break
  sleep 0.2
done
# The consumer holds a reader identity: it may query and subscribe, nothing else.
READER=$("$BIN/tracemesh" --data "$WORK/coord" identity create --role reader --name py-consumer --out "$WORK/ids")
"$WORK/venv/bin/python" tests/python/consumer.py "$WORK/coord" "$ID" --identity "$READER" \
  --expect-agents 1 --expect-traces 4 --expect-read-only
