#!/bin/bash
# test_fxbench_compare.sh - fx-bench --algo all (the tuner beside every algorithm forced, in one
# run, the contenders taking turns): 3 local ranks, all-reduce and all-gather from 8 B to
# 256 KiB, --json. Checks that every contender ran at every size, that the forced ones ran the
# algorithm they force (or reported a fall-back), that every result was right (#wrong 0), that
# the ratios are those of the printed times, and that bad uses fail with a clear message.
#
# usage: tests/scripts/test_fxbench_compare.sh   (meson runs it as the test tools-fxbench-compare)
#   FX_BENCH=path   fx-bench to run
# Exit status: 0 all passed, 1 some failed, 77 skipped (no fx-bench). Prints "N passed, N failed"
# last. Takes a few seconds.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
BENCH=${FX_BENCH:-}
if [ -z "$BENCH" ] || [ ! -x "$BENCH" ]; then
    echo "skip: no executable in FX_BENCH"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# check_json FILE COLL "ALGOS": the JSON's contenders and ratios
check_json() {
    python3 - "$@" <<'PY'
import json, sys
path, coll, algos = sys.argv[1], sys.argv[2], sys.argv[3].split()
d = json.load(open(path))
errs = []
if d.get("collective") != coll or d.get("nranks") != 3:
    errs.append("header: %s" % {k: d.get(k) for k in ("collective", "nranks")})
if d.get("wrong") != 0:
    errs.append("wrong elements: %s" % d.get("wrong"))
rows = d.get("compare", [])
if len(rows) < 3:
    errs.append("%d sizes" % len(rows))
worst_t = worst_c = 0.0
for r in rows:
    names = [c["name"] for c in r["contenders"]]
    if names != ["tuner"] + algos:
        errs.append("size %d: contenders %s" % (r["size"], names))
        continue
    times = {c["name"]: c["time_us"] for c in r["contenders"]}
    ran = {c["name"]: c["algo"] for c in r["contenders"]}
    if any(not (t > 0) for t in times.values()):
        errs.append("size %d: times %s" % (r["size"], times))
    if ran["tuner"] not in algos:
        errs.append("size %d: the tuner ran %s" % (r["size"], ran["tuner"]))
    own = [a for a in algos if ran[a] == a]
    if not own:
        errs.append("size %d: no forced algorithm ran itself: %s" % (r["size"], ran))
        continue
    best = min(times[a] for a in own)
    want_t = times["tuner"] / best
    want_c = times[ran["tuner"]] / best if ran.get(ran["tuner"]) == ran["tuner"] else 0.0
    if abs(r["tuner_over_best"] - want_t) > 1e-3 * max(1, want_t) or \
       abs(r["choice_over_best"] - want_c) > 1e-3 * max(1, want_c):
        errs.append("size %d: ratios %.4f %.4f, want %.4f %.4f" % (
            r["size"], r["tuner_over_best"], r["choice_over_best"], want_t, want_c))
    worst_t, worst_c = max(worst_t, want_t), max(worst_c, want_c)
if rows and (abs(d["worst_tuner_over_best"] - worst_t) > 1e-3 * max(1, worst_t) or
             abs(d["worst_choice_over_best"] - worst_c) > 1e-3 * max(1, worst_c)):
    errs.append("worst ratios %s %s, want %.4f %.4f" % (
        d["worst_tuner_over_best"], d["worst_choice_over_best"], worst_t, worst_c))
print("; ".join(errs))
sys.exit(1 if errs else 0)
PY
}

compare() { # COLL "ALGOS"
    local coll=$1 algos=$2 out=$TMP/$1.json msg rc
    timeout 120 "$BENCH" "$coll" --algo all --np 3 -b 8 -e 256K -f 32 -n 3 -w 1 -r 3 \
        --json --timeout-ms 100000 >"$out" 2>"$TMP/$coll.err"
    rc=$?
    if [ $rc != 0 ]; then
        fail "$coll --algo all: exit status $rc: $(tail -3 "$TMP/$coll.err")"
        return
    fi
    if msg=$(check_json "$out" "$coll" "$algos"); then
        pass "$coll --algo all: every contender at every size, results right, ratios consistent"
    else
        fail "$coll --algo all: $msg"
    fi
}

compare allreduce "ring pair tree rd rabenseifner"
compare allgather "ring rd bruck"

# The table form ends with the worst ratios.
if timeout 60 "$BENCH" broadcast --algo all --np 2 -b 1K -e 1K -n 2 -r 1 >"$TMP/bc.out" 2>&1 &&
    grep -q "^# Worst tuner/best" "$TMP/bc.out" && grep -q " chain .* binomial " "$TMP/bc.out"; then
    pass "broadcast --algo all: table with both algorithms and the worst ratios"
else
    fail "broadcast --algo all: $(tail -5 "$TMP/bc.out")"
fi

# Bad uses.
"$BENCH" sendrecv --algo all --np 2 >"$TMP/sr.out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "sendrecv has no algorithm" "$TMP/sr.out"; then
    pass "sendrecv --algo all: refused (exit 2)"
else
    fail "sendrecv --algo all: exit $rc: $(cat "$TMP/sr.out")"
fi
# The per-size times hold 64 repetitions: more is refused, not cut short without a word.
timeout 60 "$BENCH" allreduce --algo all --np 2 -b 8 -e 8 -r 65 >"$TMP/reps.out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q -- "-r 65.*at most 64" "$TMP/reps.out"; then
    pass "--algo all -r 65: refused (exit 2)"
else
    fail "--algo all -r 65: exit $rc: $(tail -3 "$TMP/reps.out")"
fi
timeout 60 "$BENCH" allreduce --algo nosuch --np 2 -b 8 -e 8 >"$TMP/bad.out" 2>&1
rc=$?
if [ $rc != 0 ] && grep -q "nosuch" "$TMP/bad.out"; then
    pass "--algo nosuch: fails naming it (exit $rc)"
else
    fail "--algo nosuch: exit $rc: $(cat "$TMP/bad.out")"
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
