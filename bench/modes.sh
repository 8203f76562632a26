#!/usr/bin/env bash
# What Tether's own features cost: frames mode (the default) against opaque mode, tracing on
# (sampler 100%, exporting to a real collector) against off, and every per-session limit
# configured but never hit (`limits`: message and byte rates far above the load, max_session_age
# 1h, slow_consumer_timeout at its default) — on 64-byte echo and on handshakes,
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
# Which variants run (a build from before the limits existed knows only frames and opaque).
VARIANTS=${VARIANTS:-frames opaque traced limits}
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

WS=TETHER_ROUTING_RULES__ECHO__WEBSOCKET_
for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    case $v in
      frames) run_variant frames ;;
      opaque) run_variant opaque "${WS}_INSPECT=opaque" ;;
      traced) if [ -n "$agent" ]; then
          run_variant traced OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18317
        fi ;;
      limits) run_variant limits "${WS}_MAX_MESSAGES_PER_SECOND=1000000000" \
          "${WS}_MAX_BYTES_PER_SECOND=100GiB" "${WS}_MAX_SESSION_AGE=1h" \
          "${WS}_MAX_NEW_SESSIONS_PER_SECOND=1000000" ;;
    esac
  done
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
print("| scenario | figure | frames | opaque | frames+tracing | frames+limits |")
print("|---|---|---:|---:|---:|---:|")
for scenario, key in (("echo", "msgs_per_s"), ("echo", "cpu_us_per_msg"),
                      ("handshake", "handshakes_per_s"), ("handshake", "cpu_us_per_handshake")):
    cells = []
    for label in ("frames", "opaque", "traced", "limits"):
        v = rows.get((scenario, key, label))
        cells.append(f"{statistics.median(v):,.2f}" if v else "—")
    print(f"| {scenario} | {key} | " + " | ".join(cells) + " |")
PY
