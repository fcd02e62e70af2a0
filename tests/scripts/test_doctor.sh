#!/bin/bash
# test_doctor.sh - fx-doctor on a namespace cluster of 4 hosts, every port at 400 Mbit/s:
#   healthy                  exit 0, no finding
#   one host at half rate    exit 1, that host named (kind "host") and nothing else
#   one path at half rate    exit 1, that path named (kind "path"), neither host
#   a rank killed halfway    the other ranks exit with an error naming it, no hang
# The shaped host and path are drawn at random each run. Tears its cluster down at the end,
# failure or not.
#
# usage: tests/scripts/test_doctor.sh   (as root; meson runs it as the test netns-doctor)
#   FX_DOCTOR=path   fx-doctor to run (fx-id is taken from the same directory)
# Exit status: 0 all passed, 1 some failed, 77 skipped (not root, no namespaces, no fx-doctor).
# Prints "N passed, N failed" last. Takes about 60 s.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NAME=fxdr$$
HOSTS=4
TMP=
# shellcheck source=tests/scripts/netns-lib.sh
. "$ROOT/tests/scripts/netns-lib.sh"
require_netns
require_tool FX_DOCTOR
DOCTOR=$TOOL

trap '"$CLUSTER" down --name "$NAME" >/dev/null 2>&1; [ -n "$TMP" ] && rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM

TMP=$(mktemp -d)
cluster_up "$HOSTS" --rate 400mbit

# doctor TAG [ARGS...]: runs fx-doctor --json on every host; rank 0's JSON in $TMP/TAG.json,
# everything in $TMP/TAG.out; returns the launcher's status.
doctor() {
    local tag=$1 rc
    shift
    FX_SOCKET_IFNAME=eth0 FX_TIMEOUT_MS=10000 timeout 120 "$RUN" "$HOSTS" --name "$NAME" \
        --timeout 100 -- "$DOCTOR" --json --time 0.3 "$@" >"$TMP/$tag.out" 2>&1
    rc=$?
    sed -n 's/^\[0\] \({.*}\)$/\1/p' "$TMP/$tag.out" >"$TMP/$tag.json"
    return $rc
}

# verdict TAG: one line "kind:host,host" per finding, from rank 0's JSON.
verdict() {
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for f in d["findings"]:
    print(f["kind"] + ":" + ",".join(f["hosts"]))
' "$TMP/$1.json" 2>/dev/null
}

check() { # TAG WANT_RC WANT_VERDICT DESCRIPTION
    local tag=$1 want_rc=$2 want=$3 what=$4 rc=$5 got

    got=$(verdict "$tag" | sort | paste -sd ' ')
    if [ "$rc" = "$want_rc" ] && [ "$got" = "$want" ] && [ -s "$TMP/$tag.json" ]; then
        pass "$what (exit $rc${got:+, $got})"
    else
        fail "$what: exit $rc (want $want_rc), findings '$got' (want '$want')"
        tail -20 "$TMP/$tag.out"
    fi
}

doctor healthy
check healthy 0 "" "healthy cluster" $?

slow=$((RANDOM % HOSTS))
"$CLUSTER" shape "$slow" 200mbit --name "$NAME" >/dev/null
doctor host
check host 1 "host:$NAME-h$slow" "host $slow at half rate" $?
"$CLUSTER" clear --name "$NAME" >/dev/null

a=$((RANDOM % HOSTS))
b=$(((a + 1 + RANDOM % (HOSTS - 1)) % HOSTS))
"$CLUSTER" shape-path "$a" "$b" 200mbit --name "$NAME" >/dev/null
lo=$((a < b ? a : b))
hi=$((a < b ? b : a))
doctor path
check path 1 "path:$NAME-h$lo,$NAME-h$hi" "path $a-$b at half rate" $?
"$CLUSTER" clear --name "$NAME" >/dev/null

# A rank killed during the pair tests: every other rank must exit with an error, naming it.
victim=$((1 + RANDOM % (HOSTS - 1)))
start=$(date +%s)
FX_SOCKET_IFNAME=eth0 FX_TIMEOUT_MS=10000 timeout 120 "$RUN" "$HOSTS" --name "$NAME" \
    --timeout 100 -- "$DOCTOR" --time 1 >"$TMP/kill.out" 2>&1 &
job=$!
sleep 3
victim_pids=$(ip netns pids "$NAME-h$victim" 2>/dev/null)
# shellcheck disable=SC2086 # several pids, one word each
[ -n "$victim_pids" ] && kill -9 $victim_pids 2>/dev/null
wait "$job"
rc=$?
took=$(($(date +%s) - start))
errors=$(grep -c "^\[[0-9]*\] fx-doctor: rank [0-9]*: .*rank $victim" "$TMP/kill.out")
if [ -z "$victim_pids" ]; then
    fail "killed rank: no process found in host $victim"
elif [ "$rc" != 0 ] && [ "$errors" -ge $((HOSTS - 1)) ] && [ "$took" -lt 60 ]; then
    pass "rank $victim killed: the other $errors ranks failed naming it in ${took}s"
else
    fail "rank $victim killed: exit $rc, $errors ranks named it, ${took}s"
    tail -20 "$TMP/kill.out"
fi

summary
