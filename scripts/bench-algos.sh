#!/bin/bash
# bench-algos.sh - every algorithm of one collective forced in turn, beside the tuner's own
# choice, in one run: busbw per size, the algorithm the tuner picked and its time against the
# best forced one ("tuner / best": the tuner's own runs; "choice / best": the forced runs of the
# algorithm it chose, which judges the choice without a second sample's noise), and the cost
# model's prediction against each measured time.
#
# usage: scripts/bench-algos.sh [options]
#   --coll C          allreduce (default) or allgather, ... (fx-bench's names)
#   --np "2 4 8"      rank counts (local ranks on loopback, fx-bench --np)
#   --sizes "..."     sizes in bytes, K/M suffixes (default: 8 B to 128 MiB, x4)
#   --rounds R        rounds (default 3); every (size, contender) runs once per round, the
#                     contenders of a size back to back in an order rotated per round, so load
#                     from elsewhere hits them alike; medians over the rounds
#   --out DIR         results (default .bench/algos-<date>)
#   --fx-bench PATH   (default ./build/tools/fx-bench); fx-model is taken from the same dir
#   --env "K=V ..."   extra environment for every run (e.g. FX_TRANSPORT=tcp)
# Each run is one fx-bench process for one size (-b = -e), -c 0, iterations by size. The
# model's parameters are the ones the tuner measured at init in the same round (FX_DEBUG=INFO
# "cost model (...): ..." of rank 0), median over the rounds, fed to fx-model.
# Output: DIR/runs.csv, DIR/model.csv, DIR/summary.md (also on stdout). Exit 0 when every run
# worked.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2

COLL=allreduce
NPS="2 4 8"
SIZES="8 32 128 512 2K 8K 32K 128K 512K 2M 8M 32M 128M"
ROUNDS=3
OUT=
FXBENCH=./build/tools/fx-bench
EXTRA_ENV=

while [ $# -gt 0 ]; do
    case $1 in
        --coll) COLL=$2; shift 2 ;;
        --np) NPS=$2; shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --fx-bench) FXBENCH=$2; shift 2 ;;
        --env) EXTRA_ENV=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "bench-algos.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
FXMODEL=$(dirname "$FXBENCH")/fx-model
for t in "$FXBENCH" "$FXMODEL"; do
    [ -x "$t" ] || { echo "bench-algos.sh: $t not built (ninja -C build)" >&2; exit 2; }
done
case $COLL in
    allreduce) ALGOS="ring pair tree rd rabenseifner" ;;
    allgather) ALGOS="ring rd bruck" ;;
    reducescatter) ALGOS="ring" ;;
    broadcast|reduce) ALGOS="chain binomial" ;;
    alltoall) ALGOS="pairwise" ;;
    *) echo "bench-algos.sh: no algorithms to compare for $COLL" >&2; exit 2 ;;
esac
OUT=${OUT:-.bench/algos-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
echo "round,nranks,size,contender,algo,time_us,busbw" >"$OUT/runs.csv"
echo "round,nranks,latency_us,link_gbps,reduce_gbps" >"$OUT/params.csv"
rc=0

bytes() { # 8, 2K, 128M -> bytes
    local v=$1
    case $v in
        *K) echo $((${v%K} * 1024)) ;;
        *M) echo $((${v%M} * 1048576)) ;;
        *) echo "$v" ;;
    esac
}

iters_for() { # SIZE -> "-n N -w W"
    local b=$1
    if [ "$b" -le 65536 ]; then echo "-n 200 -w 20"
    elif [ "$b" -le 4194304 ]; then echo "-n 20 -w 3"
    else echo "-n 4 -w 1"; fi
}

run_one() { # ROUND NP SIZE CONTENDER
    local round=$1 np=$2 size=$3 who=$4 b log algo_env=() line
    b=$(bytes "$size")
    log="$OUT/logs/r$round-n$np-$size-$who"
    [ "$who" != auto ] && algo_env=(FX_ALGO="$COLL:$who")
    # shellcheck disable=SC2086
    if ! env $EXTRA_ENV "${algo_env[@]}" FX_DEBUG=INFO FX_DEBUG_SUBSYS=INIT \
        FX_DEBUG_FILE="$log.%p.log" timeout 600 "$FXBENCH" "$COLL" --np "$np" -b "$b" -e "$b" \
        $(iters_for "$b") -c 0 --json >"$log.json" 2>"$log.err"; then
        echo "bench-algos.sh: $COLL $who n=$np size $size failed (see $log.err)" >&2
        rc=1
        return
    fi
    line=$(python3 - "$log.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["results"][0]["oop"]
print("%s,%.3f,%.4f" % (r["algo"], r["time_us"], r["busbw"]))
PY
    ) || { rc=1; return; }
    echo "$round,$np,$b,$who,$line" >>"$OUT/runs.csv"
    if [ "$who" = auto ]; then
        # "cost model (measured, PATH): latency ...": the source in parentheses goes first.
        sed 's/cost model ([^)]*)/cost model/' "$log".*.log 2>/dev/null |
            grep -o "cost model: latency [0-9.]* us per message, [0-9.]* GB/s per link, reduction [0-9.]* GB/s" |
            head -1 |
            awk -v r="$round" -v n="$np" '{print r "," n "," $4 "," $8 "," $13}' >>"$OUT/params.csv"
    fi
}

for ((round = 0; round < ROUNDS; round++)); do
    for np in $NPS; do
        contenders=(auto)
        for a in $ALGOS; do
            [ "$a" = pair ] && [ "$np" != 2 ] && continue
            contenders+=("$a")
        done
        k=${#contenders[@]}
        for size in $SIZES; do
            for ((i = 0; i < k; i++)); do
                run_one "$round" "$np" "$size" "${contenders[$(((i + round) % k))]}"
            done
        done
        echo "bench-algos.sh: round $round, $np ranks done" >&2
    done
done

# The model's predictions with each rank count's median measured parameters.
echo "collective,nranks,size,algo,predicted_us,chosen" >"$OUT/model.csv"
for np in $NPS; do
    read -r lat gbps rgbps < <(python3 - "$OUT/params.csv" "$np" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["nranks"] == sys.argv[2]]
med = lambda k: statistics.median(float(r[k]) for r in rows) if rows else 0.0
print(med("latency_us"), med("link_gbps") or 1.0, med("reduce_gbps") or 1.0)
PY
    )
    for size in $SIZES; do
        b=$(bytes "$size")
        "$FXMODEL" "$COLL" --np "$np" --latency-us "$lat" --gbps "$gbps" --reduce-gbps "$rgbps" \
            -b "$b" -e "$b" | tail -n +2 >>"$OUT/model.csv"
    done
done

python3 - "$OUT" "$COLL" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
from collections import defaultdict
out, coll = sys.argv[1], sys.argv[2]
runs = list(csv.DictReader(open(out + "/runs.csv")))
model = list(csv.DictReader(open(out + "/model.csv")))
params = list(csv.DictReader(open(out + "/params.csv")))
t = defaultdict(list)      # (n, size, contender) -> times
used = defaultdict(list)   # (n, size) -> algorithms the tuner used
for r in runs:
    t[(int(r["nranks"]), int(r["size"]), r["contender"])].append(float(r["time_us"]))
    if r["contender"] == "auto":
        used[(int(r["nranks"]), int(r["size"]))].append(r["algo"])
pred = {(int(m["nranks"]), int(m["size"]), m["algo"]): float(m["predicted_us"]) for m in model}
def human(b):
    for u, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= f and b % f == 0:
            return "%d %s" % (b // f, u)
    return "%d B" % b
def fmt(us):
    return "%.1f" % us if us < 1000 else "%.0f" % us
ns = sorted({k[0] for k in t})
print("## %s: every algorithm forced vs the tuner (loopback)\n" % coll)
for n in ns:
    ps = [p for p in params if int(p["nranks"]) == n]
    if ps:
        med = lambda k: statistics.median(float(p[k]) for p in ps)
        print("**%d ranks.** Model parameters measured at init (median of %d): latency %.1f us, "
              "link %.2f GB/s, reduction %.2f GB/s.\n" % (n, len(ps), med("latency_us"),
              med("link_gbps"), med("reduce_gbps")))
    algos = sorted({k[2] for k in t if k[0] == n and k[2] != "auto"})
    print("| size | " + " | ".join("%s us" % a for a in algos) +
          " | tuner | tuner us | tuner / best | choice / best | " +
          " | ".join("%s model/meas" % a for a in algos) + " |")
    print("|---" * (2 * len(algos) + 5) + "|")
    worst = 0.0
    worst_choice = 0.0
    for size in sorted({k[1] for k in t if k[0] == n}):
        med = {a: statistics.median(t[(n, size, a)]) for a in algos if t.get((n, size, a))}
        auto = statistics.median(t[(n, size, "auto")]) if t.get((n, size, "auto")) else None
        best = min(med.values()) if med else None
        choice = "/".join(sorted(set(used[(n, size)])))
        ratio = auto / best if auto and best else float("nan")
        worst = max(worst, ratio)
        # The choice itself: the forced runs of the algorithm(s) the tuner used, over the best
        # forced one (the same processes as the best's comparison: no second sample's noise).
        chosen = [med[a] for a in set(used[(n, size)]) if a in med]
        cratio = max(chosen) / best if chosen and best else float("nan")
        worst_choice = max(worst_choice, cratio)
        cells = [fmt(med[a]) if a in med else "-" for a in algos]
        mm = ["%.2f" % (pred[(n, size, a)] / med[a]) if (n, size, a) in pred and a in med
              else "-" for a in algos]
        print("| %s | %s | %s | %s | %.2f | %.2f | %s |" % (human(size), " | ".join(cells), choice,
              fmt(auto) if auto else "-", ratio, cratio, " | ".join(mm)))
    print("\nWorst tuner / best forced at %d ranks: %.2f; worst choice / best: %.2f.\n" %
          (n, worst, worst_choice))
PY
exit $rc
