#!/bin/bash
# test_multirail.sh - hosts with two NICs (docs/testbed.md, docs/tcp.md): a 2-host namespace
# cluster made with --nics 2 (eth0 on 10.77.X, eth1 on 10.78.X, a switch each), one rank per
# host, 64 MiB all-reduces checked element by element (fx-bench's #wrong).
#   rails              each host has both NICs, each rail a subnet routed through its NIC
#   spread             FX_SOCKET_IFNAME=eth: a connection's sockets use both NICs, each NIC
#                      carries at least a third of the traffic
#   one NIC            FX_SOCKET_IFNAME=eth0: eth1 carries nothing of the job
# Tears its cluster down at the end, failure or not.
#
# usage: tests/scripts/test_multirail.sh   (as root; meson runs it as the test netns-multirail)
#   FX_BENCH=path   fx-bench to run (fx-id is taken from the same directory)
# Exit status: 0 all passed, 1 some failed, 77 skipped (not root, no namespaces, no fx-bench).
# Prints "N passed, N failed" last. Takes about 15 s.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NAME=fxmr$$
TMP=
# shellcheck source=tests/scripts/netns-lib.sh
. "$ROOT/tests/scripts/netns-lib.sh"
require_netns
require_tool FX_BENCH
BENCH=$TOOL

trap '"$CLUSTER" down --name "$NAME" >/dev/null 2>&1; [ -n "$TMP" ] && rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM

TMP=$(mktemp -d)
cluster_up 2 --nics 2

rx_bytes() { # HOST NIC
    ip netns exec "$NAME-h$1" cat "/sys/class/net/$2/statistics/rx_bytes"
}

addr_of() { # HOST NIC
    ip -n "$NAME-h$1" -4 -o addr show dev "$2" | awk '{ sub(/\/.*/, "", $4); print $4 }'
}

# run_job TAG IFNAME: 3 all-reduces of 64 MiB; output in $TMP/TAG.out, rank logs $TMP/TAG.*;
# sets D0 and D1 to the bytes host 1 received on eth0 and eth1 meanwhile. Returns the job's
# status, or 1 when a element was wrong.
run_job() {
    local tag=$1 ifname=$2 b0 b1 rc

    b0=$(rx_bytes 1 eth0)
    b1=$(rx_bytes 1 eth1)
    FX_DEBUG=INFO FX_DEBUG_SUBSYS=NET FX_DEBUG_FILE="$TMP/$tag.%p" FX_SOCKET_IFNAME=$ifname \
        timeout 120 "$RUN" 2 --name "$NAME" --timeout 100 -- \
        "$BENCH" allreduce -b 64M -e 64M -n 3 -w 1 >"$TMP/$tag.out" 2>&1
    rc=$?
    D0=$(($(rx_bytes 1 eth0) - b0))
    D1=$(($(rx_bytes 1 eth1) - b1))
    if [ "$rc" = 0 ] && ! awk '$1 == 67108864 && $9 == 0 && $13 == 0 { ok = 1 } END { exit !ok }' \
        <(sed 's/^\[[0-9]*\] //' "$TMP/$tag.out"); then
        echo "  $tag: no clean 64 MiB line:"
        tail -3 "$TMP/$tag.out"
        rc=1
    fi
    return "$rc"
}

logs() { # TAG
    cat "$TMP/$1".[0-9]* 2>/dev/null
}

# Rails: two NICs per host, each rail a subnet of its own that reaches the other host.
a0=$(addr_of 1 eth0)
a1=$(addr_of 1 eth1)
if [ -n "$a0" ] && [ -n "$a1" ] && [ "${a0%.*}" != "${a1%.*}" ] &&
    ip -n "$NAME-h0" route get "$a1" | grep -q "dev eth1" &&
    ip -n "$NAME-h0" route get "$a0" | grep -q "dev eth0"; then
    pass "rails: host 1 has $a0 on eth0 and $a1 on eth1, host 0 routes each through its own NIC"
else
    fail "rails: host 1 eth0 '$a0', eth1 '$a1', or host 0 routes them elsewhere"
fi

# Spread: both NICs selected.
if run_job spread eth; then
    total=$((D0 + D1))
    if [ "$total" -gt 0 ] && [ $((D0 * 3)) -ge "$total" ] && [ $((D1 * 3)) -ge "$total" ]; then
        pass "spread: host 1 received $D0 bytes on eth0 and $D1 on eth1"
    else
        fail "spread: host 1 received $D0 bytes on eth0 and $D1 on eth1 (each should be >= 1/3)"
    fi
    if logs spread | grep -q "spread over its 2 interfaces"; then
        pass "spread: the connection logs its two interfaces"
    else
        fail "spread: no 'spread over its 2 interfaces' in the logs"
    fi
else
    fail "spread: the job failed"
fi

# One NIC: only eth0 selected.
if run_job one eth0; then
    if [ "$D0" -gt $((64 << 20)) ] && [ "$D1" -lt $((1 << 20)) ]; then
        pass "one NIC: host 1 received $D0 bytes on eth0 and $D1 on eth1"
    else
        fail "one NIC: host 1 received $D0 bytes on eth0 and $D1 on eth1 (want all on eth0)"
    fi
else
    fail "one NIC: the job failed"
fi

summary
