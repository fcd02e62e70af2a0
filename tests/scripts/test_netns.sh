#!/bin/bash
# test_netns.sh - self-test of the namespace testbed: scripts/netns-cluster.sh and
# scripts/netns-run.sh (docs/testbed.md). Builds a 3-host cluster of its own (fxt<pid>), checks
# addresses, reachability, that the root namespace is untouched, tc shaping (--rate, shape,
# shape-path, measured with short bounded TCP transfers), the launcher (prefixes, exit status,
# timeout, SIGTERM, nothing left running) and, when fx-bench is built, a 6-rank all-reduce over 3
# hosts. Tears everything down at the end, failure or not.
#
# usage: tests/scripts/test_netns.sh        (as root; meson runs it as the test netns-testbed)
#   FX_BENCH=path   fx-bench to run (default: the newest build*/tools/fx-bench); fx-id is taken
#                   from the same directory. Other FX_* variables (FX_TRANSPORT, FX_DEBUG) pass
#                   through to the ranks.
# Exit status: 0 all passed, 1 some failed, 77 skipped (not root, or no ip netns).
# Prints "N passed, N failed" last. Takes about 15 s.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=$ROOT/scripts/netns-cluster.sh
RUN=$ROOT/scripts/netns-run.sh
NAME=fxt$$
MARK=$$$RANDOM
PASSED=0
FAILED=0
TMP=
# Background processes running now (a receiver, a launcher), killed by finish if still there.
BG_RX=
BG_RUN=

# shellcheck source=tests/scripts/netns-lib.sh
. "$ROOT/tests/scripts/netns-lib.sh"
require_netns
# FX_BENCH is for this script only: the library would warn about an FX_ variable it does not know.
BENCH=${FX_BENCH:-}
unset FX_BENCH

# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then
        pass "$what"
    else
        fail "$what"
    fi
}

# Runs a command with its output discarded; succeeds when it fails.
fails() {
    ! "$@" >/dev/null 2>&1
}

# Runs a command with its output discarded; succeeds when its status is WANT.
status_is() {
    local want=$1 rc
    shift

    "$@" >/dev/null 2>&1
    rc=$?
    [ "$rc" = "$want" ]
}

# logged FILE COMMAND...: runs the command with its output in FILE, shown when it fails.
logged() {
    local file=$1
    shift

    if "$@" >"$file" 2>&1; then
        return 0
    fi
    sed 's/^/   | /' "$file"
    return 1
}

matches() {
    [[ $1 =~ $2 ]]
}

finish() {
    local p

    trap - EXIT INT TERM
    for p in $BG_RX $BG_RUN; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    "$CLUSTER" down --name "$NAME" >/dev/null 2>&1 || true
    [ -z "$TMP" ] || rm -rf "$TMP"
}

# Interfaces and addresses of the root namespace, without counters or states that change.
root_links() {
    ip -o link | awk -F': ' '{ print $1 ": " $2 }'
    ip -o addr | awk '{ print $2, $3, $4 }'
}

# ------------------------------------------------------------------ transfers

write_bw_tool() {
    cat >"$TMP/bw.py" <<'EOF'
# recv ADDR PORT: accept one connection, read to EOF, answer one byte.
# send ADDR PORT BYTES: send BYTES, wait for the answer, print Mbit/s.
import socket, sys, time
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "recv":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(30)
    print("ready", flush=True)
    c, _ = s.accept()
    c.settimeout(15)
    while c.recv(1 << 16):
        pass
    c.sendall(b"k")
    c.close()
else:
    left = nbytes = int(sys.argv[4])
    buf = b"x" * (1 << 16)
    deadline = time.monotonic() + 15
    while True:  # a loaded machine may start the receiver late: retry refusals for 15 s
        try:
            c = socket.create_connection((addr, port), timeout=15)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    t = time.monotonic()
    while left > 0:
        left -= c.send(buf[:min(left, len(buf))])
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    print("%.0f" % (nbytes * 8 / (time.monotonic() - t) / 1e6))
EOF
}

# Mbit/s of a BYTES transfer from host A to host B; empty on failure. Both ends are bounded by
# timeout(1); the receiver is waited for at most 15 s to be ready (Python starts slowly on a
# loaded machine), and the sender retries a refused connection for 15 s more.
transfer() {
    local a=$1 b=$2 bytes=$3
    local addr port=$((20000 + RANDOM % 10000)) rx i out

    addr=$("$CLUSTER" addr "$b" --name "$NAME") || return 0
    ip netns exec "$NAME-h$b" timeout 40 python3 "$TMP/bw.py" recv "$addr" "$port" \
        >"$TMP/rx.out" 2>&1 &
    rx=$!
    BG_RX=$rx
    for ((i = 0; i < 150; i++)); do
        grep -q ready "$TMP/rx.out" && break
        sleep 0.1
    done
    out=$(ip netns exec "$NAME-h$a" timeout 40 python3 "$TMP/bw.py" send "$addr" "$port" "$bytes")
    wait "$rx" 2>/dev/null
    BG_RX=
    echo "$out"
}

# Whether host A reaches host B: ping when installed, else a one-byte TCP transfer.
reaches() {
    if command -v ping >/dev/null; then
        ip netns exec "$NAME-h$1" ping -c1 -W1 "$("$CLUSTER" addr "$2" --name "$NAME")" >/dev/null
    else
        [ -n "$(transfer "$1" "$2" 1)" ]
    fi
}

# ------------------------------------------------------------------ cluster checks

test_up() {
    local before after a i j addrs=

    before=$(root_links)
    check "up 3 --rate 1gbit" logged "$TMP/up.out" "$CLUSTER" up 3 --name "$NAME" --rate 1gbit
    after=$(root_links)
    check "root namespace gains no interface or address" [ "$before" = "$after" ]
    for ns in "$NAME-sw" "$NAME-h0" "$NAME-h1" "$NAME-h2"; do
        check "namespace $ns exists" grep -qx "$ns" <(ip netns list | awk '{ print $1 }')
    done
    for i in 0 1 2; do
        a=$("$CLUSTER" addr "$i" --name "$NAME")
        check "addr $i is 10.77.X.$((i + 1)) ($a)" matches "$a" "^10\.77\.[0-9]+\.$((i + 1))\$"
        addrs+="$a "
        check "host $i has no default route (nothing outside is reachable)" \
            [ -z "$(ip -n "$NAME-h$i" route show default)" ]
    done
    check "switch namespace has no IPv4 address" [ -z "$(ip -n "$NAME-sw" -4 -o addr)" ]
    for i in 0 1 2; do
        for j in 0 1 2; do
            [ "$i" = "$j" ] || check "host $i reaches host $j" reaches "$i" "$j"
        done
    done
    check "--rate puts tbf 1Gbit on host 0's eth0" \
        grep -q 'tbf.*rate 1Gbit' <(tc -n "$NAME-h0" qdisc show dev eth0)
    check "--rate puts tbf 1Gbit on the switch port toward host 2" \
        grep -q 'tbf.*rate 1Gbit' <(tc -n "$NAME-sw" qdisc show dev p2)
    check "up on an existing cluster fails without --replace" fails "$CLUSTER" up 3 --name "$NAME"
    check "the cluster survives the refused up" reaches 0 2
    check "up 0 is refused (status 2)" status_is 2 "$CLUSTER" up 0 --name "${NAME}x"
    check "up 65 is refused (status 2)" status_is 2 "$CLUSTER" up 65 --name "${NAME}x"
    check "a rate without a unit is refused (status 2)" \
        status_is 2 "$CLUSTER" shape 1 100 --name "$NAME"
    check "shape-path of a host to itself is refused" \
        fails "$CLUSTER" shape-path 1 1 10mbit --name "$NAME"
    check "a host beyond the cluster is refused" fails "$CLUSTER" shape 3 10mbit --name "$NAME"
}

test_shaping() {
    local slow back fast

    check "shape-path 0 1 20mbit" "$CLUSTER" shape-path 0 1 20mbit --name "$NAME"
    check "host 0's eth0 has htb and a u32 filter" \
        grep -q 'match' <(tc -n "$NAME-h0" filter show dev eth0)
    slow=$(transfer 0 1 2000000)
    back=$(transfer 1 0 2000000)
    fast=$(transfer 0 2 20000000)
    echo "   measured: 0->1 ${slow:-?} Mbit/s, 1->0 ${back:-?} Mbit/s, 0->2 ${fast:-?} Mbit/s"
    check "0->1 runs near 20mbit (${slow:-?} Mbit/s)" [ "${slow:-999}" -le 30 ]
    check "1->0 is slowed too (${back:-?} Mbit/s)" [ "${back:-999}" -le 30 ]
    check "0->2 is not slowed: over 5x 0->1 (${fast:-?} Mbit/s)" \
        [ "${fast:-0}" -gt $((5 * ${slow:-999})) ]
    check "clear 1 removes the path shaping on both ends" "$CLUSTER" clear 1 --name "$NAME"
    check "host 0's eth0 is back to tbf 1Gbit" \
        grep -q 'tbf.*rate 1Gbit' <(tc -n "$NAME-h0" qdisc show dev eth0)
    check "shape 2 200mbit" "$CLUSTER" shape 2 200mbit --name "$NAME"
    check "host 2's eth0 has tbf 200Mbit" \
        grep -q 'tbf.*rate 200Mbit' <(tc -n "$NAME-h2" qdisc show dev eth0)
    check "the switch port toward host 2 has tbf 200Mbit" \
        grep -q 'tbf.*rate 200Mbit' <(tc -n "$NAME-sw" qdisc show dev p2)
    check "clear" "$CLUSTER" clear --name "$NAME"
    check "host 2 is back to the cluster rate" \
        grep -q 'tbf.*rate 1Gbit' <(tc -n "$NAME-h2" qdisc show dev eth0)
    check "list runs" logged "$TMP/list.out" "$CLUSTER" list --name "$NAME"
}

# ------------------------------------------------------------------ launcher checks

test_run_output() {
    local r rc ok_out=1 ok_err=1 addr
    local -a addrs=()

    for r in 0 1 2; do
        addrs[r]=$("$CLUSTER" addr "$r" --name "$NAME")
    done
    # shellcheck disable=SC2016 # expanded by the ranks' shell
    "$RUN" 3 --ranks-per-host 2 --name "$NAME" --timeout 30 -- bash -c \
        'a=$(ip -4 -o addr show dev eth0 | awk "{ print \$4 }")
         echo "hello $FX_RANK of $FX_NRANKS on $(uname -n) at $a" \
             "if=$FX_SOCKET_IFNAME id=${FX_UNIQUE_ID:0:4}"
         echo "err $FX_RANK" >&2' \
        >"$TMP/run.out" 2>"$TMP/run.err"
    rc=$?
    check "netns-run 3 --ranks-per-host 2 succeeds (status $rc)" [ "$rc" = 0 ]
    for r in 0 1 2 3 4 5; do
        addr=${addrs[r / 2]}
        grep -qxF "[$r] hello $r of 6 on $NAME-h$((r / 2)) at $addr/24 if=eth0 id=fx1-" \
            "$TMP/run.out" || ok_out=0
        grep -qxF "[$r] err $r" "$TMP/run.err" || ok_err=0
    done
    check "rank r runs on host r/2, with FX_RANK, FX_NRANKS, FX_UNIQUE_ID, eth0; stdout prefixed" \
        [ "$ok_out" = 1 ]
    check "stderr prefixed on stderr" [ "$ok_err" = 1 ]
    [ "$ok_out" = 1 ] || cat "$TMP/run.out" "$TMP/run.err"
}

test_run_status() {
    local rc t0 t1 ok

    # shellcheck disable=SC2016 # expanded by the ranks' shell
    "$RUN" 3 --ranks-per-host 2 --name "$NAME" --timeout 30 -- \
        bash -c 'exit $((FX_RANK == 4 ? 7 : 0))' >/dev/null 2>&1
    rc=$?
    check "a rank's non-zero status is returned (7, got $rc)" [ "$rc" = 7 ]

    t0=$SECONDS
    "$RUN" 3 --ranks-per-host 2 --name "$NAME" --timeout 2 -- sleep "100.$MARK" \
        >/dev/null 2>"$TMP/timeout.err"
    rc=$?
    t1=$SECONDS
    ok=0
    [ "$rc" = 124 ] && [ $((t1 - t0)) -le 8 ] && ok=1
    check "--timeout 2 ends with 124 (got $rc) within 8 s ($((t1 - t0)) s)" [ "$ok" = 1 ]
    check "the timeout message names the ranks still running" \
        grep -q 'ranks still running: 0 1 2 3 4 5' "$TMP/timeout.err"
    check "no sleep is left after the timeout" fails pgrep -f "^sleep 100.$MARK\$"

    "$RUN" 2 --ranks-per-host 2 --name "$NAME" --timeout 60 -- \
        bash -c "sleep 101.$MARK & sleep 102.$MARK" >/dev/null 2>&1 &
    BG_RUN=$!
    for ((t0 = 0; t0 < 50; t0++)); do
        [ "$(pgrep -fc "^sleep 10[12].$MARK\$")" -ge 8 ] && break
        sleep 0.1
    done
    kill -TERM "$BG_RUN"
    wait "$BG_RUN"
    rc=$?
    BG_RUN=
    check "SIGTERM to netns-run ends it with 143 (got $rc)" [ "$rc" = 143 ]
    check "no rank process (background children included) is left after SIGTERM" \
        fails pgrep -f "^sleep 10[12].$MARK\$"
}

find_bench() {
    local f best=

    if [ -n "$BENCH" ]; then
        echo "$BENCH"
        return 0
    fi
    for f in "$ROOT"/build*/tools/fx-bench; do
        if [ -x "$f" ] && { [ -z "$best" ] || [ "$f" -nt "$best" ]; }; then
            best=$f
        fi
    done
    echo "$best"
}

# A real all-reduce: 6 ranks on 3 hosts, shared memory inside a host and TCP between hosts,
# every element checked (#wrong is the 10th and 14th column of rank 0's table).
test_bench() {
    local bench fxid rc wrong
    local -a idopt=()
    bench=$(find_bench)

    if [ -z "$bench" ] || [ ! -x "$bench" ]; then
        echo "note: no fx-bench built (set FX_BENCH or build one); all-reduce check not run"
        return 0
    fi
    fxid=$(dirname "$bench")/fx-id
    [ -x "$fxid" ] && idopt=(--fx-id "$fxid")
    for mode in id master; do
        [ "$mode" = master ] || [ ${#idopt[@]} -gt 0 ] || continue
        "$RUN" 3 --ranks-per-host 2 --name "$NAME" --timeout 120 --rendezvous "$mode" \
            "${idopt[@]}" -- "$bench" allreduce -b 8 -e 1M -f 8 -n 3 -w 1 -c 1 \
            >"$TMP/bench.out" 2>&1
        rc=$?
        wrong=$(awk '$1 == "[0]" && $2 ~ /^[0-9]+$/ { n++; w += $10 + $14 }
                     END { print n + 0, w + 0 }' "$TMP/bench.out")
        check "6-rank all-reduce on 3 hosts, rendezvous $mode: status 0 (got $rc)" [ "$rc" = 0 ]
        check "6-rank all-reduce, rendezvous $mode: 6 sizes, #wrong 0 (sizes, wrong: $wrong)" \
            [ "$wrong" = "6 0" ]
        if [ "$rc" != 0 ] || [ "$wrong" != "6 0" ]; then
            sed 's/^/   | /' "$TMP/bench.out" | tail -25
        fi
    done
}

test_down() {
    local before=$1

    check "down" "$CLUSTER" down --name "$NAME"
    check "no namespace of the cluster is left" \
        fails grep -E "^$NAME-(sw|h[0-9]+)\$" <(ip netns list | awk '{ print $1 }')
    check "no state is left" [ ! -e "/run/fx-netns/$NAME" ]
    check "root namespace is as before" [ "$before" = "$(root_links)" ]
    check "down again succeeds" "$CLUSTER" down --name "$NAME"
}

main() {
    local before

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/test_netns.XXXXXX")
    trap finish EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    write_bw_tool
    before=$(root_links)
    "$CLUSTER" down --name "$NAME" >/dev/null 2>&1
    test_up
    if grep -qx "$NAME-h2" <(ip netns list | awk '{ print $1 }'); then
        test_shaping
        test_run_output
        test_run_status
        test_bench
    else
        fail "no cluster: the remaining checks were not run"
    fi
    test_down "$before"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}

main "$@"
