#!/bin/bash
# netns-cluster.sh - a cluster of N "hosts" on this machine, for multi-host tests of libfabricx:
# each host is a network namespace with one NIC (eth0, a veth) plugged into one switch (a bridge
# in a namespace of its own), with optional bandwidth shaping by tc. docs/testbed.md.
#
# usage: scripts/netns-cluster.sh COMMAND [ARGS] [--name NAME]
#   up N [--rate RATE] [--nics M] [--replace]
#                                    create hosts NAME-h0 .. NAME-h(N-1) (N 1..64) on the
#                                    switch NAME-sw; --rate shapes every eth0 port, both
#                                    directions; --nics M (1..4) gives each host M NICs,
#                                    eth0 .. eth(M-1), NIC k on bridge brk, subnet 10.(77+k).X
#                                    (rails: shape, shape-path and clear act on eth0 only)
#   down                             remove the cluster; succeeds when partly or wholly gone
#   shape HOST RATE                  set one host's port rate, both directions
#   shape-path HOST_A HOST_B RATE    slow only the traffic between two hosts (htb + u32)
#   clear [HOST]                     undo shape/shape-path (of HOST and toward HOST, or all);
#                                    ports go back to the rate given to up, if any
#   list | status                    hosts, addresses and the qdiscs in place
#   addr HOST                        print the host's IPv4 address
# NAME defaults to fx: letters, digits and _, at most 16 characters. RATE is a tc rate with
# its unit: 100mbit, 1gbit, 10gbit, 50mbps (bytes), 1gibit (IEC).
# Needs root, iproute2 (ip, tc) and util-linux (flock). Exit status 0 on success, 1 on
# failure, 2 on a usage error. Nothing is created in the root network namespace: every
# interface and address lives in the cluster's namespaces; the only thing outside them is the
# state directory /run/fx-netns/NAME (rates in force, the subnet), which down removes, and the
# lock file /run/fx-netns/.lock ($NETNS_CLUSTER_STATE instead of /run/fx-netns if set).
set -euo pipefail

PROG=netns-cluster
STATE_ROOT=${NETNS_CLUSTER_STATE:-/run/fx-netns}
MAX_HOSTS=64
# Rate of the htb default class on a host whose port is unshaped: far above what a veth
# carries on any machine, so the class shapes nothing and only the per-peer classes bite.
UNSHAPED_RATE=100gbit

NAME=fx
RATE=
NICS=1
REPLACE=0
ARGS=()

usage() {
    # The comment at the head of this file, up to its first line of code.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

usage_error() {
    echo "$PROG: $*" >&2
    echo "run '$0 --help' for usage" >&2
    exit 2
}

# ------------------------------------------------------------------ arguments and names

is_uint() {
    [[ $1 =~ ^(0|[1-9][0-9]{0,5})$ ]]
}

# A tc rate with an explicit unit. tc alone would also take a bare number (bits/s) and "5%"
# (of the link speed, which a veth does not have); both are refused as too easy to misread.
check_rate() {
    local r=${1,,}

    [[ $r =~ ^[0-9]+(\.[0-9]+)?([kmgt]i?)?(bit|bps)$ ]] ||
        usage_error "rate '$1' is not a tc rate with a unit (e.g. 500mbit, 1gbit, 10gbit)"
    [ "$(rate_bits "$r")" -ge 8000 ] || usage_error "rate '$1' is below 8kbit"
}

# Bits per second of a rate check_rate accepted, as an integer.
rate_bits() {
    local r=${1,,}
    local num=${r%%[a-z]*}
    local unit=${r#"$num"}

    awk -v n="$num" -v u="$unit" 'BEGIN {
        m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12;
        m["kibit"] = 1024; m["mibit"] = 1048576; m["gibit"] = 1073741824;
        m["tibit"] = 1099511627776;
        m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9; m["tbps"] = 8e12;
        m["kibps"] = 8192; m["mibps"] = 8388608; m["gibps"] = 8589934592;
        m["tibps"] = 8796093022208;
        printf "%.0f\n", n * m[u] }'
}

# Token bucket size in bytes for a rate. tc's rule is burst >= rate / HZ (Debian kernels:
# HZ=250), or the bucket runs dry between two timer ticks and the rate is never reached; 4 ms of
# traffic meets it. It is at least 64 KiB because veth hands the qdisc whole TSO/GSO segments of
# up to 64 KiB: a smaller bucket makes tbf split each one (and htb overdraw its class). At
# 1gbit that is 500 KB (a 4 ms burst at line rate), at 100mbit 64 KiB (5 ms): short against the
# seconds a transfer being measured lasts.
burst_bytes() {
    local b=$(($(rate_bits "$1") / 8 / 250))

    echo $((b > 65536 ? b : 65536))
}

check_name() {
    [[ $NAME =~ ^[A-Za-z0-9_]{1,16}$ ]] ||
        usage_error "cluster name '$NAME' must be 1 to 16 letters, digits or _ (no '-': the" \
            "namespaces NAME-sw and NAME-hI are found by that separator)"
}

# Host index given on the command line: an integer below the cluster's size.
check_host() {
    local n

    is_uint "$1" || usage_error "host '$1' is not a host index (0, 1, ...)"
    n=$(cluster_size)
    [ "$1" -lt "$n" ] || die "cluster $NAME has hosts 0 to $((n - 1)), not $1"
}

sw_ns() { echo "$NAME-sw"; }
host_ns() { echo "$NAME-h$1"; }
state_dir() { echo "$STATE_ROOT/$NAME"; }

# The namespaces of this cluster that exist now, whoever made them and however far up got.
cluster_namespaces() {
    ip netns list | awk '{ print $1 }' | grep -E "^$NAME-(sw|h[0-9]+)\$" || true
}

# Number of hosts, from the state up wrote; dies when the cluster is not up.
cluster_size() {
    local f
    f=$(state_dir)/n

    if [ ! -r "$f" ] || ! cluster_namespaces | grep -x "$(sw_ns)" >/dev/null; then
        die "no cluster named $NAME (run: $0 up N --name $NAME)"
    fi
    cat "$f"
}

# Third octet of the cluster's 10.77.X.0/24: a hash of the name, moved on to the next free value
# when a live cluster of another name has it, so that clusters that exist together never share
# addresses (their switches are separate anyway; this keeps logs and captures unambiguous).
pick_subnet() {
    local x
    local used=" "
    local f

    x=$(($(printf '%s' "$NAME" | cksum | cut -d' ' -f1) % 256))
    for f in "$STATE_ROOT"/*/subnet; do
        [ -r "$f" ] && [ "$f" != "$(state_dir)/subnet" ] && used+="$(cat "$f") "
    done
    for _ in $(seq 256); do
        [[ $used == *" $x "* ]] || break
        x=$(((x + 1) % 256))
    done
    [[ $used != *" $x "* ]] || die "all 256 subnets 10.77.X.0/24 are taken by live clusters"
    echo "$x"
}

host_addr() {
    echo "10.77.$(cat "$(state_dir)/subnet").$(($1 + 1))"
}

# Serialises commands that change a cluster, so that two shells shaping at once do not
# interleave their tc calls. The lock file is the only thing kept across clusters.
take_lock() {
    mkdir -p "$STATE_ROOT"
    exec 9>"$STATE_ROOT/.lock"
    flock -w 60 9 || die "another $PROG command holds $STATE_ROOT/.lock for over 60 s"
}

# ------------------------------------------------------------------ shaping

# Root qdisc of a device back to the default, when something else is there. A veth's default is
# noqueue, and deleting it is an error, so look first.
tc_reset_root() {
    local ns=$1 dev=$2

    if ! tc -n "$ns" qdisc show dev "$dev" root | grep '^qdisc noqueue' >/dev/null; then
        tc -n "$ns" qdisc del dev "$dev" root
    fi
}

# tbf at RATE on a device's egress. latency 50ms bounds the queue tbf keeps (limit = 50 ms of
# traffic plus the bucket): deep enough that TCP reaches the rate, shallow enough that a shaped
# port does not add seconds of delay.
tc_tbf() {
    local ns=$1 dev=$2 rate=$3

    tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$(burst_bytes "$rate")" \
        latency 50ms
}

# Port rate of a host: its own (shape) or the cluster's (up --rate); empty when unshaped.
port_rate() {
    local d
    d=$(state_dir)

    if [ -s "$d/h$1.rate" ]; then
        cat "$d/h$1.rate"
    elif [ -s "$d/rate" ]; then
        cat "$d/rate"
    fi
}

# htb on a host's eth0: class 1:1 at the port rate holds a default class 1:10 for all traffic
# and one class 1:1PP (hex 0x100 + peer) per slowed peer, chosen by a u32 filter on the peer's
# IPv4 address. Children share 1:1's ceiling, so the port rate still bounds their sum. (tc reads
# class minors in hex: "default 10" and "1:10" are the same class, 0x10.) An explicit quantum
# (bytes a class sends per round) keeps htb from deriving one from the rate, which at gigabit
# rates exceeds its limit and draws a warning on every call.
tc_htb_paths() {
    local i=$1 port=$2 paths=$3
    local ns
    local peer rate cid b
    ns=$(host_ns "$i")
    b=$(burst_bytes "$port")

    tc_reset_root "$ns" eth0
    tc -n "$ns" qdisc add dev eth0 root handle 1: htb default 10
    tc -n "$ns" class add dev eth0 parent 1: classid 1:1 htb rate "$port" ceil "$port" \
        burst "$b" cburst "$b" quantum 65536
    tc -n "$ns" class add dev eth0 parent 1:1 classid 1:10 htb rate "$port" ceil "$port" \
        burst "$b" cburst "$b" quantum 65536
    while read -r peer rate; do
        cid=$(printf '1:%x' $((0x100 + peer)))
        b=$(burst_bytes "$rate")
        tc -n "$ns" class add dev eth0 parent 1:1 classid "$cid" htb rate "$rate" ceil "$rate" \
            burst "$b" cburst "$b" quantum 65536
        tc -n "$ns" filter add dev eth0 parent 1: protocol ip prio 1 u32 \
            match ip dst "$(host_addr "$peer")/32" flowid "$cid"
    done <"$paths"
}

# Makes host I's qdiscs match the state: the switch port's egress (toward the host) carries the
# port rate; the host's eth0 carries the port rate too, or htb when some path to it is slowed.
render_host() {
    local i=$1
    local port paths
    port=$(port_rate "$i")
    paths=$(state_dir)/h$i.paths

    if [ -n "$port" ]; then
        tc_tbf "$(sw_ns)" "p$i" "$port"
    else
        tc_reset_root "$(sw_ns)" "p$i"
    fi
    if [ -s "$paths" ]; then
        tc_htb_paths "$i" "${port:-$UNSHAPED_RATE}" "$paths"
    elif [ -n "$port" ]; then
        tc_tbf "$(host_ns "$i")" eth0 "$port"
    else
        tc_reset_root "$(host_ns "$i")" eth0
    fi
}

# Records "PEER RATE" in host I's path list, replacing an older rate for that peer.
set_path() {
    local f
    f=$(state_dir)/h$1.paths

    touch "$f"
    grep -v "^$2 " "$f" >"$f.new" || true
    echo "$2 $3" >>"$f.new"
    sort -n "$f.new" >"$f"
    rm -f "$f.new"
}

drop_path() {
    local f
    f=$(state_dir)/h$1.paths

    [ -e "$f" ] || return 0
    grep -v "^$2 " "$f" >"$f.new" || true
    mv "$f.new" "$f"
}

# ------------------------------------------------------------------ up and down

# Removes every namespace of the cluster and its state. Deleting a namespace destroys the veth
# ends in it, and with them their peers, so no interface outlives this. Returns non-zero only
# when a namespace could not be deleted.
teardown() {
    local ns pids
    local rc=0

    for ns in $(cluster_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
        if [ -n "$pids" ]; then
            echo "$PROG: warning: processes still in $ns: $pids(the namespace lives on," \
                "unnamed, until they exit)" >&2
        fi
        ip netns del "$ns" || rc=1
    done
    rm -rf "$(state_dir)"
    return $rc
}

CURRENT_STEP=
UP_DONE=0

# One step of up, named for the message should it fail: under set -e a failing command ends the
# script, and the EXIT trap (up_abort) names the step and removes what up had made. The command
# is not run inside an "if", where bash would ignore set -e in the functions it calls.
step() {
    CURRENT_STEP=$1
    shift
    "$@"
}

up_abort() {
    local rc=$?

    trap - EXIT INT TERM
    [ "$UP_DONE" = 1 ] && exit "$rc"
    [ "$rc" -ne 0 ] || rc=1
    if [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; then
        echo "$PROG: up of cluster $NAME interrupted during step '${CURRENT_STEP:-start}';" \
            "removing what it made" >&2
    else
        echo "$PROG: up of cluster $NAME failed at step '${CURRENT_STEP:-start}' (status $rc);" \
            "removing what it made" >&2
    fi
    teardown || true
    exit "$rc"
}

add_host() {
    local i=$1 sw=$2 subnet=$3
    local ns k
    ns=$(host_ns "$i")

    step "create namespace $ns" ip netns add "$ns"
    # Both ends are created directly in their namespaces: nothing passes through the root one.
    step "create veth $sw/p$i - $ns/eth0" \
        ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns"
    step "plug p$i into the switch" ip -n "$sw" link set "p$i" master br0 up
    step "address 10.77.$subnet.$((i + 1))/24 on $ns/eth0" \
        ip -n "$ns" addr add "10.77.$subnet.$((i + 1))/24" dev eth0
    step "bring up $ns/eth0" ip -n "$ns" link set eth0 up
    for ((k = 1; k < NICS; k++)); do
        step "create veth $sw/p${i}r$k - $ns/eth$k" \
            ip -n "$sw" link add "p${i}r$k" type veth peer name "eth$k" netns "$ns"
        step "plug p${i}r$k into br$k" ip -n "$sw" link set "p${i}r$k" master "br$k" up
        step "address 10.$((77 + k)).$subnet.$((i + 1))/24 on $ns/eth$k" \
            ip -n "$ns" addr add "10.$((77 + k)).$subnet.$((i + 1))/24" dev "eth$k"
        step "bring up $ns/eth$k" ip -n "$ns" link set "eth$k" up
    done
    step "bring up $ns/lo" ip -n "$ns" link set lo up
}

cmd_up() {
    local n=${ARGS[0]:-}
    local sw subnet existing d
    sw=$(sw_ns)
    d=$(state_dir)

    [ ${#ARGS[@]} -eq 1 ] || usage_error "up takes one argument, the number of hosts"
    if ! is_uint "$n" || [ "$n" -lt 1 ] || [ "$n" -gt $MAX_HOSTS ]; then
        usage_error "number of hosts '$n' must be 1 to $MAX_HOSTS"
    fi
    [ -z "$RATE" ] || check_rate "$RATE"
    take_lock
    existing=$(cluster_namespaces | tr '\n' ' ')
    if [ -n "$existing" ]; then
        [ "$REPLACE" = 1 ] ||
            die "cluster $NAME exists (namespaces: $existing); down it or pass --replace"
        teardown || die "cannot remove the existing cluster $NAME"
    fi
    # State left by a cluster whose namespaces are gone (deleted by hand) means nothing.
    rm -rf "$d"
    subnet=$(pick_subnet)
    trap up_abort EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    step "create state directory $d" mkdir -p "$d"
    echo "$n" >"$d/n"
    echo "$subnet" >"$d/subnet"
    printf %s "$RATE" >"$d/rate"
    step "create namespace $sw" ip netns add "$sw"
    # The switch has no address; without IPv6 its ports do not chatter (autoconf, MLD).
    step "disable IPv6 in $sw" ip netns exec "$sw" \
        sh -c 'echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 &&
               echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6'
    # No STP: ports forward as soon as they are up, and a star has no loop to break.
    echo "$NICS" >"$d/nics"
    for ((k = 0; k < NICS; k++)); do
        step "create bridge br$k in $sw" ip -n "$sw" link add "br$k" type bridge stp_state 0
        step "bring up br$k" ip -n "$sw" link set "br$k" up
    done
    for ((i = 0; i < n; i++)); do
        add_host "$i" "$sw" "$subnet"
    done
    if [ -n "$RATE" ]; then
        for ((i = 0; i < n; i++)); do
            step "shape host $i to $RATE" render_host "$i"
        done
    fi
    UP_DONE=1
    trap - EXIT INT TERM
    cmd_list
}

cmd_down() {
    [ ${#ARGS[@]} -eq 0 ] || usage_error "down takes no argument but --name"
    take_lock
    teardown || die "some namespaces of $NAME could not be deleted: $(cluster_namespaces)"
}

# ------------------------------------------------------------------ shaping commands

# A tc call that fails leaves a host half shaped (tc says why just above); say how to get back
# to a known state.
on_shape_exit() {
    local rc=$?

    if [ "$rc" -ne 0 ]; then
        echo "$PROG: shaping failed (status $rc); '$0 clear --name $NAME' puts every port back" \
            "to the cluster's rate" >&2
    fi
}

cmd_shape() {
    [ ${#ARGS[@]} -eq 2 ] || usage_error "usage: shape HOST RATE"
    check_host "${ARGS[0]}"
    check_rate "${ARGS[1]}"
    take_lock
    trap on_shape_exit EXIT
    echo "${ARGS[1]}" >"$(state_dir)/h${ARGS[0]}.rate"
    render_host "${ARGS[0]}"
}

cmd_shape_path() {
    local a=${ARGS[0]:-} b=${ARGS[1]:-} rate=${ARGS[2]:-}

    [ ${#ARGS[@]} -eq 3 ] || usage_error "usage: shape-path HOST_A HOST_B RATE"
    check_host "$a"
    check_host "$b"
    [ "$a" -ne "$b" ] || usage_error "shape-path needs two different hosts"
    check_rate "$rate"
    take_lock
    trap on_shape_exit EXIT
    set_path "$a" "$b" "$rate"
    set_path "$b" "$a" "$rate"
    render_host "$a"
    render_host "$b"
}

cmd_clear() {
    local n i h
    local d
    d=$(state_dir)

    [ ${#ARGS[@]} -le 1 ] || usage_error "usage: clear [HOST]"
    n=$(cluster_size)
    take_lock
    if [ ${#ARGS[@]} -eq 0 ]; then
        rm -f "$d"/h*.rate "$d"/h*.paths
        for ((i = 0; i < n; i++)); do
            render_host "$i"
        done
        return 0
    fi
    h=${ARGS[0]}
    check_host "$h"
    rm -f "$d/h$h.rate" "$d/h$h.paths"
    render_host "$h"
    for ((i = 0; i < n; i++)); do
        if [ "$i" -ne "$h" ] && [ -s "$d/h$i.paths" ] && grep -q "^$h " "$d/h$i.paths"; then
            drop_path "$i" "$h"
            render_host "$i"
        fi
    done
}

# ------------------------------------------------------------------ queries

indent_tc() {
    sed 's/^/        /'
}

cmd_list() {
    local n i ns d paths nics
    d=$(state_dir)

    n=$(cluster_size)
    echo "cluster $NAME: $n host(s) on switch $(sw_ns) (bridge br0)," \
        "subnet 10.77.$(cat "$d/subnet").0/24, port rate $(grep . "$d/rate" || echo unshaped)"
    nics=$(cat "$d/nics" 2>/dev/null || echo 1)
    [ "$nics" -le 1 ] || echo "$nics NICs per host: NIC k (ethk) on bridge brk, subnet" \
        "10.(77+k).$(cat "$d/subnet").0/24, unshaped"
    for ((i = 0; i < n; i++)); do
        ns=$(host_ns "$i")
        paths=
        [ -s "$d/h$i.paths" ] && paths=$(awk '{ printf " to %s: %s;", $1, $2 }' "$d/h$i.paths")
        echo "host $i  $ns  $(ip -n "$ns" -4 -o addr show | awk '$2 != "lo" { printf "%s ", $4 }')" \
            " port $(port_rate "$i" | grep . || echo unshaped)${paths:+ (slowed$paths)}"
        echo "    eth0 (host -> switch):"
        {
            tc -n "$ns" qdisc show dev eth0
            tc -n "$ns" class show dev eth0
            tc -n "$ns" filter show dev eth0 | grep -E 'match|flowid' || true
        } | indent_tc
        echo "    $(sw_ns) p$i (switch -> host):"
        tc -n "$(sw_ns)" qdisc show dev "p$i" | indent_tc
    done
}

cmd_addr() {
    local a

    [ ${#ARGS[@]} -eq 1 ] || usage_error "usage: addr HOST"
    check_host "${ARGS[0]}"
    a=$(ip -n "$(host_ns "${ARGS[0]}")" -4 -o addr show dev eth0 | awk '{ print $4 }')
    [ -n "$a" ] || die "host ${ARGS[0]} of $NAME has no IPv4 address on eth0"
    echo "${a%/*}"
}

# ------------------------------------------------------------------ main

main() {
    local cmd=${1:-}

    [ $# -gt 0 ] || { usage >&2; exit 2; }
    shift
    case $cmd in
    -h | --help | help) usage; exit 0 ;;
    esac
    while [ $# -gt 0 ]; do
        case $1 in
        --name) [ $# -ge 2 ] || usage_error "--name needs a value"; NAME=$2; shift 2 ;;
        --name=*) NAME=${1#--name=}; shift ;;
        --rate) [ $# -ge 2 ] || usage_error "--rate needs a value"; RATE=$2; shift 2 ;;
        --rate=*) RATE=${1#--rate=}; shift ;;
        --nics) [ $# -ge 2 ] || usage_error "--nics needs a value"; NICS=$2; shift 2 ;;
        --nics=*) NICS=${1#--nics=}; shift ;;
        --replace) REPLACE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage_error "unknown option $1" ;;
        *) ARGS+=("$1"); shift ;;
        esac
    done
    check_name
    [ "$cmd" = up ] || { [ -z "$RATE" ] && [ "$REPLACE" = 0 ] && [ "$NICS" = 1 ]; } ||
        usage_error "--rate, --nics and --replace go with up only"
    if ! is_uint "$NICS" || [ "$NICS" -lt 1 ] || [ "$NICS" -gt 4 ]; then
        usage_error "--nics '$NICS' must be 1 to 4"
    fi
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces and tc)"
    case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    shape) cmd_shape ;;
    shape-path) cmd_shape_path ;;
    clear) cmd_clear ;;
    list | status)
        [ ${#ARGS[@]} -eq 0 ] || usage_error "$cmd takes no argument but --name"
        cmd_list
        ;;
    addr) cmd_addr ;;
    *) usage_error "unknown command '$cmd'" ;;
    esac
}

main "$@"
