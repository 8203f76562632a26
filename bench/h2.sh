#!/usr/bin/env bash
# HTTP/2 figures (issue 14): h2c requests through Tether, nginx (`listen … http2`) and HAProxy
# (`bind … proto h2`), one worker each pinned to one core, driven by h2load; and the proxy CPU
# per echoed WebSocket message over HTTP/2 (RFC 8441) next to HTTP/1.1, through Tether.
#
#   bash bench/h2.sh
#
# From a fresh clone: installs nginx, HAProxy, h2load (Debian's nghttp2-client) and the Python
# `h2` library (into .venv-clients) if missing, builds release binaries, and prints a markdown
# table of medians over interleaved rounds (written to bench/out/h2-<date>.md).
#
# Knobs: ROUNDS [5], REQUESTS [100000] per h2load run, CLIENTS [8] connections, STREAMS [10]
# concurrent streams per connection, MESSAGES [50000] per echo run, SIZE [64] bytes per message,
# WINDOW [16] messages in flight, PROXY_CORE [1], LOAD_CORE [0], BASE_PORT [18280],
# TETHER_BIN [target/release/tether] the Tether binary to measure, H2_RAW (set by bench/run.sh):
# also append every run as a JSON record to this file, so the figures join run.sh's table.
# CPU is the proxy's user + system time (/proc/PID/stat of every process of it) over the run.
# Only 127.0.0.1 is contacted, apart from apt and pip.

set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-5}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-8}
STREAMS=${STREAMS:-10}
MESSAGES=${MESSAGES:-50000}
SIZE=${SIZE:-64}
WINDOW=${WINDOW:-16}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
BASE_PORT=${BASE_PORT:-18280}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
TETHER=${TETHER_BIN:-$BIN/tether}
H2_RAW=${H2_RAW:-}
export PATH=$PATH:/usr/sbin:/sbin
BACKEND_PORT=$BASE_PORT
declare -A PORT=([nginx]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [tether]=$((BASE_PORT + 3)))
STAMP=$(date -u +%Y-%m-%d-%H%M%S)
RUN=$ROOT/bench/out/h2-run-$STAMP
mkdir -p "$RUN/nginx-tmp"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ ! -x .venv-clients/bin/python ]; then
    python3 -m venv .venv-clients
    .venv-clients/bin/pip install --quiet -r integration-tests/python/requirements.txt
fi
if [ -n "${TETHER_BIN:-}" ]; then
    cargo build --release -p tether-examples --bin fast_echo
else
    cargo build --release -p tether --bin tether -p tether-examples --bin fast_echo
fi

cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $RUN/nginx-tmp/body;
    proxy_temp_path $RUN/nginx-tmp/proxy;
    fastcgi_temp_path $RUN/nginx-tmp/fastcgi;
    uwsgi_temp_path $RUN/nginx-tmp/uwsgi;
    scgi_temp_path $RUN/nginx-tmp/scgi;
    upstream echo { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:${PORT[nginx]} http2;
        http2_max_concurrent_streams 100;
        keepalive_requests 10000000;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:${PORT[haproxy]} proto h2
    default_backend echo
backend echo
    server echo 127.0.0.1:$BACKEND_PORT
EOF

declare -A PID=()
cleanup() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c "$LOAD_CORE" "$BIN/fast_echo" --listen "127.0.0.1:$BACKEND_PORT" >"$RUN/fast_echo.log" 2>&1 &
PID[backend]=$!
taskset -c "$PROXY_CORE" nginx -p "$RUN/" -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log" >"$RUN/nginx.log" 2>&1 &
PID[nginx]=$!
taskset -c "$PROXY_CORE" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
PID[haproxy]=$!
# `-u TETHER_BIN`: Tether reads every TETHER_* variable as configuration.
env -u TETHER_BIN TETHER_LISTENERS__BENCH__BIND="127.0.0.1:${PORT[tether]}" TETHER_ADMIN__BIND="127.0.0.1:$((BASE_PORT + 4))" \
    TETHER_BACKEND_POOLS__ECHO__MEMBERS="127.0.0.1:$BACKEND_PORT" \
    taskset -c "$PROXY_CORE" "$TETHER" --config bench/tether.toml >"$RUN/tether.log" 2>&1 &
PID[tether]=$!

# Every port answers before anything is measured (bounded: 150 tries, 100 ms apart).
for port in "$BACKEND_PORT" "${PORT[@]}"; do
    for i in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        [ "$i" = 150 ] && { echo "bench: nothing listens on $port" >&2; exit 1; }
        sleep 0.1
    done
done

# CPU ticks (user + system) of a process and its children threads.
ticks() {
    local pids=("$1") total=0 p
    for p in $(pgrep -P "$1" || true); do pids+=("$p"); done
    for p in "${pids[@]}"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

# record SCENARIO LABEL ROUND NAME VALUE NAME VALUE PARAMS: one JSON line in bench/run.sh's
# record format, appended to H2_RAW when it is set (a figure that is not a number is left out).
record() {
    [ -n "$H2_RAW" ] || return 0
    local metrics="" name value
    for name in "$4" "$6"; do
        [ "$name" = "$4" ] && value=$5 || value=$7
        [[ $value =~ ^[0-9]+(\.[0-9]+)?$ ]] || continue
        metrics+="${metrics:+,}\"$name\":$value"
    done
    printf '{"scenario":"%s","label":"%s","round":%s,"pids":[],"params":{%s},"metrics":{%s}}\n' \
        "$1" "$2" "$3" "$8" "$metrics" >>"$H2_RAW"
}

results=$RUN/results.tsv
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for p in nginx haproxy tether; do
        before=$(ticks "${PID[$p]}")
        out=$(taskset -c "$LOAD_CORE" h2load -n "$REQUESTS" -c "$CLIENTS" -m "$STREAMS" -t 1 \
            "http://127.0.0.1:${PORT[$p]}/" 2>&1)
        after=$(ticks "${PID[$p]}")
        rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
        ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
        cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="${ok:-0}" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "nan" }')
        printf 'h2_requests\t%s\t%s\t%s\t%s\n' "$p" "$round" "$rps" "$cpu_us" >>"$results"
        record h2_requests "$p" "$round" reqs_per_s "${rps:-nan}" cpu_us_per_req "$cpu_us" \
            "\"clients\":$CLIENTS,\"streams\":$STREAMS,\"requests\":$REQUESTS"
        echo "round $round $p: ${rps} req/s, ${ok} 2xx, ${cpu_us} µs CPU/request"
    done
    for mode in http1 h2; do
        before=$(ticks "${PID[tether]}")
        out=$(taskset -c "$LOAD_CORE" .venv-clients/bin/python bench/ws_echo_client.py "--$mode" 127.0.0.1 \
            "${PORT[tether]}" "$MESSAGES" "$SIZE" "$WINDOW")
        after=$(ticks "${PID[tether]}")
        n=$(sed -n 's/.*"messages": \([0-9]*\).*/\1/p' <<<"$out")
        secs=$(sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p' <<<"$out")
        cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
        rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
        printf 'ws_echo_%s\ttether\t%s\t%s\t%s\n' "$mode" "$round" "$rate" "$cpu_us" >>"$results"
        record "ws_echo_$mode" tether "$round" msgs_per_s "$rate" cpu_us_per_msg "$cpu_us" \
            "\"messages\":$MESSAGES,\"size\":$SIZE,\"window\":$WINDOW"
        echo "round $round tether ws over $mode: $rate msg/s, $cpu_us µs CPU/message"
    done
done

median() { sort -n | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
{
    echo "# HTTP/2 figures, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "\`ROUNDS=$ROUNDS bash bench/h2.sh\` at $(git rev-parse --short HEAD); $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)); proxies on core $PROXY_CORE, one worker each; load on core $LOAD_CORE; medians of $ROUNDS interleaved rounds."
    echo "$(nginx -v 2>&1 | sed 's|.*/|nginx |'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(h2load --version 2>&1 | head -1)."
    echo
    echo "| figure | proxy | rate (median) | proxy CPU µs per request or message (median, min–max) |"
    echo "|---|---|---|---|"
    for scenario in h2_requests ws_echo_http1 ws_echo_h2; do
        for p in nginx haproxy tether; do
            rows=$(awk -F'\t' -v s="$scenario" -v p="$p" '$1 == s && $2 == p' "$results")
            [ -n "$rows" ] || continue
            rate=$(cut -f4 <<<"$rows" | median)
            cpu=$(cut -f5 <<<"$rows" | median)
            lo=$(cut -f5 <<<"$rows" | sort -n | head -1)
            hi=$(cut -f5 <<<"$rows" | sort -n | tail -1)
            case $scenario in
                h2_requests) what="h2c GET, h2load -c $CLIENTS -m $STREAMS"; unit="req/s" ;;
                ws_echo_http1) what="WebSocket echo ${SIZE} B over HTTP/1.1, window $WINDOW"; unit="msg/s" ;;
                ws_echo_h2) what="WebSocket echo ${SIZE} B over HTTP/2 (RFC 8441), window $WINDOW"; unit="msg/s" ;;
            esac
            echo "| $what | $p | $rate $unit | $cpu ($lo–$hi) |"
        done
    done
} | tee "$ROOT/bench/out/h2-$STAMP.md"
