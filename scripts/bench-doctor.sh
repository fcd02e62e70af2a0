#!/bin/bash
# bench-doctor.sh - fx-doctor's accuracy and run time over random trials on a namespace cluster.
#
#   scripts/bench-doctor.sh [--hosts N] [--rate RATE] [--slow RATE] [--trials T] [--out DIR]
#                           [-- fx-doctor options]
#
# Each trial shapes a random host (case "host"), then a random path (case "path"), to --slow
# (default: half of --rate), runs fx-doctor --json through scripts/netns-run.sh, and scores the
# verdict: a hit names exactly what was shaped; a miss does not name it; a false finding is any
# other host or path named. One healthy run per trial too (case "healthy": any finding is
# false). Writes DIR/doctor.csv (case, trial, shaped, named, hit, false findings, seconds) and
# prints a markdown summary. Root; tears the cluster down on exit.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=$ROOT/scripts/netns-cluster.sh
RUN=$ROOT/scripts/netns-run.sh
HOSTS=4
RATE=400mbit
SLOW=
TRIALS=20
OUT=/tmp/fx-bench-doctor
NAME=fxbd$$
DOCTOR=${FX_DOCTOR:-$ROOT/build/tools/fx-doctor}
EXTRA=()

while [ $# -gt 0 ]; do
    case $1 in
    --hosts) HOSTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --slow) SLOW=$2; shift 2 ;;
    --trials) TRIALS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--hosts N] [--rate RATE] [--slow RATE] [--trials T] [--out DIR] [-- fx-doctor options]" >&2
       exit 2 ;;
    esac
done
if ! [[ $HOSTS =~ ^[0-9]+$ && $HOSTS -ge 3 && $TRIALS =~ ^[0-9]+$ && $TRIALS -ge 1 ]]; then
    echo "bench-doctor: --hosts must be 3 or more and --trials 1 or more" >&2
    exit 2
fi
if [ -z "$SLOW" ]; then
    SLOW=$(python3 -c '
import re, sys
m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", sys.argv[1].lower())
if not m:
    sys.exit(1)
print(str(int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] / 2 / 1000)) + "kbit")
' "$RATE") || { echo "bench-doctor: bad --rate $RATE" >&2; exit 2; }
fi
[ -x "$DOCTOR" ] || { echo "bench-doctor: no fx-doctor at $DOCTOR (build it, or set FX_DOCTOR)" >&2; exit 2; }
unset FX_SOCKET_IFNAME
mkdir -p "$OUT"
trap '"$CLUSTER" down --name "$NAME" >/dev/null 2>&1' EXIT
trap 'exit 1' INT TERM
"$CLUSTER" up "$HOSTS" --rate "$RATE" --name "$NAME" >/dev/null || exit 1
CSV=$OUT/doctor.csv
echo "case,trial,shaped,named,hit,false_findings,seconds,exit" >"$CSV"

run() { # CASE TRIAL SHAPED
    local t0 t1 rc named hit falses
    t0=$(date +%s.%N)
    FX_SOCKET_IFNAME=eth0 FX_TIMEOUT_MS=20000 timeout 200 "$RUN" "$HOSTS" --name "$NAME" \
        --timeout 180 -- "$DOCTOR" --json "${EXTRA[@]}" >"$OUT/run.out" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    named=$(sed -n 's/^\[0\] \({.*}\)$/\1/p' "$OUT/run.out" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    print("error"); sys.exit()
print(" ".join(f["kind"] + ":" + "+".join(h.rsplit("-h", 1)[1] for h in f["hosts"]) for f in d["findings"]))')
    hit=0
    falses=0
    for f in $named; do
        if [ "$f" = "$3" ]; then hit=1; else falses=$((falses + 1)); fi
    done
    [ "$3" = none ] && hit=$([ -z "$named" ] && echo 1 || echo 0)
    echo "$1,$2,$3,${named:-none},$hit,$falses,$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'),$rc" >>"$CSV"
    printf '%-8s trial %2d: shaped %-9s named %-20s (%.1f s)\n' "$1" "$2" "$3" "${named:-none}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}

for t in $(seq 1 "$TRIALS"); do
    "$CLUSTER" clear --name "$NAME" >/dev/null
    run healthy "$t" none
    h=$((RANDOM % HOSTS))
    "$CLUSTER" shape "$h" "$SLOW" --name "$NAME" >/dev/null
    run host "$t" "host:$h"
    "$CLUSTER" clear --name "$NAME" >/dev/null
    a=$((RANDOM % HOSTS))
    b=$(((a + 1 + RANDOM % (HOSTS - 1)) % HOSTS))
    "$CLUSTER" shape-path "$a" "$b" "$SLOW" --name "$NAME" >/dev/null
    run path "$t" "path:$((a < b ? a : b))+$((a < b ? b : a))"
done

python3 - "$CSV" "$HOSTS" "$RATE" "$SLOW" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\nfx-doctor on {sys.argv[2]} namespace hosts, ports at {sys.argv[3]}, shaped to {sys.argv[4]}\n")
print("| case | trials | hits | misses | false findings | run time median (s) | max (s) |")
print("|---|---|---|---|---|---|---|")
for case in ("healthy", "host", "path"):
    r = [x for x in rows if x["case"] == case]
    if not r:
        continue
    hits = sum(int(x["hit"]) for x in r)
    falses = sum(int(x["false_findings"]) for x in r)
    secs = [float(x["seconds"]) for x in r]
    print(f"| {case} | {len(r)} | {hits} | {len(r) - hits} | {falses} | "
          f"{statistics.median(secs):.1f} | {max(secs):.1f} |")
PY
