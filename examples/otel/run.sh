#!/usr/bin/env bash
# The echo demo with its traces going to a real OpenTelemetry collector (rotel, from PyPI), which
# prints every span it receives. Open http://localhost:8080, Connect, Send, Close Socket, and
# watch the handshake (GET /ws) and websocket.session spans arrive below. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x .venv-otel/bin/python ]; then
  python3 -m venv .venv-otel
fi
.venv-otel/bin/pip install -q rotel==0.0.1a15
agent=$(ls .venv-otel/lib/python3*/site-packages/rotel/rotel-agent | head -n 1)

"$agent" start --exporter blackhole --debug-log traces --debug-log-verbosity detailed \
  --otlp-grpc-endpoint 127.0.0.1:4317 --otlp-http-endpoint 127.0.0.1:4318 &
collector=$!
trap 'kill $collector 2>/dev/null || true' EXIT

# The demo runs the echo backend on :3000 and Tether on :8080 with the embedded default; the
# environment points its exporter at the collector.
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_SERVICE_NAME=tether-demo \
  cargo run --release -p tether-examples --bin demo
