#!/usr/bin/env bash
# How many sessions Tether holds to one backend IP:port, with the source address left to the
# kernel and with three `source_addresses`, when the ephemeral port range is narrowed to 1,000
# ports (so the limit shows at 1,000 sessions instead of 28,232).
#
# Each case runs in a network namespace of its own (root needed): the narrowed
# net.ipv4.ip_local_port_range is that namespace's, never the host's, and each case starts
# without the TIME_WAIT sockets of the one before. Inside it: fast_echo (the backend), Tether
# (`bench/tether.toml`, workers = 1) and `load idle`, which opens SESSIONS sessions from client
# addresses spread over 127.0.0.0/8 and reports how many got their 101.
#
#   bash bench/source_addresses.sh            # builds the release binaries first
#   BIN=target/debug bash bench/source_addresses.sh
#
# Variables: SESSIONS [3500], PORTS ["40000 40999"], SOURCES ["127.1.0.1,127.1.0.2,127.1.0.3"]
# (outside 127.0.0.0/16, which the load tool's clients use).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-3500}
PORTS=${PORTS:-40000 40999}
SOURCES=${SOURCES:-127.1.0.1,127.1.0.2,127.1.0.3}
if [[ -z ${BIN:-} ]]; then
    cargo build --release -p tether --bin tether -p tether-examples --bin load --bin fast_echo
    BIN=target/release
fi
OUT=$(mktemp -d)
NS=tether-srcaddr-$$

cleanup() {
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

# one_case LABEL SOURCE_ADDRESSES [MEMBERS]: prints the sessions opened and the no_local_port
# failures counted. MEMBERS (1) backends, on ports 18180, 18190, ...
one_case() {
    local label=$1 sources=$2 members=${3:-1} list="" port
    ip netns add "$NS"
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="$PORTS"
    for ((i = 0; i < members; i++)); do
        port=$((18180 + 10 * i))
        list+="${list:+,}127.0.0.1:$port"
        ip netns exec "$NS" bash -c "ulimit -n 20000; exec $BIN/fast_echo --listen 127.0.0.1:$port" \
            >"$OUT/$label.fast_echo$i.log" 2>&1 &
        ip netns exec "$NS" "$BIN/load" wait --url "http://127.0.0.1:$port/" --timeout 15s
    done
    ip netns exec "$NS" env TETHER_BACKEND_SETTINGS__ECHO__SOURCE_ADDRESSES="$sources" \
        TETHER_BACKEND_POOLS__ECHO__MEMBERS="$list" \
        TETHER_ADMIN__BIND=127.0.0.1:18184 \
        bash -c "ulimit -n 20000; exec $BIN/tether --config bench/tether.toml" \
        >"$OUT/$label.tether.log" 2>&1 &
    ip netns exec "$NS" "$BIN/load" wait --url http://127.0.0.1:18183/ --timeout 15s
    local pid
    pid=$(ip netns pids "$NS" | while read -r p; do
        [[ $(cat "/proc/$p/comm") == tether ]] && echo "$p"; done)
    ip netns exec "$NS" bash -c "ulimit -n 20000; exec $BIN/load idle \
        --url ws://127.0.0.1:18183/ws --pid $pid --sessions $SESSIONS --label $label" \
        >"$OUT/$label.json" 2>"$OUT/$label.load.log" || true
    local failures
    failures=$(ip netns exec "$NS" "$BIN/load" wait --url http://127.0.0.1:18184/metrics \
        --timeout 5s >/dev/null 2>&1; ip netns exec "$NS" bash -c \
        "exec 3<>/dev/tcp/127.0.0.1/18184; printf 'GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' >&3; cat <&3" \
        | grep 'reason="no_local_port"' || true)
    python3 - "$OUT/$label.json" "$label" "$sources" "$list" "$failures" <<'EOF'
import json, sys
path, label, sources, members, failures = sys.argv[1:]
record = json.loads(open(path).read().strip().splitlines()[-1])
m = record["metrics"]
failed = " ".join(line.split()[-1] for line in failures.splitlines())
print(f"{label}: source_addresses=[{sources}] members=[{members}] opened={int(m['opened'])}"
      f" of {int(m['sessions'])}; no_local_port by member: {failed}")
EOF
    cleanup
}

# start_pair SOURCE_ADDRESSES: a fresh namespace (default port range) with fast_echo on core 0
# and Tether on core 1; sets PID to Tether's.
start_pair() {
    ip netns add "$NS"
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" bash -c "ulimit -n 20000; exec taskset -c 0 $BIN/fast_echo --listen 127.0.0.1:18180" \
        >/dev/null 2>&1 &
    ip netns exec "$NS" "$BIN/load" wait --url http://127.0.0.1:18180/ --timeout 15s
    ip netns exec "$NS" env TETHER_BACKEND_SETTINGS__ECHO__SOURCE_ADDRESSES="$1" \
        TETHER_ADMIN__BIND=127.0.0.1:18184 \
        bash -c "ulimit -n 20000; exec taskset -c 1 $BIN/tether --config bench/tether.toml" \
        >/dev/null 2>&1 &
    ip netns exec "$NS" "$BIN/load" wait --url http://127.0.0.1:18183/ --timeout 15s
    PID=$(ip netns pids "$NS" | while read -r p; do
        [[ $(cat "/proc/$p/comm") == tether ]] && echo "$p"; done)
}

# handshakes LABEL DURATION: `load handshake` against the running pair; its record to $OUT.
handshakes() {
    ip netns exec "$NS" taskset -c 0 "$BIN/load" handshake --url ws://127.0.0.1:18183/ws \
        --pid "$PID" --workers 8 --duration "$2" --label "$1" >"$OUT/$1.handshake.json" 2>/dev/null
}

# syscalls LABEL SOURCE_ADDRESSES: system calls per handshake, under strace.
syscalls() {
    start_pair "$2"
    strace -f -c -o "$OUT/$1.strace" -p "$PID" 2>/dev/null &
    local tracer=$!
    handshakes "$1" 2s
    kill -INT "$tracer"
    wait "$tracer" || true
    python3 bench/per_handshake.py syscalls "$OUT/$1.strace" "$1"
    cleanup
}

# cpu LABEL SOURCE_ADDRESSES: CPU µs per handshake, no tracer.
cpu() {
    start_pair "$2"
    handshakes "$1" 3s
    python3 bench/per_handshake.py cpu "$OUT/$1.handshake.json" "$1"
    cleanup
}

echo "ip_local_port_range=\"$PORTS\" in each case's own network namespace; $SESSIONS sessions asked"
one_case kernel ""
one_case one "${SOURCES%%,*}"
one_case three "$SOURCES"
# One address, two members: ports are per 4-tuple (IP_BIND_ADDRESS_NO_PORT), so ~1,000 each.
one_case one_two_members "${SOURCES%%,*}" 2
if [[ ${COST:-0} == 1 ]]; then
    echo "cost of a connect (default port range), the kernel's address vs [$SOURCES];" \
        "load average $(cut -d' ' -f1-3 /proc/loadavg)"
    syscalls kernel ""
    syscalls three "$SOURCES"
    for pair in $(seq 1 "${PAIRS:-4}"); do
        if ((pair % 2)); then
            cpu kernel ""
            cpu three "$SOURCES"
        else
            cpu three "$SOURCES"
            cpu kernel ""
        fi
    done
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
fi
echo "logs and records: $OUT"
