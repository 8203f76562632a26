#!/usr/bin/env bash
# A/B of two Tether builds (issue 17): the "before" binary (BASE_BIN) and the "after" one
# (TETHER_BIN, or this checkout's release build) run through the benchmark's scenarios
# interleaved, the order alternating every round (A B, B A, A B, ...), each pinned like the full
# benchmark, then the system-call step on both. It prints a before/after table (median and
# min–max of every figure, after ÷ before with the range of the per-round ratios) and every
# other figure; results in bench/out/ like bench/run.sh's.
#
#   BASE_BIN=/path/to/old/tether [TETHER_BIN=/path/to/new/tether] bash bench/ab.sh
#
# Knobs: those of bench/run.sh; ROUNDS defaults to 6 here, and the scale, workers and HTTP/2
# steps are off (SCALE=1, WORKERS2=1 or H2=1 turn them back on; they measure the "after"
# binary only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${BASE_BIN:-}" ] || [ ! -x "$BASE_BIN" ]; then
    echo "bench/ab.sh: set BASE_BIN to the \"before\" Tether binary (got '${BASE_BIN:-}')" >&2
    exit 64
fi
export BASE_BIN
export PROXIES="base tether"
export ROUNDS=${ROUNDS:-6} SCALE=${SCALE:-0} WORKERS2=${WORKERS2:-0} H2=${H2:-0}
exec bash bench/run.sh
