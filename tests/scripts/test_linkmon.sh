#!/bin/bash
# test_linkmon.sh - the running library's slow-link monitor (docs/linkstats.md) on a namespace
# cluster: 4 hosts, every port shaped to 400 Mbit/s, one rank per host, a loop of 64 MiB
# all-reduces with FX_DEBUG=INFO.
#   healthy            no host is named
#   one host at half   that host (chosen at random each run) is named, and no other host
# Tears its cluster down at the end, failure or not.
#
# usage: tests/scripts/test_linkmon.sh   (as root; meson runs it as the test netns-linkmon)
#   FX_BENCH=path   fx-bench to run (fx-id is taken from the same directory)
# Exit status: 0 all passed, 1 some failed, 77 skipped (not root, no namespaces, no fx-bench).
# Prints "N passed, N failed" last. Takes about 90 s.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NAME=fxlm$$
HOSTS=4
TMP=
# shellcheck source=tests/scripts/netns-lib.sh
. "$ROOT/tests/scripts/netns-lib.sh"
require_netns
require_tool FX_BENCH
BENCH=$TOOL

trap '"$CLUSTER" down --name "$NAME" >/dev/null 2>&1; [ -n "$TMP" ] && rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM

TMP=$(mktemp -d)
cluster_up "$HOSTS" --rate 400mbit

# run_job TAG ITERS: the all-reduce loop; rank logs in $TMP/TAG.*; returns the launcher's status.
# The ring is forced: the monitor compares links under its even load (docs/linkstats.md).
run_job() {
    local tag=$1 iters=$2

    FX_ALGO=allreduce:ring FX_DEBUG=INFO FX_DEBUG_SUBSYS=NET FX_DEBUG_FILE="$TMP/$tag.%p" FX_SOCKET_IFNAME=eth0 \
        timeout 200 "$RUN" "$HOSTS" --name "$NAME" --timeout 180 -- \
        "$BENCH" allreduce -b 64M -e 64M -n "$iters" -w 0 >"$TMP/$tag.out" 2>&1
}

findings() { # TAG: the monitor's lines
    cat "$TMP/$1".[0-9]* 2>/dev/null | grep "slow link:" || true
}

# Healthy: every port alike. About 6 x 2 s of all-reduce.
if run_job healthy 6; then
    if findings healthy | grep -q "slow link: host"; then
        fail "healthy cluster: a host was named"
        findings healthy
    else
        pass "healthy cluster: no host named"
    fi
    findings healthy | grep "slow link: path" | sed 's/^/  note: /'
else
    fail "healthy run failed (status $?)"
    tail -5 "$TMP/healthy.out"
fi

# One host at half rate, both directions.
slow=$((RANDOM % HOSTS))
"$CLUSTER" shape "$slow" 200mbit --name "$NAME" >/dev/null
if run_job shaped 3; then
    if findings shaped | grep -q "slow link: host $NAME-h$slow "; then
        pass "host $slow at half rate is named"
    else
        fail "host $slow at half rate was not named"
        findings shaped
    fi
    others=$(findings shaped | grep "slow link: host" | grep -v "slow link: host $NAME-h$slow ")
    if [ -z "$others" ]; then
        pass "no other host named"
    else
        fail "other hosts named besides $slow: $others"
    fi
else
    fail "shaped run failed (status $?)"
    tail -5 "$TMP/shaped.out"
fi

summary
