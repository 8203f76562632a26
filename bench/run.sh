#!/usr/bin/env bash
# Tether against nginx and HAProxy, on one machine, in one run (issues 8 and 17).
#
#   bash bench/run.sh
#
# From a fresh clone: installs nginx, HAProxy, wrk and strace from Debian packages if they are
# missing, builds release binaries, applies any kernel settings asked for (SYSCTLS, restored on
# exit), starts the fast echo backend and the three proxies (one worker each, all pinned to the
# same core), runs every scenario interleaved (the proxies' order rotates every round) for
# several rounds, then the system-call step (strace -c per operation), two Tether-only steps
# (the scale check: a fresh Tether holds as many idle sessions as the open-file limit allows,
# then drains them on SIGTERM; the workers step: echo with `workers = 1` and `workers = 2`,
# unpinned) and the HTTP/2 step (bench/h2.sh). It prints issue 17's table (median and min–max
# of every figure, the targets), then every other figure. Results:
# bench/out/results-<date>.{md,json}; raw records and logs: bench/out/run-<date>/.
#
# Knobs (environment variables, defaults in brackets):
#   ROUNDS [5]             rounds; every figure is the median over rounds, shown with its min–max
#   TETHER_BIN [target/release/tether]  the Tether binary to measure (then only the load tool and
#                          the backend are built)
#   BASE_BIN               a second Tether binary, measured as the proxy `base` when PROXIES
#                          names it (bench/ab.sh: PROXIES="base tether", a before/after table)
#   SYSCTLS [empty]        kernel settings for the run ("key=value ..."), each restored on exit;
#                          empty keeps the machine's (bench/README.md, "4 KiB bistability": fixing
#                          the congestion control did not steady the 4 KiB rates)
#   IDLE_HTTP [1]          0 skips the idle HTTP scenario (plain connections, no request)
#   IDLE_HTTP_CONNS [max]  its connections; max = as many as IDLE_SESSIONS
#   SYSCALLS [1]           0 skips the system-call step (strace -f -c on each proxy during a
#                          handshake run and a 64 B echo run, SYSCALL_DURATION [2s] each)
#   DURATION [2s]          measured time of echo, handshake and HTTP runs
#   LATENCY_DURATION [4s]  measured time of latency runs
#   WARMUP [500ms]         unmeasured run-in before each echo, latency and handshake run
#   RATE [5000]            total messages/s of the latency scenario
#   IDLE_SESSIONS [max]    idle sessions held in the rounds; max = as many as the open-file limit
#                          allows ((ulimit -n - 200) / 2: the proxy holds two descriptors each)
#   SCALE [1]              0 skips the scale step (drain scenario against a fresh Tether)
#   SCALE_SESSIONS [max]   idle sessions of the scale step; max as for IDLE_SESSIONS
#   SCALE_GRACE [30s]      Tether's shutdown_grace in the scale step (TETHER_SHUTDOWN_GRACE)
#   WORKERS2 [1]           0 skips the workers step (echo 64 B, workers = 1 against workers = 2)
#   H2 [1]                 0 skips the HTTP/2 step (bench/h2.sh, H2_ROUNDS [ROUNDS] rounds: h2c
#                          requests through the three proxies with h2load, and WebSocket echo over
#                          RFC 8441; its figures join the table, and it writes its own
#                          bench/out/h2-<date>.md)
#   PROXIES ["nginx haproxy tether"]  the proxies of the rounds (and `base` with BASE_BIN)
#   SCENARIOS ["idle_http idle echo latency handshake http"]  the scenarios of the rounds
#   ECHO_SIZES ["64 4096"] message sizes of the echo scenario
#   PROXY_CORE [1]         the core every proxy is pinned to
#   LOAD_CORE [0]          the core of the load tool and the echo backend
#   BASE_PORT [18180]      backend on BASE_PORT, nginx +1, HAProxy +2, Tether +3 (admin +4);
#                          workers step: workers = 1 on +5 (admin +6), workers = 2 on +7 (+8);
#                          base on +9 (admin +10)
#   CARGO_TARGET_DIR       where cargo builds (default: target/)
#
# Every process this script starts is stopped by its pid when it exits. Nothing but 127.0.0.1
# (and client source addresses in 127.0.0.0/8) is ever contacted, apart from apt.

set -Eeuo pipefail

started_at=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-2s}
LATENCY_DURATION=${LATENCY_DURATION:-4s}
WARMUP=${WARMUP:-500ms}
RATE=${RATE:-5000}
IDLE_SESSIONS=${IDLE_SESSIONS:-max}
SCALE=${SCALE:-1}
SCALE_SESSIONS=${SCALE_SESSIONS:-max}
SCALE_GRACE=${SCALE_GRACE:-30s}
WORKERS2=${WORKERS2:-1}
IDLE_HTTP=${IDLE_HTTP:-1}
IDLE_HTTP_CONNS=${IDLE_HTTP_CONNS:-max}
SYSCALLS=${SYSCALLS:-1}
SYSCALL_DURATION=${SYSCALL_DURATION:-2s}
H2=${H2:-1}
SYSCTLS=${SYSCTLS:-}
PROXIES=${PROXIES:-"nginx haproxy tether"}
SCENARIOS=${SCENARIOS:-"idle_http idle echo latency handshake http"}
ECHO_SIZES=${ECHO_SIZES:-"64 4096"}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
BASE_PORT=${BASE_PORT:-18180}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
TETHER=${TETHER_BIN:-$BIN/tether}
BASE_BIN=${BASE_BIN:-}
export PATH=$PATH:/usr/sbin:/sbin

BACKEND_PORT=$BASE_PORT
declare -A PORT=([nginx]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [tether]=$((BASE_PORT + 3))
    [tether-w1]=$((BASE_PORT + 5)) [tether-w2]=$((BASE_PORT + 7)) [base]=$((BASE_PORT + 9)))
# Tether's admin endpoint (default 127.0.0.1:9901) moves next to its listener, so that two
# Tethers, or another engineer's, never fight over it.
declare -A ADMIN_PORT=([tether]=$((BASE_PORT + 4)) [tether-w1]=$((BASE_PORT + 6)) [tether-w2]=$((BASE_PORT + 8))
    [base]=$((BASE_PORT + 10)))
# Which binary each Tether runs.
declare -A TETHER_OF=([tether]=$TETHER [tether-w1]=$TETHER [tether-w2]=$TETHER [base]=$BASE_BIN)
case " $PROXIES " in
    *" base "*)
        if [ ! -x "$BASE_BIN" ]; then
            echo "bench: PROXIES names base, so BASE_BIN must be a Tether binary (got '$BASE_BIN')" >&2
            exit 64
        fi
        ;;
esac

STAMP=$(date -u +%Y-%m-%d-%H%M%S)
OUT=$ROOT/bench/out
RUN=$OUT/run-$STAMP
RAW=$RUN/raw.jsonl
mkdir -p "$RUN"
exec > >(tee "$RUN/run.log") 2>&1

say() { printf '\n== [%ds] %s\n' "$(($(date +%s) - started_at))" "$*"; }

# --- 1. Packages -------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
[ "$SYSCALLS" != 1 ] || command -v strace >/dev/null || need+=(strace)
if ((${#need[@]})); then
    say "installing ${need[*]} from Debian packages"
    # Debian 12's `nginx` has every module the benchmark needs (its `nginx-light` is now `nginx`
    # plus the echo module). Package services do not matter: ours run with our own configs.
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    if ! { "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$RUN/apt.log" 2>&1; then
        cat "$RUN/apt.log" >&2
        echo "bench: could not install ${need[*]}" >&2
        exit 1
    fi
fi

# --- 2. Build ----------------------------------------------------------------------------------
if [ -n "${TETHER_BIN:-}" ]; then
    say "building the load tool and backend (cargo, target dir $TARGET_DIR); Tether is $TETHER_BIN"
    cargo build --release -p tether-examples --bin load --bin fast_echo
    [ -x "$TETHER" ] || { echo "bench: TETHER_BIN=$TETHER is not an executable" >&2; exit 64; }
else
    say "building release binaries (cargo, target dir $TARGET_DIR)"
    cargo build --release -p tether --bin tether -p tether-examples --bin load --bin fast_echo
fi

# --- 3. Configuration --------------------------------------------------------------------------
NOFILE=$(ulimit -n)
# Each proxied session costs the proxy two descriptors; keep some for listeners and logs.
MAX_SESSIONS=$(((NOFILE - 200) / 2))
[ "$IDLE_SESSIONS" = max ] && IDLE_SESSIONS=$MAX_SESSIONS
[ "$SCALE_SESSIONS" = max ] && SCALE_SESSIONS=$MAX_SESSIONS
[ "$IDLE_HTTP_CONNS" = max ] && IDLE_HTTP_CONNS=$IDLE_SESSIONS
ALL_CORES=0-$(($(nproc) - 1))
mkdir -p "$RUN/nginx-tmp"
sed -e "s|@RUN_DIR@|$RUN|g" -e "s|@PORT@|${PORT[nginx]}|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
    -e "s|@NOFILE@|$NOFILE|g" -e "s|@MAX_CONNS@|$((NOFILE + NOFILE / 15 + 100))|g" bench/nginx.conf >"$RUN/nginx.conf"
sed -e "s|@PORT@|${PORT[haproxy]}|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
    -e "s|@MAX_CONNS@|$(((NOFILE - 100) / 2))|g" bench/haproxy.cfg >"$RUN/haproxy.cfg"

load() { taskset -c "$LOAD_CORE" "$BIN/load" "$@"; }

for port in "$BACKEND_PORT" "${PORT[@]}" "${ADMIN_PORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench: port $port on 127.0.0.1 is already in use; set BASE_PORT" >&2
        exit 1
    fi
done

# --- 4. Processes ------------------------------------------------------------------------------
declare -A PID=()        # the pid each proxy was started as
declare -A MEASURED=()   # --pid arguments: every process of the proxy
BACKEND_PID=
STRACE_PID=
declare -A SYSCTL_SAVED=() # kernel settings changed for the run: their values before

cleanup() {
    local pid key
    for pid in $STRACE_PID "${PID[@]}" $BACKEND_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $STRACE_PID "${PID[@]}" $BACKEND_PID; do
        wait "$pid" 2>/dev/null || true
    done
    for key in "${!SYSCTL_SAVED[@]}"; do
        if set_sysctl "$key=${SYSCTL_SAVED[$key]}"; then
            echo "bench: restored $key = ${SYSCTL_SAVED[$key]}"
        else
            echo "bench: could not restore $key to ${SYSCTL_SAVED[$key]}: do it by hand" >&2
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "bench: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

start_proxy() {
    local name=$1
    case $name in
        nginx)
            taskset -c "$PROXY_CORE" nginx -p "$RUN/" -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log" \
                >>"$RUN/nginx.log" 2>&1 &
            ;;
        haproxy)
            taskset -c "$PROXY_CORE" haproxy -db -f "$RUN/haproxy.cfg" >>"$RUN/haproxy.log" 2>&1 &
            ;;
        tether | base) start_tether "$name" "$PROXY_CORE"; return ;;
        *) echo "bench: unknown proxy $name" >&2; exit 1 ;;
    esac
    PID[$name]=$!
    measure_pids "$name"
}

# start_tether NAME CORES [VAR=VALUE...]: Tether on PORT[NAME] (admin on ADMIN_PORT[NAME]),
# pinned to CORES, with extra configuration from TETHER_* variables.
start_tether() {
    local name=$1 cores=$2
    shift 2
    # `-u TETHER_BIN`: Tether reads every TETHER_* variable as configuration.
    env -u TETHER_BIN TETHER_LISTENERS__BENCH__BIND="127.0.0.1:${PORT[$name]}" \
        TETHER_ADMIN__BIND="127.0.0.1:${ADMIN_PORT[$name]}" \
        TETHER_BACKEND_POOLS__ECHO__MEMBERS="127.0.0.1:$BACKEND_PORT" "$@" \
        taskset -c "$cores" "${TETHER_OF[$name]}" --config bench/tether.toml >>"$RUN/$name.log" 2>&1 &
    PID[$name]=$!
    measure_pids "$name"
}

# Waits until the proxy NAME answers through its port, then notes the pids to measure.
measure_pids() {
    local name=$1
    load wait --url "http://127.0.0.1:${PORT[$name]}/" --timeout 15s || return 1
    # nginx does the work in its worker; count the master and every child.
    local args=(--pid "${PID[$name]}") child
    for child in $(pgrep -P "${PID[$name]}" || true); do args+=(--pid "$child"); done
    MEASURED[$name]="${args[*]}"
}

stop_proxy() {
    local name=$1
    [ -n "${PID[$name]:-}" ] || return 0
    kill "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
    unset "PID[$name]"
}

run() { # run SCENARIO LABEL ROUND [load args...]
    local scenario=$1 label=$2 round=$3
    shift 3
    local url_host=127.0.0.1:${PORT[$label]:-$BACKEND_PORT} measured=()
    [ "$label" = direct ] || read -ra measured <<<"${MEASURED[$label]}"
    local url=ws://$url_host/ws
    case $scenario in http | idle_http) url=http://$url_host/ ;; esac
    load "$scenario" --url "$url" --label "$label" --round "$round" --out "$RAW" "${measured[@]}" "$@"
}

# Kernel settings for the run (SYSCTLS), each restored by `cleanup` on exit, failure included.
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
set_sysctl() { "${as_root[@]}" env PATH="$PATH" sysctl -q -w "$1" >/dev/null; }
read_sysctl() { sysctl -n "$1" 2>/dev/null || echo unknown; }
for setting in $SYSCTLS; do
    key=${setting%%=*} value=${setting#*=}
    if ! current=$(sysctl -n "$key" 2>/dev/null); then
        echo "bench: SYSCTLS: no kernel setting $key" >&2
        exit 64
    fi
    [ "$current" = "$value" ] && continue
    SYSCTL_SAVED[$key]=$current
    if ! set_sysctl "$key=$value"; then
        echo "bench: cannot set $key=$value (needs root; SYSCTLS= keeps the machine's settings)" >&2
        exit 1
    fi
    say "kernel setting for the run: $key = $value (was $current; restored on exit)"
done
tcp_settings="congestion control $(read_sysctl net.ipv4.tcp_congestion_control), autocorking $(read_sysctl net.ipv4.tcp_autocorking)"

say "starting the fast echo backend on 127.0.0.1:$BACKEND_PORT (core $LOAD_CORE)"
taskset -c "$LOAD_CORE" "$BIN/fast_echo" --listen "127.0.0.1:$BACKEND_PORT" >"$RUN/fast_echo.log" 2>&1 &
BACKEND_PID=$!
load wait --url "http://127.0.0.1:$BACKEND_PORT/" --timeout 15s

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
restart_all() { local p; for p in $PROXIES; do stop_proxy "$p"; start_proxy "$p"; done; }

# --- 5. Rounds ---------------------------------------------------------------------------------
read -ra proxy_list <<<"$PROXIES"
for round in $(seq 1 "$ROUNDS"); do
    # The order rotates every round (A B C, B C A, C A B, ...): no proxy always runs right after
    # the same other one, or first after a restart.
    shift_by=$(((round - 1) % ${#proxy_list[@]}))
    order="${proxy_list[*]:$shift_by} ${proxy_list[*]:0:$shift_by}"
    say "round $round of $ROUNDS, order: $order (memory is measured on fresh processes)"
    if [ "$IDLE_HTTP" = 1 ] && wanted idle_http; then
        restart_all
        for p in $order; do run idle_http "$p" "$round" --connections "$IDLE_HTTP_CONNS"; done
    fi
    restart_all
    if wanted idle; then
        for p in $order; do run idle "$p" "$round" --sessions "$IDLE_SESSIONS"; done
    fi
    if wanted echo; then
        for size in $ECHO_SIZES; do
            for p in $order; do
                run echo "$p" "$round" --size "$size" --connections 64 --window 16 \
                    --warmup "$WARMUP" --duration "$DURATION"
            done
        done
    fi
    if wanted latency; then
        for p in direct $order; do
            run latency "$p" "$round" --rate "$RATE" --connections 64 --size 64 \
                --warmup "$WARMUP" --duration "$LATENCY_DURATION"
        done
    fi
    if wanted handshake; then
        for p in $order; do
            run handshake "$p" "$round" --workers 32 --warmup "$WARMUP" --duration "$DURATION"
        done
    fi
    if wanted http; then
        for p in $order; do
            run http "$p" "$round" --connections 64 --threads 1 --duration "$DURATION"
        done
    fi
done

# --- 5b. System calls per operation: strace -f -c on each proxy, one short run per scenario ---
# strace stops the proxy at every system call, so its CPU figures mean nothing here; the counts
# divided by the operations the load tool completed while strace was attached are what we keep.
# A step that fails is reported and skipped: its rows are missing, the rest of the table stays.
count_syscalls() { # count_syscalls PROXY SCENARIO ID [load args...]
    local p=$1 scenario=$2 id=$3
    shift 3
    local trace=$RUN/strace-$p-$id.txt rec=$RUN/strace-$p-$id.jsonl pid args=() t total
    for pid in $(sed 's/--pid//g' <<<"${MEASURED[$p]}"); do args+=(-p "$pid"); done
    # -f with -p attaches every thread of each process. Bounded by `timeout` in any case.
    timeout 120 strace -f -c -o "$trace" "${args[@]}" 2>"$RUN/strace-$p-$id.log" &
    STRACE_PID=$!
    # Attached once every thread of the proxy shows a tracer (bounded: 10 s).
    for t in $(seq 1 200); do
        total=0
        for pid in $(sed 's/--pid//g' <<<"${MEASURED[$p]}"); do
            total=$((total + $({ grep -L '^TracerPid:[[:space:]]*[1-9]' /proc/"$pid"/task/*/status 2>/dev/null || true; } | wc -l)))
        done
        [ "$total" = 0 ] && break
        [ "$t" = 200 ] && { echo "bench: strace did not attach to $p" >&2; kill "$STRACE_PID"; return 1; }
        sleep 0.05
    done
    run "$scenario" "$p" 1 --out "$rec" "$@" || { kill "$STRACE_PID"; return 1; }
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" || true
    STRACE_PID=
    local ops
    ops=$(grep -o '"\(handshakes\|msgs\)_total":[0-9.e+]*' "$rec" | cut -d: -f2)
    # `strace -c` rows: % time, seconds, usecs/call, calls, [errors,] name. The total row is
    # left out (older strace versions print it without usecs/call) and summed here instead.
    awk -v id="syscalls_$id" -v label="$p" -v ops="$ops" -v pids="$(sed 's/--pid //g; s/ /,/g' <<<"${MEASURED[$p]}")" '
        $1 ~ /^[0-9.]+$/ && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" {
            calls = $4; errors = (NF == 6 ? $5 : 0)
            all += calls; failed += errors
            m = m sprintf(",\"calls:%s\":%s,\"errors:%s\":%s", $NF, calls, $NF, errors)
        }
        END {
            printf "{\"scenario\":\"%s\",\"label\":\"%s\",\"round\":1,\"pids\":[%s],", id, label, pids
            printf "\"params\":{},\"metrics\":{\"ops\":%s,\"calls:total\":%d,\"errors:total\":%d%s}}\n", ops, all, failed, m
        }' "$trace" >>"$RAW"
    echo "strace: $p $id: $ops operations (summary: ${trace#"$ROOT"/})"
}
if [ "$SYSCALLS" = 1 ]; then
    say "system-call step: strace -f -c on each proxy, a $SYSCALL_DURATION handshake run and a $SYSCALL_DURATION 64 B echo run"
    restart_all
    for p in $PROXIES; do
        count_syscalls "$p" handshake handshake --workers 32 --warmup 0s --duration "$SYSCALL_DURATION" &&
            count_syscalls "$p" echo echo_64B --size 64 --connections 64 --window 16 \
                --warmup 0s --duration "$SYSCALL_DURATION" ||
            echo "bench: the system-call step failed for $p; its rows are missing" >&2
    done
fi
for p in $PROXIES; do stop_proxy "$p"; done

# --- 6. Scale step: hold the most sessions the descriptors allow, then drain on SIGTERM --------
# A step that fails is reported and skipped: its rows are missing, the rest of the table stays.
if [ "$SCALE" = 1 ]; then
    say "scale step: a fresh Tether (core $PROXY_CORE, shutdown_grace $SCALE_GRACE) holds $SCALE_SESSIONS idle sessions, then SIGTERM"
    if ! { start_tether tether "$PROXY_CORE" TETHER_SHUTDOWN_GRACE="$SCALE_GRACE" &&
        run drain tether 1 --sessions "$SCALE_SESSIONS" --grace "$SCALE_GRACE"; }; then
        echo "bench: the scale step failed; its rows are missing (log: $RUN/tether.log)" >&2
    fi
    stop_proxy tether # it has exited by itself; this collects it (or stops it if it has not)
fi

# --- 7. Workers step: echo through workers = 1 and workers = 2, on every core ------------------
if [ "$WORKERS2" = 1 ]; then
    say "workers step: echo 64 B through Tether with workers = 1 and = 2 (cores $ALL_CORES, load tool unpinned), $ROUNDS rounds"
    if ! { start_tether tether-w1 "$ALL_CORES" TETHER_WORKERS=1 &&
        start_tether tether-w2 "$ALL_CORES" TETHER_WORKERS=2; }; then
        echo "bench: a Tether of the workers step did not start (logs: $RUN/tether-w*.log)" >&2
        rounds_w=0
    else
        rounds_w=$ROUNDS
    fi
    for round in $(seq 1 "$rounds_w"); do
        for w in 1 2; do
            read -ra measured <<<"${MEASURED[tether-w$w]}"
            # Unpinned: with two workers the proxy may use every core, and so may the load tool.
            if ! "$BIN/load" echo --url "ws://127.0.0.1:${PORT[tether-w$w]}/ws" --label tether \
                --id "workers${w}_echo_64B" --round "$round" --out "$RAW" "${measured[@]}" \
                --size 64 --connections 64 --window 16 --warmup "$WARMUP" --duration "$DURATION"; then
                echo "bench: the workers = $w run of round $round failed" >&2
            fi
        done
    done
    stop_proxy tether-w1
    stop_proxy tether-w2
fi

# --- 8. HTTP/2 step: bench/h2.sh; its figures join the table --------------------------------
if [ "$H2" = 1 ]; then
    say "HTTP/2 step (bench/h2.sh, ${H2_ROUNDS:-$ROUNDS} rounds)"
    # Its own ports (BASE_PORT + 100 on): this run's backend still holds BASE_PORT.
    if ! ROUNDS=${H2_ROUNDS:-$ROUNDS} H2_RAW=$RAW TETHER_BIN=$TETHER PROXY_CORE=$PROXY_CORE \
        LOAD_CORE=$LOAD_CORE BASE_PORT=$((BASE_PORT + 100)) bash bench/h2.sh; then
        echo "bench: the HTTP/2 step failed; its rows are missing (see bench/out/h2-run-*)" >&2
    fi
fi

# --- 9. Report ---------------------------------------------------------------------------------
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started_at))
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
fi
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
hypervisor=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)
mem_gib=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
knobs=""
for v in ROUNDS SCENARIOS ECHO_SIZES DURATION LATENCY_DURATION WARMUP RATE IDLE_SESSIONS IDLE_HTTP IDLE_HTTP_CONNS SCALE \
    SCALE_SESSIONS SCALE_GRACE WORKERS2 SYSCALLS SYSCALL_DURATION H2 H2_ROUNDS SYSCTLS PROXIES \
    TETHER_BIN BASE_BIN PROXY_CORE LOAD_CORE BASE_PORT; do
    if printenv "$v" >/dev/null; then knobs+="$v=$(printenv "$v") "; fi
done
first_line() { "$@" 2>&1 | head -1 || true; } # `wrk -v` exits 1; pipefail must not end the run
versions="$(first_line nginx -v | sed 's|.*/|nginx |'), HAProxy $(first_line haproxy -v | awk '{print $3}'),"
versions+=" $(first_line wrk -v | awk '{print $1, $2}'), $(first_line rustc --version | awk '{print $1, $2}')"
binaries="Tether: $TETHER ($(sha256sum "$TETHER" | cut -c1-12))"
if [ -n "$BASE_BIN" ]; then
    binaries+="; base: $BASE_BIN ($(sha256sum "$BASE_BIN" | cut -c1-12))"
fi

steps=()
if [ "$SYSCALLS" = 1 ]; then
    steps+=(--meta "system-call step=after the rounds, on fresh proxies: \`strace -f -c\` attached to every thread of each proxy during a $SYSCALL_DURATION handshake run (32 workers) and a $SYSCALL_DURATION 64 B echo run (64 connections, window 16), counts ÷ the operations the load tool completed while attached")
fi
if [ "$SCALE" = 1 ]; then
    steps+=(--meta "scale step=Tether only, after the rounds: a fresh Tether (workers = 1, core $PROXY_CORE, shutdown_grace $SCALE_GRACE) holds $SCALE_SESSIONS idle sessions (open-file limit $NOFILE), then gets SIGTERM; one run")
fi
if [ "$WORKERS2" = 1 ]; then
    note="proxy on cores $ALL_CORES, load tool unpinned, fast_echo backend on core $LOAD_CORE"
    if [ "$(nproc)" -lt 4 ]; then
        note+="; with $(nproc) cores the load generator and backend share the proxy's cores, so the workers = 2 ÷ workers = 1 ratio is bounded by them, not by Tether"
    fi
    steps+=(--meta "workers step=Tether only: echo 64 B, 64 connections, window 16, workers = 1 and workers = 2 interleaved, $ROUNDS rounds; $note")
fi
if [ "$H2" = 1 ]; then
    steps+=(--meta "HTTP/2 step=bench/h2.sh: h2load -n ${REQUESTS:-100000} -c 8 -m 10 -t 1 per proxy, ${H2_ROUNDS:-$ROUNDS} interleaved rounds, CPU from /proc over each h2load run")
fi

say "report"
load report --raw "$RAW" --md "$OUT/results-$STAMP.md" --json "$OUT/results-$STAMP.json" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "machine=$(nproc) CPUs (${cpu_model:-unknown}${hypervisor:+, $hypervisor guest}), ${mem_gib} GiB, Linux $(uname -r)" \
    --meta "command=\`${knobs}bash bench/run.sh\` at $commit" \
    --meta "binaries=$binaries" \
    --meta "setup=proxies pinned to core $PROXY_CORE, one worker each; load tool, wrk and fast_echo backend on core $LOAD_CORE; $ROUNDS rounds interleaved (order rotating), median and min–max shown; idle: $IDLE_SESSIONS sessions; idle HTTP: $IDLE_HTTP_CONNS connections" \
    --meta "TCP=$tcp_settings${SYSCTLS:+ (set for the run: $SYSCTLS)}" \
    "${steps[@]}" \
    --meta "versions=$versions" \
    --meta "load average (1/5/15 min)=$load_before before, $load_after after" \
    --meta "took=${elapsed} s"
cp "$OUT/results-$STAMP.md" "$OUT/latest.md"
cp "$OUT/results-$STAMP.json" "$OUT/latest.json"
printf '\nresults: bench/out/results-%s.md and .json (raw records and logs: %s)\n' "$STAMP" "${RUN#"$ROOT"/}"
