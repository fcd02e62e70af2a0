#!/bin/bash
# bench-monitor.sh - how soon the library's slow-link monitor (docs/linkstats.md) names a slow
# host in a running job, and whether a healthy job logs anything: a namespace cluster of HOSTS
# hosts (every port at RATE), one rank each, a loop of 64 MiB all-reduces with FX_DEBUG=INFO;
# rank 0's log is polled every 0.1 s for its first "slow link:" line, and for the line that
# starts its first 64 MiB all-reduce (the tuner's choice, FX_DEBUG_SUBSYS COLL), so that the
# monitor's own delay shows apart from launch, init and fx-bench's buffer set-up.
#
# usage: scripts/bench-monitor.sh [options]     (root)
#   --hosts N        hosts (default 8)
#   --rate RATE      every port's rate (default 400mbit); the slow host gets half
#   --trials T       shaped trials, a random host each (default 5), plus one healthy run
#   --iters N        all-reduces per job (default 6)
#   --fx-bench PATH  (default ./build/tools/fx-bench)
#   --out DIR        logs and results (default .bench/monitor-<date>)
#   --env "K=V ..."  extra environment for the ranks
# Prints one line per trial: the shaped host, what was named, seconds from launch to the first
# line and from the first 64 MiB call to it, and any other finding. Tears its cluster down at
# the end.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
HOSTS=8
RATE=400mbit
TRIALS=5
ITERS=6
FXBENCH=./build/tools/fx-bench
OUT=
EXTRA_ENV=
NAME=fxbm$$

while [ $# -gt 0 ]; do
    case $1 in
        --hosts) HOSTS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --trials) TRIALS=$2; shift 2 ;;
        --iters) ITERS=$2; shift 2 ;;
        --fx-bench) FXBENCH=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --env) EXTRA_ENV=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench-monitor.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$FXBENCH" ] || { echo "bench-monitor.sh: $FXBENCH not built" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-monitor.sh: needs root (network namespaces)" >&2; exit 2; }
OUT=${OUT:-.bench/monitor-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
CLUSTER=$ROOT/scripts/netns-cluster.sh
RUN=$ROOT/scripts/netns-run.sh
trap '"$CLUSTER" down --name "$NAME" >/dev/null 2>&1' EXIT
trap 'exit 1' INT TERM
"$CLUSTER" up "$HOSTS" --rate "$RATE" --name "$NAME" >"$OUT/up.log" 2>&1 ||
    { cat "$OUT/up.log"; exit 1; }

# trial TAG SLOW: one job; SLOW is the shaped host or "none".
trial() {
    local tag=$1 slow=$2 t0 first="" call="" named others pid log
    rm -f "$OUT/$tag".[0-9]*
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    env $EXTRA_ENV FX_DEBUG=INFO FX_DEBUG_SUBSYS=NET,COLL FX_DEBUG_FILE="$OUT/$tag.%p" \
        FX_SOCKET_IFNAME=eth0 timeout 300 "$RUN" "$HOSTS" --name "$NAME" --timeout 280 -- \
        "$FXBENCH" allreduce -b 64M -e 64M -n "$ITERS" -w 0 >"$OUT/$tag.out" 2>&1 &
    pid=$!
    for _ in $(seq 3000); do
        log=$(grep -l "rank 0 " "$OUT/$tag".[0-9]* 2>/dev/null | head -1)
        if [ -z "$call" ] && [ -n "$log" ] && grep -q "allreduce of count 16777216 " "$log"; then
            call=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
        fi
        if [ -z "$first" ] && cat "$OUT/$tag".[0-9]* 2>/dev/null | grep -q "slow link:"; then
            first=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    wait "$pid"
    named=$(cat "$OUT/$tag".[0-9]* 2>/dev/null | grep -o "slow link: [a-z]* [^ ]*" | sort | uniq -c |
        sort -rn | head -1 | awk '{ print $4, $5 }')
    others=$(cat "$OUT/$tag".[0-9]* 2>/dev/null | grep -o "slow link: [a-z]* [^ ]*" |
        grep -v "slow link: host $NAME-h$slow$" | sort -u | sed 's/slow link: //' | tr '\n' ';')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$tag" "$slow" "${named:-nothing}" \
        "${first:+$(printf %.1f "$first") s}" \
        "${first:+${call:+$(awk -v a="$first" -v b="$call" 'BEGIN { printf "%.1f s", a - b }')}}" \
        "${others:-none}" | tee -a "$OUT/summary.md"
}

echo "| trial | shaped host | most named | first line after launch | after the first call |" \
    "other findings |" | tee "$OUT/summary.md"
echo "|---|---|---|---|---|---|" | tee -a "$OUT/summary.md"
trial healthy none
for ((t = 1; t <= TRIALS; t++)); do
    slow=$((RANDOM % HOSTS))
    "$CLUSTER" shape "$slow" "$(echo "$RATE" | sed -E 's/^([0-9]+)/\1 /' |
        awk '{ printf "%d%s", $1 / 2, $2 }')" --name "$NAME" >/dev/null
    trial "t$t" "$slow"
    "$CLUSTER" clear --name "$NAME" >/dev/null
done
