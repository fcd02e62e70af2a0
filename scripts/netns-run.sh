#!/bin/bash
# netns-run.sh - start a job's ranks on the hosts of a namespace cluster made by
# scripts/netns-cluster.sh: K ranks in each of N hosts, rank r = I*K + k being rank k of host I
# (namespace NAME-hI), with the variables libfabricx's fx_comm_init_env reads. docs/testbed.md.
#
# usage: scripts/netns-run.sh N [--ranks-per-host K] [--name NAME] [--timeout SEC]
#                             [--rendezvous id|master] [--fx-id PATH] -- CMD [ARG...]
#   --ranks-per-host K  ranks per host (default 1)
#   --name NAME         cluster name (default fx)
#   --timeout SEC       kill every rank after SEC seconds, exit 124 (default 300)
#   --rendezvous id     FX_UNIQUE_ID made by fx-id inside NAME-h0, so that it holds host 0's
#                       address (default, when fx-id is found)
#   --rendezvous master torchrun's MASTER_ADDR (host 0), MASTER_PORT (free), RANK, WORLD_SIZE and
#                       a random FX_JOB_SECRET instead (default when fx-id is not found)
#   --fx-id PATH        the fx-id to use (else fx-id on PATH, else this checkout's
#                       build*/tools/fx-id, the newest)
# Every rank gets FX_RANK, FX_NRANKS, LOCAL_RANK (k) and FX_SOCKET_IFNAME=eth0 unless the caller
# set FX_SOCKET_IFNAME; its host name (uname -n) is its namespace's name, so that the library's
# errors name the host. Each line a rank writes is prefixed "[r] ", stdout to stdout and stderr
# to stderr; a rank's stdin is /dev/null.
# Exit status: the first non-zero status a rank ended with, in time order, else 0; 124 on
# timeout; 130 / 143 on SIGINT / SIGTERM; 1 when the job cannot start; 2 on a usage error.
# On timeout or signal, every rank's whole process group gets SIGTERM, then SIGKILL after 3 s;
# nothing the ranks started is left running (except what left their process group itself).
set -euo pipefail

PROG=netns-run
ROOT=$(cd "$(dirname "$0")/.." && pwd)

NAME=fx
K=1
TIMEOUT=300
RENDEZVOUS=
FX_ID_PATH=
CMD=()

# Rank state: the pid of each rank's process-group leader (the pgid too, see start_rank).
declare -a RANK_PID=()
declare -A RANK_OF_PID=()
declare -a HELPERS=()
TMP=
FIRST_RC=0
STOPPING=0

usage() {
    # The comment at the head of this file, up to its first line of code.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

say() {
    echo "$PROG: $*" >&2
}

die() {
    say "$*"
    exit 1
}

usage_error() {
    say "$*"
    echo "run '$0 --help' for usage" >&2
    exit 2
}

is_count() {
    [[ $1 =~ ^[1-9][0-9]{0,5}$ ]]
}

parse_args() {
    [ $# -gt 0 ] || { usage >&2; exit 2; }
    case $1 in
    -h | --help) usage; exit 0 ;;
    esac
    N=$1
    shift
    while [ $# -gt 0 ]; do
        case $1 in
        --) shift; CMD=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        --ranks-per-host | --name | --timeout | --rendezvous | --fx-id)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            case $1 in
            --ranks-per-host) K=$2 ;;
            --name) NAME=$2 ;;
            --timeout) TIMEOUT=$2 ;;
            --rendezvous) RENDEZVOUS=$2 ;;
            --fx-id) FX_ID_PATH=$2 ;;
            esac
            shift 2
            ;;
        *) usage_error "unexpected '$1' (the command goes after --)" ;;
        esac
    done
    if ! is_count "$N" || [ "$N" -gt 64 ]; then
        usage_error "number of hosts '$N' must be 1 to 64"
    fi
    if ! is_count "$K" || [ "$K" -gt 256 ]; then
        usage_error "--ranks-per-host '$K' must be 1 to 256"
    fi
    is_count "$TIMEOUT" || usage_error "--timeout '$TIMEOUT' must be a number of seconds"
    [[ $NAME =~ ^[A-Za-z0-9_]{1,16}$ ]] || usage_error "cluster name '$NAME' is not valid"
    [[ $RENDEZVOUS =~ ^(|id|master)$ ]] || usage_error "--rendezvous is id or master"
    [ ${#CMD[@]} -gt 0 ] || usage_error "no command: put it after --"
}

# ------------------------------------------------------------------ rendezvous

find_fx_id() {
    local f best=

    if [ -n "$FX_ID_PATH" ]; then
        [ -x "$FX_ID_PATH" ] || die "--fx-id $FX_ID_PATH is not an executable"
        echo "$FX_ID_PATH"
        return 0
    fi
    if command -v fx-id >/dev/null; then
        command -v fx-id
        return 0
    fi
    for f in "$ROOT"/build*/tools/fx-id; do
        if [ -x "$f" ] && { [ -z "$best" ] || [ "$f" -nt "$best" ]; }; then
            best=$f
        fi
    done
    echo "$best"
}

# FX_UNIQUE_ID made inside host 0, so that it carries host 0's address (FX_SOCKET_IFNAME picks
# eth0). fx-id's listener closes when it exits; rank 0 then binds the id's port itself
# (fx_boot.c root_listener), which is free: nothing else in NAME-h0 listens on it.
make_unique_id() {
    local fxid=$1 id

    id=$(timeout 30 ip netns exec "$NAME-h0" "$fxid") || die "fx-id failed in $NAME-h0 ($fxid)"
    [[ $id == fx1-* ]] || die "fx-id printed no unique id: $id"
    export FX_UNIQUE_ID=$id
    unset MASTER_ADDR MASTER_PORT
}

# torchrun's variables: rank 0 listens on MASTER_PORT + 1. The port is drawn below the
# namespace's ephemeral range, so no socket of another rank can have been given it meanwhile.
make_master() {
    local addr low port i

    addr=$(ip -n "$NAME-h0" -4 -o addr show dev eth0 | awk '{ sub("/.*", "", $4); print $4 }')
    [ -n "$addr" ] || die "host 0 ($NAME-h0) has no IPv4 address on eth0"
    low=$(ip netns exec "$NAME-h0" cat /proc/sys/net/ipv4/ip_local_port_range | awk '{ print $1 }')
    [ "$low" -gt 10002 ] || die "the ephemeral port range of $NAME-h0 starts at $low"
    port=
    for ((i = 0; i < 20; i++)); do
        port=$((10000 + SRANDOM % (low - 10001)))
        if ! ip netns exec "$NAME-h0" ss -Hltn "( sport = :$port or sport = :$((port + 1)) )" |
            grep . >/dev/null; then
            break
        fi
        port=
    done
    [ -n "$port" ] || die "no free port pair found in $NAME-h0 in 20 tries"
    export MASTER_ADDR=$addr MASTER_PORT=$port WORLD_SIZE=$((N * K))
    FX_JOB_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    export FX_JOB_SECRET
    unset FX_UNIQUE_ID
}

setup_rendezvous() {
    local fxid=

    if [ "$RENDEZVOUS" != master ]; then
        fxid=$(find_fx_id)
        if [ -z "$fxid" ]; then
            [ "$RENDEZVOUS" != id ] || die "--rendezvous id: no fx-id found (build it, or --fx-id)"
            say "no fx-id found (ninja -C build tools/fx-id); using MASTER_ADDR/MASTER_PORT"
        fi
    fi
    if [ -n "$fxid" ]; then
        make_unique_id "$fxid"
    else
        make_master
    fi
}

# ------------------------------------------------------------------ ranks

# Prefixes each line of a FIFO with "[r] ". It ignores SIGINT and SIGTERM (inherited through
# exec) so that a Ctrl-C, which reaches this script's whole process group, leaves it reading
# until the ranks' last words; it ends at end of file, when every writer is gone.
start_prefixer() {
    local r=$1 fifo=$2 fd=$3

    (
        trap '' INT TERM
        if [ "$fd" = 2 ]; then
            exec sed -u "s/^/[$r] /" <"$fifo" >&2
        fi
        exec sed -u "s/^/[$r] /" <"$fifo"
    ) &
    HELPERS+=($!)
}

# Starts rank r on host I as the leader of a new session, hence of its own process group whose
# id is the pid $! gives: setsid(1) does not fork when its caller leads no group, as a
# background job of a shell without job control never does. Variables are exported rather than
# passed on a command line, where ps would show the secret the id holds. timeout(1) is a backstop
# that ends the group should this script be killed without a chance to clean up.
start_rank() {
    local r=$1 host=$2 k=$3
    local ns=$NAME-h$host

    mkfifo "$TMP/$r.out" "$TMP/$r.err"
    start_prefixer "$r" "$TMP/$r.out" 1
    start_prefixer "$r" "$TMP/$r.err" 2
    (
        export FX_RANK=$r FX_NRANKS=$((N * K)) LOCAL_RANK=$k
        [ -z "${MASTER_ADDR:-}" ] || export RANK=$r
        # shellcheck disable=SC2016 # $0 and $@ are for the inner sh
        exec setsid timeout -k 5 $((TIMEOUT + 30)) ip netns exec "$ns" \
            unshare --uts -- sh -c 'echo "$0" >/proc/sys/kernel/hostname && exec "$@"' \
            "$ns" "${CMD[@]}" </dev/null >"$TMP/$r.out" 2>"$TMP/$r.err"
    ) &
    RANK_PID[r]=$!
    RANK_OF_PID[$!]=$r
}

# Sends a signal to the process group of every rank; ESRCH (group gone) is expected.
signal_ranks() {
    local sig=$1 p

    for p in "${RANK_PID[@]}"; do
        kill "-$sig" -- "-$p" 2>/dev/null || true
    done
}

# Whether a child of this script has ended: it is a zombie, or bash has already reaped it (and
# keeps its status for wait). The state is the field after the command name's closing paren.
ended() {
    local stat

    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    stat=${stat##*) }
    [ "${stat%% *}" = Z ]
}

# Collects the status of every rank that has ended, in rank order within one call. Ranks are
# polled, not waited for with wait -n: that cannot combine a deadline with a list of pids, and it
# does not see children bash has already reaped.
collect_ranks() {
    local r p st

    for ((r = 0; r < ${#RANK_PID[@]}; r++)); do
        p=${RANK_PID[r]}
        if [ -n "${RANK_OF_PID[$p]:-}" ] && ended "$p"; then
            st=0
            wait "$p" || st=$?
            unset "RANK_OF_PID[$p]"
            if [ "$st" -ne 0 ] && [ "$STOPPING" = 0 ]; then
                say "rank $r (host $((r / K))) exited with status $st"
                [ "$FIRST_RC" -ne 0 ] || FIRST_RC=$st
            fi
        fi
    done
}

# Milliseconds on a monotonic-enough clock, into NOW_MS (no subshell).
now_ms() {
    local t=${EPOCHREALTIME/./}

    NOW_MS=$((t / 1000))
}

# Polls until every rank has ended (0) or MS milliseconds have passed (1). Each pass sleeps
# 50 ms, so the pass count bounds the loop even if the clock misbehaves.
wait_ranks() {
    local ms=$1 i deadline

    now_ms
    deadline=$((NOW_MS + ms))
    for ((i = 0; i <= ms / 50; i++)); do
        collect_ranks
        [ ${#RANK_OF_PID[@]} -gt 0 ] || return 0
        now_ms
        [ "$NOW_MS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
    return 1
}

# Whether any process is left in a rank's group: a rank that ended may have left children, and
# a killed group takes a moment to empty. Ended leaders are reaped first, so that their zombies
# do not count.
groups_alive() {
    local pgids

    collect_ranks
    pgids=$(IFS=,; echo "${RANK_PID[*]}")
    pgrep -g "$pgids" >/dev/null
}

still_running() {
    local r list=

    for ((r = 0; r < ${#RANK_PID[@]}; r++)); do
        [ -z "${RANK_OF_PID[${RANK_PID[r]}]:-}" ] || list+="$r "
    done
    echo "$list"
}

# SIGTERM to every rank group, SIGKILL to whatever is left after 3 s, and every leader reaped.
stop_ranks() {
    local i

    STOPPING=1
    signal_ranks TERM
    for ((i = 0; i < 30; i++)); do
        groups_alive || return 0
        sleep 0.1
    done
    signal_ranks KILL
    wait_ranks 5000 || say "ranks $(still_running)did not die of SIGKILL within 5 s"
}

# On any exit: no rank group may outlive the script, and the prefixers get 2 s to drain (they end
# once the last writer of their FIFO is gone) before they are killed. Signals are ignored here
# so that a second Ctrl-C cannot cut the clean-up short.
cleanup() {
    local i p left

    trap '' INT TERM
    trap - EXIT
    if [ ${#RANK_PID[@]} -gt 0 ] && groups_alive; then
        stop_ranks
    fi
    for ((i = 0; i < 20; i++)); do
        left=0
        for p in "${HELPERS[@]}"; do
            ended "$p" || left=1
        done
        [ "$left" = 1 ] || break
        sleep 0.1
    done
    for p in "${HELPERS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    [ -z "$TMP" ] || rm -rf "$TMP"
}

# shellcheck disable=SC2317 # called from the INT and TERM traps
on_signal() {
    local sig=$1 rc=$2

    say "got SIG$sig; stopping ranks: $(still_running)"
    cleanup
    exit "$rc"
}

main() {
    local host k r namespaces

    parse_args "$@"
    [ "$(id -u)" = 0 ] || die "needs root (ip netns exec)"
    namespaces=" $(ip netns list | awk '{ print $1 }' | tr '\n' ' ')"
    for ((host = 0; host < N; host++)); do
        [[ $namespaces == *" $NAME-h$host "* ]] ||
            die "no namespace $NAME-h$host (run: scripts/netns-cluster.sh up $N --name $NAME)"
    done
    export FX_SOCKET_IFNAME=${FX_SOCKET_IFNAME-eth0}
    setup_rendezvous
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/netns-run.XXXXXX")
    trap cleanup EXIT
    trap 'on_signal INT 130' INT
    trap 'on_signal TERM 143' TERM
    for ((host = 0; host < N; host++)); do
        for ((k = 0; k < K; k++)); do
            r=$((host * K + k))
            start_rank "$r" "$host" "$k"
        done
    done
    if ! wait_ranks $((TIMEOUT * 1000)); then
        say "timeout after $TIMEOUT s; ranks still running: $(still_running)- killing them"
        stop_ranks
        cleanup
        exit 124
    fi
    cleanup
    exit "$FIRST_RC"
}

main "$@"
