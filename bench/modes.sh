#!/usr/bin/env bash
# What Tether's own features cost: frames mode (the default) against opaque mode, and tracing on
# (sampler 100%, exporting to a real collector) against off — on 64-byte echo and on handshakes,
# interleaved rounds, medians. Tether pinned to PROXY_CORE with one worker; the load tool and the
# backend on LOAD_CORE. Needs release binaries (cargo build --release -p tether -p tether-examples
# --bins) and, for the traced variant, the rotel collector in .venv-otel (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2s}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
BIN=${BIN:-target/release}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

taskset -c "$LOAD_CORE" "$BIN/fast_echo" --listen 127.0.0.1:18180 >"$OUT/echo.log" 2>&1 &
agent=$(ls .venv-otel/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n 1 || true)
if [ -n "$agent" ]; then
  taskset -c "$LOAD_CORE" "$agent" start --exporter blackhole --otlp-grpc-endpoint 127.0.0.1:18317 \
    --otlp-http-endpoint 127.0.0.1:18318 >"$OUT/rotel.log" 2>&1 &
fi

run_variant() { # name, extra env...
  local name=$1; shift
  env "$@" taskset -c "$PROXY_CORE" "$BIN/tether" --config bench/tether.toml 2>"$OUT/$name.log" &
  local pid=$!
  "$BIN/load" wait --url http://127.0.0.1:18183/ --timeout 20s >/dev/null
  taskset -c "$LOAD_CORE" "$BIN/load" echo --url ws://127.0.0.1:18183/ws --pid "$pid" --size 64 \
    --connections 64 --window 16 --duration "$DURATION" --label "$name" --out "$OUT/raw.jsonl"
  taskset -c "$LOAD_CORE" "$BIN/load" handshake --url ws://127.0.0.1:18183/ws --pid "$pid" \
    --workers 32 --duration "$DURATION" --label "$name" --out "$OUT/raw.jsonl"
  kill -TERM "$pid"; wait "$pid" || true
}

for round in $(seq 1 "$ROUNDS"); do
  run_variant frames
  run_variant opaque TETHER_ROUTING_RULES__ECHO__WEBSOCKET__INSPECT=opaque
  if [ -n "$agent" ]; then
    run_variant traced OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18317
  fi
done

python3 - "$OUT/raw.jsonl" <<'PY'
import json, statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    label, scenario, m = r.get("label"), r.get("scenario", ""), r.get("metrics", r)
    scenario = scenario.split("_")[0]
    for key in ("msgs_per_s", "cpu_us_per_msg", "handshakes_per_s", "cpu_us_per_handshake"):
        if key in m:
            rows[(scenario, key, label)].append(m[key])
print("| scenario | figure | frames | opaque | frames+tracing |")
print("|---|---|---:|---:|---:|")
for scenario, key in (("echo", "msgs_per_s"), ("echo", "cpu_us_per_msg"),
                      ("handshake", "handshakes_per_s"), ("handshake", "cpu_us_per_handshake")):
    cells = []
    for label in ("frames", "opaque", "traced"):
        v = rows.get((scenario, key, label))
        cells.append(f"{statistics.median(v):,.2f}" if v else "—")
    print(f"| {scenario} | {key} | " + " | ".join(cells) + " |")
PY
