#!/usr/bin/env bash
# The 4 KiB bistability experiment (issue 17): the 4 KiB echo scenario of bench/run.sh, RUNS
# times per proxy under each kernel setting of SETTINGS, the settings taking turns in BLOCKS
# blocks (so drift on the machine hits every setting alike), the machine's own settings restored
# on exit (bench/run.sh's SYSCTLS does the setting and the restoring). Prints, per setting and
# proxy, the distribution of messages/s and of proxy CPU µs per message, and the echoes per read
# of the load tool and the stolen CPU share that tell a fast run from a slow one.
#
#   bash bench/stability.sh
#
# Knobs: SETTINGS ["system net.ipv4.tcp_congestion_control=cubic"], each a comma-separated list
# of sysctl assignments or `system` (whatever the machine has); RUNS [10] per setting and
# proxy; BLOCKS [2]; SIZE [4096]; PROXIES, DURATION, WARMUP, PROXY_CORE, LOAD_CORE as in
# bench/run.sh. Output: bench/out/stability-<date>.md, raw records in bench/out/stability-<date>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SETTINGS=${SETTINGS:-"system net.ipv4.tcp_congestion_control=cubic"}
RUNS=${RUNS:-10}
BLOCKS=${BLOCKS:-2}
SIZE=${SIZE:-4096}
STAMP=$(date -u +%Y-%m-%d-%H%M%S)
DIR=bench/out/stability-$STAMP
mkdir -p "$DIR"
per_block=$(((RUNS + BLOCKS - 1) / BLOCKS))
for block in $(seq 1 "$BLOCKS"); do
    for setting in $SETTINGS; do
        sysctls=${setting//,/ }
        [ "$setting" = system ] && sysctls=""
        echo "== block $block of $BLOCKS: $setting, $per_block rounds"
        SYSCTLS=$sysctls ROUNDS=$per_block SCENARIOS=echo ECHO_SIZES=$SIZE IDLE_HTTP=0 \
            SYSCALLS=0 SCALE=0 WORKERS2=0 H2=0 bash bench/run.sh >"$DIR/run-$block-$setting.log" 2>&1 ||
            { echo "bench/stability.sh: a run failed (log: $DIR/run-$block-$setting.log)" >&2; exit 1; }
        raw=$(sed -n 's/^results: .*(raw records and logs: \(.*\))$/\1/p' "$DIR/run-$block-$setting.log")
        sed "s/\"label\":\"\([a-z]*\)\"/\"label\":\"\1\",\"setting\":\"$setting\"/" "$raw/raw.jsonl" >>"$DIR/raw.jsonl"
    done
done

# The distribution of one metric: n, min, quartiles, max (nearest rank), and max ÷ min.
dist() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "| | | | | | |"; exit }
        q1 = v[int((NR + 3) / 4)]; q2 = v[int((NR + 1) / 2)]; q3 = v[int((3 * NR + 3) / 4)]
        printf "%d | %.4g | %.4g | %.4g | %.4g | %.4g | %.2f", NR, v[1], q1, q2, q3, v[NR], v[NR] / v[1] }'
}
metric() { grep -o "\"$1\":[0-9.e+-]*" | cut -d: -f2; }
{
    echo "# 4 KiB echo: distribution per kernel setting, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "\`SETTINGS=\"$SETTINGS\" RUNS=$RUNS BLOCKS=$BLOCKS bash bench/stability.sh\` at $(git rev-parse --short HEAD);"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end. Echo $SIZE B, 64 connections, window 16."
    echo
    echo "| setting | proxy | figure | runs | min | p25 | median | p75 | max | max ÷ min |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for setting in $SETTINGS; do
        for p in ${PROXIES:-nginx haproxy tether}; do
            rows=$(grep "\"label\":\"$p\",\"setting\":\"$setting\"" "$DIR/raw.jsonl" || true)
            for m in msgs_per_s cpu_us_per_msg client_msgs_per_read steal_share; do
                echo "| $setting | $p | $m | $(metric "$m" <<<"$rows" | dist) |"
            done
        done
    done
} | tee "$DIR.md"
