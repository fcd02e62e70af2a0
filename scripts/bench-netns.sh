#!/bin/bash
# bench-netns.sh - ring all-reduce busbw on 4 namespace hosts with every port tbf-shaped:
# libfabricx beside Open MPI and Gloo (../shared/peers), one run, for each link rate.
#
# usage: scripts/bench-netns.sh [options]          (root: namespaces and tc)
#   --rates "1gbit 2gbit"        port rates (tc rates with a unit), one cluster set-up each
#   --sizes "1M 16M 64M 256M"    all-reduce sizes in bytes (K/M/G suffixes, float32 sum)
#   --reps R                     repetitions (default 3); each runs every contender once per size,
#                                in the order fx-tcp, ompi-tcp, ompi-tcp-ring, gloo-ring_chunked,
#                                gloo-halving_doubling, so that noise hits all alike
#   --out DIR                    results (default .bench/netns-<date>)
#   --quick                      smoke test: sizes 1M 16M, 1 repetition, short timed work
#   --target-s S                 timed work per invocation in seconds (default 2; --quick 0.5):
#                                iterations = S / (time of one op at the link rate), 2 to 1000
#   --contenders "fx-tcp ..."    a subset of the five above
#   --fx-env "K=V ..."           extra environment for fx-bench (e.g. FX_NSOCKS=4)
#   --timeout S                  limit for one invocation (default: from the size and the rate)
#   --wait-idle S                before each cluster's turn wait (up to S s) until the CPUs are
#                                < 25% busy over 1 s (other jobs on a shared machine); the busy
#                                share found is recorded in phases.csv either way
#   --fx-bench PATH              default ./build/tools/fx-bench (fx-id is found beside it)
#   --no-setup                   do not run scripts/peers-setup.sh (builds the peers into
#                                .bench/peers-build with the kit's Makefile, apt if missing)
# Contenders, all on 4 hosts, one rank each, float32 sum:
#   fx-tcp          scripts/netns-run.sh 4 -- fx-bench allreduce -b S -e S (default settings,
#                   TCP between hosts; out-of-place figure; -c 1 checks an extra untimed run)
#   ompi-tcp        mpirun over the kit's cluster (--mca pml ob1 --mca btl self,tcp), mpi_coll
#   ompi-tcp-ring   same, coll_tuned forced to its ring all-reduce (algorithm 4)
#   gloo-ALGO       the kit's gloo-launch.sh --netns (AllreduceRingChunked, HalvingDoubling)
# libfabricx runs on scripts/netns-cluster.sh (hosts fxbench-h0..3), the peers on the kit's
# lib/netns-cluster.sh (lfx-h1..4, 10.77.0.1-4, which its ns-rsh.sh and gloo-launch.sh need);
# only one of them exists at a time. Both get the same tc settings: tbf rate R, the burst and
# latency netns-cluster.sh chooses, on every host's eth0 and on every switch port (the kit's
# TBF_BURST / TBF_LATENCY, shape and shape-in); the run fails unless `tc qdisc show` reads the
# same on both. A 4-flow iperf3 ring (host i to i+1, one TCP stream each) measures the TCP
# goodput the shaped links allow, in each cluster, every repetition.
# busbw = algbw * 2(N-1)/N (nccl-tests), GB/s = 1e9 B/s; link rate in GB/s = rate bits/s / 8e9.
# Output: DIR/netns.csv (one row per contender, rate, size, repetition), DIR/iperf.csv,
# DIR/phases.csv (CPU busy with other work before each cluster's turn),
# DIR/qdisc-*.txt, DIR/logs/, DIR/meta.txt, DIR/summary.md; the markdown summary goes to stdout,
# progress to stderr. Exit 0 when every invocation worked, 1 when some failed, 2 on setup errors.
# Every namespace made here is removed on exit, failure, Ctrl-C and SIGTERM.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PROG=bench-netns
NHOSTS=4
NAME=fxbench
ALL_CONTENDERS="fx-tcp ompi-tcp ompi-tcp-ring gloo-ring_chunked gloo-halving_doubling"

RATES="1gbit 2gbit"
SIZES="1M 16M 64M 256M"
SIZES_SET=0
REPS=3
REPS_SET=0
OUT=
QUICK=0
TARGET_S=2
TARGET_SET=0
CONTENDERS=$ALL_CONTENDERS
FXENV=
TMO=
FXBENCH=./build/tools/fx-bench
SETUP=1
PEERS=${FX_PEERS_DIR:-$ROOT/../shared/peers}
PEERS_BUILD=$ROOT/.bench/peers-build
IPERF_SECS=4
WAIT_IDLE=0

FX_UP=0    # our cluster exists
LFX_UP=0   # the kit's cluster exists
CUR=       # pid of the `timeout` being waited for
TMPD=
FAILS=0

say() {
    echo "[$(date +%H:%M:%S)] $*" | tee -a "${OUT:-/dev/null}/run.log" >&2
}

die() {
    echo "$PROG: $*" >&2
    exit 2
}

need_arg() {
    [ "$#" -ge 2 ] || die "option $1 needs a value"
}

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        --rates) need_arg "$@"; RATES=$2; shift 2 ;;
        --sizes) need_arg "$@"; SIZES=$2; SIZES_SET=1; shift 2 ;;
        --reps) need_arg "$@"; REPS=$2; REPS_SET=1; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --target-s) need_arg "$@"; TARGET_S=$2; TARGET_SET=1; shift 2 ;;
        --contenders) need_arg "$@"; CONTENDERS=$2; shift 2 ;;
        --fx-env) need_arg "$@"; FXENV=$2; shift 2 ;;
        --timeout) need_arg "$@"; TMO=$2; shift 2 ;;
        --wait-idle) need_arg "$@"; WAIT_IDLE=$2; shift 2 ;;
        --fx-bench) need_arg "$@"; FXBENCH=$2; shift 2 ;;
        --no-setup) SETUP=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
        esac
    done
    if [ "$QUICK" = 1 ]; then
        [ "$SIZES_SET" = 1 ] || SIZES="1M 16M"
        [ "$REPS_SET" = 1 ] || REPS=1
        [ "$TARGET_SET" = 1 ] || TARGET_S=0.5
    fi
    [[ $REPS =~ ^[1-9][0-9]?$ ]] || die "--reps must be 1 to 99"
    [[ $TARGET_S =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--target-s must be a number of seconds"
    [ -z "$TMO" ] || [[ $TMO =~ ^[1-9][0-9]{0,3}$ ]] || die "--timeout must be 1 to 9999 s"
    [[ $WAIT_IDLE =~ ^[0-9]{1,4}$ ]] || die "--wait-idle must be 0 to 9999 s"
    local c kv r
    for c in $CONTENDERS; do
        [[ " $ALL_CONTENDERS " == *" $c "* ]] || die "--contenders: unknown '$c'"
    done
    for kv in $FXENV; do
        [[ $kv =~ ^FX_[A-Z0-9_]+=.*$ ]] || die "--fx-env: '$kv' is not FX_NAME=VALUE"
    done
    for r in $RATES; do
        [[ ${r,,} =~ ^[0-9]+(\.[0-9]+)?[kmg]?bit$ ]] || die "--rates: '$r' is not a rate like 1gbit"
    done
}

# 1M -> 1048576; a size must be a positive multiple of 4 bytes (whole floats).
to_bytes() {
    local s=$1 n u
    n=${s%[KkMmGg]}
    u=${s#"$n"}
    [[ $n =~ ^[1-9][0-9]*$ ]] || return 1
    case $u in
    K | k) n=$((n << 10)) ;;
    M | m) n=$((n << 20)) ;;
    G | g) n=$((n << 30)) ;;
    esac
    [ $((n % 4)) = 0 ] || return 1
    echo "$n"
}

rate_bits() {
    local r=${1,,}
    local num=${r%%[a-z]*}

    awk -v n="$num" -v u="${r#"$num"}" 'BEGIN {
        m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; printf "%.0f\n", n * m[u] }'
}

# Iterations for timed work of TARGET_S at the link rate (one op moves 2(N-1)/N of the size
# through each port), 2 to 1000; and the seconds one op takes at that rate.
op_seconds() {
    awk -v b="$1" -v r="$2" -v n=$NHOSTS 'BEGIN { printf "%.6f\n", b * 2 * (n - 1) / n * 8 / r }'
}

iters_for() {
    awk -v t="$TARGET_S" -v op="$1" 'BEGIN {
        i = int(t / op + 0.999); if (i < 2) i = 2; if (i > 1000) i = 1000; print i }'
}

# Limit for one invocation: generous against the ops it runs (warm-up, timed, checks; fx-bench
# times out of place and in place) at a quarter of the link rate, plus start-up.
timeout_for() {
    [ -z "$TMO" ] || { echo "$TMO"; return; }
    awk -v op="$1" -v it="$2" 'BEGIN { printf "%d\n", 60 + 4 * op * (2 * it + 6) }'
}

# ------------------------------------------------------------------ processes and clean-up

# Runs a command under timeout(1) in the background and waits for it, so that a signal reaches
# the traps at once; the command's status is returned (124 on timeout).
run_bounded() {
    local secs=$1 rc
    shift

    timeout -k 10 "$secs" "$@" &
    CUR=$!
    wait "$CUR"
    rc=$?
    CUR=
    return "$rc"
}

# Processes left inside a cluster's namespaces (gloo-launch.sh starts its ranks under timeout(1)
# in process groups of their own, which outlive a killed launcher): TERM, then KILL, by pid.
kill_ns_pids() {
    local ns i pids=()

    for ((i = 0; i < 30; i++)); do
        pids=()
        for ns in "$@"; do
            mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
        done
        [ ${#pids[@]} -gt 0 ] || return 0
        # TERM first, KILL to what is left after 3 s.
        if [ "$i" = 0 ]; then
            kill -TERM "${pids[@]}" 2>/dev/null
        elif [ "$i" = 29 ]; then
            kill -KILL "${pids[@]}" 2>/dev/null
        fi
        sleep 0.1
    done
}

fx_nss() {
    local i

    echo "$NAME-sw"
    for ((i = 0; i < NHOSTS; i++)); do
        echo "$NAME-h$i"
    done
}

lfx_nss() {
    echo lfx-sw lfx-h1 lfx-h2 lfx-h3 lfx-h4
}

fx_down() {
    [ "$FX_UP" = 1 ] || return 0
    # shellcheck disable=SC2046 # one namespace per word
    kill_ns_pids $(fx_nss)
    timeout 60 scripts/netns-cluster.sh down --name "$NAME" >/dev/null ||
        echo "$PROG: warning: 'scripts/netns-cluster.sh down --name $NAME' failed" >&2
    FX_UP=0
}

lfx_down() {
    [ "$LFX_UP" = 1 ] || return 0
    # shellcheck disable=SC2046 # one namespace per word
    kill_ns_pids $(lfx_nss)
    timeout 60 "$PEERS/lib/netns-cluster.sh" down ||
        echo "$PROG: warning: '$PEERS/lib/netns-cluster.sh down' failed" >&2
    LFX_UP=0
}

cleanup() {
    local i

    trap '' INT TERM
    trap - EXIT
    if [ -n "$CUR" ]; then
        kill -TERM "$CUR" 2>/dev/null
        for ((i = 0; i < 100; i++)); do
            kill -0 "$CUR" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$CUR" 2>/dev/null
        wait "$CUR" 2>/dev/null
    fi
    fx_down
    lfx_down
    [ -z "$TMPD" ] || rm -rf "$TMPD"
}

on_signal() {
    echo "$PROG: got SIG$1; removing the namespaces" >&2
    exit "$2"
}

# ------------------------------------------------------------------ clusters

# The "rate burst latency" part of every tbf qdisc of a cluster's ports, one line per device,
# sorted; devices without tbf read "none". Both clusters must print the same.
tbf_settings() {
    local ns dev

    while read -r ns dev; do
        tc -n "$ns" qdisc show dev "$dev" root |
            awk '/^qdisc tbf/ { for (i = 1; i <= NF; i++) if ($i == "rate") {
                     print $(i+1), $(i+2), $(i+3), $(i+4), $(i+5), $(i+6); f = 1 } }
                 END { if (!f) print "none" }'
    done | sort | uniq -c
}

fx_ports() {
    local i

    for ((i = 0; i < NHOSTS; i++)); do
        echo "$NAME-h$i eth0"
        echo "$NAME-sw p$i"
    done
}

lfx_ports() {
    local i

    for ((i = 1; i <= NHOSTS; i++)); do
        echo "lfx-h$i eth0"
        echo "lfx-sw p$i"
    done
}

fx_up() {
    local rate=$1

    FX_UP=1
    run_bounded 120 scripts/netns-cluster.sh up "$NHOSTS" --rate "$rate" --name "$NAME" \
        >"$OUT/logs/fx-up-$rate.log" 2>&1 || return 1
    fx_ports | tbf_settings >"$TMPD/tbf-fx"
    cp "$TMPD/tbf-fx" "$OUT/qdisc-fx-$rate.txt"
}

# The kit's cluster with the same tbf as ours (the burst and latency are read from the settings
# ours had at this rate): the kit's shape puts tbf on each host's eth0 (burst TBF_BURST, latency
# TBF_LATENCY) and clears the switch ports; its shape-in shapes port pH too.
lfx_up() {
    local rate=$1 burst lat h f=$OUT/qdisc-fx-$1.txt

    burst=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "burst") print $(i+1) }' "$f" | head -1)
    lat=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "lat") print $(i+1) }' "$f" | head -1)
    if [ -z "$burst" ] || [ -z "$lat" ]; then
        say "no tbf settings in $f"
        return 1
    fi
    LFX_UP=1
    run_bounded 120 "$PEERS/lib/netns-cluster.sh" up >"$OUT/logs/lfx-up-$rate.log" 2>&1 ||
        return 1
    export TBF_BURST=$burst TBF_LATENCY=$lat
    run_bounded 60 "$PEERS/lib/netns-cluster.sh" shape "$rate" >>"$OUT/logs/lfx-up-$rate.log" 2>&1 ||
        return 1
    for ((h = 1; h <= NHOSTS; h++)); do
        run_bounded 60 "$PEERS/lib/netns-cluster.sh" shape-in "$h" "$rate" \
            >>"$OUT/logs/lfx-up-$rate.log" 2>&1 || return 1
    done
    unset TBF_BURST TBF_LATENCY
    lfx_ports | tbf_settings >"$OUT/qdisc-peers-$rate.txt"
    if ! cmp -s "$OUT/qdisc-peers-$rate.txt" "$f"; then
        say "tbf settings differ between the clusters at $rate:"
        diff "$f" "$OUT/qdisc-peers-$rate.txt" >&2
        return 1
    fi
}

# ------------------------------------------------------------------ measurements

load1() {
    cut -d' ' -f1 /proc/loadavg
}

# Percentage of CPU time not idle over one second, all CPUs.
cpu_busy() {
    local a b

    a=$(head -1 /proc/stat)
    sleep 1
    b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); t = 0
        for (i = 2; i <= 9 && i <= n; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f\n", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

# Called before a cluster's turn, with no cluster of ours up: waits up to WAIT_IDLE seconds (2 s
# steps, so at most WAIT_IDLE / 2 + 1 probes) for other work to quieten, and records what it found.
wait_idle() { # phase rate rep
    local busy t0=$SECONDS

    busy=$(cpu_busy)
    while [ "$busy" -ge 25 ] && [ $((SECONDS - t0)) -lt "$WAIT_IDLE" ]; do
        [ $((SECONDS - t0)) -gt 1 ] ||
            say "CPUs ${busy}% busy with other work; waiting up to $WAIT_IDLE s"
        sleep 1
        busy=$(cpu_busy)
    done
    echo "$1,$2,$3,$busy,$((SECONDS - t0)),$(load1)" >>"$OUT/phases.csv"
}

# iperf3 ring: host i sends one TCP stream to host i+1, all four at once, IPERF_SECS seconds (the
# first one omitted: slow start and the full token bucket). Prints the mean receive rate per
# flow in Gbit/s and the lowest, into iperf.csv.
iperf_ring() { # cluster rate rep namespace-prefix first-index addr...
    local cluster=$1 rate=$2 rep=$3 pfx=$4 first=$5
    shift 5
    local addrs=("$@") i j pids=() log=$TMPD/iperf

    rm -rf "$log"
    mkdir -p "$log"
    for ((i = 0; i < NHOSTS; i++)); do
        timeout $((IPERF_SECS + 20)) ip netns exec "$pfx$((i + first))" \
            iperf3 -s -1 -B "${addrs[i]}" -p 5201 >/dev/null 2>&1 &
        pids+=($!)
    done
    sleep 0.5
    for ((i = 0; i < NHOSTS; i++)); do
        j=$(((i + 1) % NHOSTS))
        timeout $((IPERF_SECS + 15)) ip netns exec "$pfx$((i + first))" \
            iperf3 -c "${addrs[j]}" -B "${addrs[i]}" -p 5201 -t "$IPERF_SECS" -O 1 -J \
            >"$log/$i.json" 2>/dev/null &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i"
    done
    python3 - "$log" "$NHOSTS" "$cluster" "$rate" "$rep" >>"$OUT/iperf.csv" <<'EOF'
import json, sys
d, n, cluster, rate, rep = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
v = []
for i in range(n):
    try:
        v.append(json.load(open(f"{d}/{i}.json"))["end"]["sum_received"]["bits_per_second"] / 1e9)
    except Exception:
        pass
if len(v) == n:
    print(f"{cluster},{rate},{rep},{n},{sum(v) / n:.4f},{min(v):.4f}")
else:
    print(f"{cluster},{rate},{rep},{n},NA,NA")
EOF
}

# One CSV row: contender rate rep bytes iters time_us busbw check status.
row() {
    local c=$1 rate=$2 rep=$3 bytes=$4 it=$5 us=$6 bw=$7 chk=$8 st=$9

    awk -v c="$c" -v rate="$rate" -v rb="$RATE_BITS" -v rep="$rep" -v b="$bytes" -v it="$it" \
        -v us="$us" -v bw="$bw" -v chk="$chk" -v st="$st" -v ld="$LOAD" 'BEGIN {
        link = rb / 8e9
        ratio = (bw == "NA") ? "NA" : sprintf("%.4f", bw / link)
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%.6f,%s,%s,%s,%s\n", c, rate, rb, rep, b, it, us, bw,
            link, ratio, chk, st, ld }' >>"$OUT/netns.csv"
}

run_fx() { # rate rep bytes
    local rate=$1 rep=$2 b=$3 op it log rc line
    op=$(op_seconds "$b" "$RATE_BITS")
    it=$(iters_for "$op")
    log=$OUT/logs/fx-tcp-$rate-$b-r$rep
    LOAD=$(load1)
    # shellcheck disable=SC2086 # FXENV is a list of NAME=VALUE words
    run_bounded "$(timeout_for "$op" "$it")" env $FXENV scripts/netns-run.sh "$NHOSTS" \
        --name "$NAME" --timeout "$(timeout_for "$op" "$it")" -- "$FXBENCH" allreduce -b "$b" \
        -e "$b" -n "$it" -w 1 -r 1 -d float -o sum -c 1 --json >"$log.out" 2>"$log.err"
    rc=$?
    line=$(python3 - "$log.out" <<'EOF'
import json, sys
for l in open(sys.argv[1]):
    if l.startswith("[0] {"):
        r = json.loads(l[4:])["results"][0]
        o = r["oop"]
        print(r["size"], "%.1f" % o["time_us"], "%.4f" % o["busbw"],
              "ok" if o["wrong"] == 0 and r["ip"]["wrong"] == 0 else "FAIL")
        break
EOF
    )
    if [ "$rc" = 0 ] && [ -n "$line" ]; then
        # shellcheck disable=SC2086 # size, time, busbw, check
        set -- $line
        row fx-tcp "$rate" "$rep" "$1" "$it" "$2" "$3" "$4" ok
        [ "$4" = ok ] || FAILS=$((FAILS + 1))
    else
        row fx-tcp "$rate" "$rep" "$b" "$it" NA NA NA "rc$rc"
        say "fx-tcp $rate $b B rep $rep failed (status $rc; $log.err)"
        FAILS=$((FAILS + 1))
    fi
}

# A peer's CSV line (peer,op,nranks,bytes,reps,iters,med_us,min_us,max_us,algbw,busbw,check).
peer_row() { # contender rate rep bytes rc out-file
    local c=$1 rate=$2 rep=$3 b=$4 rc=$5 f=$6 l

    l=$(grep -E '^[^,]+,allreduce,' "$f" | tail -1)
    if [ "$rc" = 0 ] && [ -n "$l" ]; then
        IFS=, read -r _ _ _ bb _ it us _ _ _ bw chk <<<"$l"
        row "$c" "$rate" "$rep" "$bb" "$it" "$us" "$bw" "$chk" ok
        [ "$chk" = ok ] || FAILS=$((FAILS + 1))
    else
        row "$c" "$rate" "$rep" "$b" NA NA NA NA "rc$rc"
        say "$c $rate $b B rep $rep failed (status $rc; ${f%.out}.err)"
        FAILS=$((FAILS + 1))
    fi
}

run_ompi() { # contender rate rep bytes
    local c=$1 rate=$2 rep=$3 b=$4 op it tmo ms log extra=
    op=$(op_seconds "$b" "$RATE_BITS")
    it=$(iters_for "$op")
    tmo=$(timeout_for "$op" "$it")
    ms=$(awk -v it="$it" -v op="$op" 'BEGIN { printf "%d\n", it * op * 1000 * 1.05 }')
    log=$OUT/logs/$c-$rate-$b-r$rep
    [ "$c" != ompi-tcp-ring ] ||
        extra="--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4"
    LOAD=$(load1)
    # As the kit's run-baselines.sh netns section: mpirun in lfx-h1, the other ranks started in
    # lfx-h2..4 through its ns-rsh.sh agent, one slot per host.
    run_bounded "$tmo" ip netns exec lfx-h1 unshare --uts sh -c "hostname lfx-h1 && exec mpirun \
        --host 10.77.0.1:1,10.77.0.2:1,10.77.0.3:1,10.77.0.4:1 \
        --mca plm_rsh_agent $PEERS/lib/ns-rsh.sh \
        --mca oob_tcp_if_include 10.77.0.0/24 --mca btl_tcp_if_include 10.77.0.0/24 \
        --mca pml ob1 --mca btl self,tcp --mca mpi_yield_when_idle 1 $extra \
        -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
        $PEERS_BUILD/mpi_coll -p $c -o allreduce -b $b -e $b -f 4 -r 1 -w 1 -t $ms -m 1000" \
        >"$log.out" 2>"$log.err"
    peer_row "$c" "$rate" "$rep" "$b" "$?" "$log.out"
}

run_gloo() { # contender rate rep bytes
    local c=$1 rate=$2 rep=$3 b=$4 op it tmo ms log
    op=$(op_seconds "$b" "$RATE_BITS")
    it=$(iters_for "$op")
    tmo=$(timeout_for "$op" "$it")
    ms=$(awk -v it="$it" -v op="$op" 'BEGIN { printf "%d\n", it * op * 1000 * 1.05 }')
    log=$OUT/logs/$c-$rate-$b-r$rep
    LOAD=$(load1)
    GLOO_BIN=$PEERS_BUILD/gloo_allreduce run_bounded "$tmo" "$PEERS/lib/gloo-launch.sh" --netns \
        --timeout "$((tmo - 5))" "$NHOSTS" -- --algo "${c#gloo-}" --peer gloo --min "$b" \
        --max "$b" --factor 4 --reps 1 --warmup 1 --target-ms "$ms" --max-iters 1000 \
        --timeout-s "$((tmo - 10))" >"$log.out" 2>"$log.err"
    peer_row "$c" "$rate" "$rep" "$b" "$?" "$log.out"
}

has() {
    [[ " $CONTENDERS " == *" $1 "* ]]
}

peers_wanted() {
    [[ " $CONTENDERS " == *" ompi-"* || " $CONTENDERS " == *" gloo-"* ]]
}

# One repetition at one rate: libfabricx on its cluster, then the peers on theirs.
one_rep() {
    local rate=$1 rep=$2 b c i addrs=()

    if has fx-tcp; then
        wait_idle fx "$rate" "$rep"
        say "rate $rate rep $rep: fx-tcp"
        fx_up "$rate" || { say "cluster $NAME failed to come up ($OUT/logs)"; return 1; }
        for ((i = 0; i < NHOSTS; i++)); do
            addrs+=("$(scripts/netns-cluster.sh addr "$i" --name "$NAME")")
        done
        iperf_ring fx "$rate" "$rep" "$NAME-h" 0 "${addrs[@]}"
        for b in "${SIZE_BYTES[@]}"; do
            run_fx "$rate" "$rep" "$b"
        done
        fx_down
    fi
    peers_wanted || return 0
    if [ ! -s "$OUT/qdisc-fx-$rate.txt" ]; then
        # Only peers asked for: build our cluster once to read the tbf settings to copy.
        fx_up "$rate" || return 1
        fx_down
    fi
    wait_idle peers "$rate" "$rep"
    say "rate $rate rep $rep: peers"
    lfx_up "$rate" || { say "the peers' cluster failed to come up or to match ours"; return 1; }
    iperf_ring peers "$rate" "$rep" lfx-h 1 10.77.0.1 10.77.0.2 10.77.0.3 10.77.0.4
    for c in $CONTENDERS; do
        for b in "${SIZE_BYTES[@]}"; do
            case $c in
            ompi-*) run_ompi "$c" "$rate" "$rep" "$b" ;;
            gloo-*) run_gloo "$c" "$rate" "$rep" "$b" ;;
            esac
        done
    done
    lfx_down
}

# ------------------------------------------------------------------ summary

summarize() {
    python3 - "$OUT" <<'EOF'
import csv, statistics, sys
from collections import defaultdict

out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/netns.csv")))
meta = dict(l.rstrip("\n").split("=", 1) for l in open(f"{out}/meta.txt") if "=" in l)
targets = {"1gbit": 0.97, "2gbit": 0.95}
order = meta["contenders"].split()
rates = meta["rates"].split()
sizes = [int(s) for s in meta["sizes"].split()]

def human(n):
    for sh, u in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << sh and n % (1 << sh) == 0:
            return f"{n >> sh} {u}"
    return f"{n} B"

v = defaultdict(list)
link = {}
for r in rows:
    link[r["rate"]] = float(r["link_GBps"])
    if r["busbw_GBps"] != "NA":
        v[(r["contender"], r["rate"], int(r["bytes"]))].append(float(r["busbw_GBps"]))
ip = defaultdict(list)
try:
    for r in csv.DictReader(open(f"{out}/iperf.csv")):
        if r["mean_Gbps"] != "NA":
            ip[(r["cluster"], r["rate"])].append(float(r["mean_Gbps"]))
except FileNotFoundError:
    pass

med = lambda k: statistics.median(v[k]) if v.get(k) else None
lines = []
p = lines.append
for rate in rates:
    if rate not in link:
        continue
    L = link[rate]
    p(f"### {rate} ports (link {L:.4f} GB/s), busbw GB/s, median (min-max) over repetitions\n")
    p("| contender | " + " | ".join(human(s) for s in sizes) + " |")
    p("|---|" + "---:|" * len(sizes))
    for c in order:
        cells = []
        for s in sizes:
            x = v.get((c, rate, s))
            cells.append(f"{med((c, rate, s)):.4f} ({min(x):.4f}-{max(x):.4f})" if x else "n/a")
        p(f"| {c} | " + " | ".join(cells) + " |")
    p("")
    p("busbw / link rate (medians):\n")
    p("| contender | " + " | ".join(human(s) for s in sizes) + " |")
    p("|---|" + "---:|" * len(sizes))
    for c in order:
        p(f"| {c} | " + " | ".join(f"{med((c, rate, s)) / L:.3f}" if med((c, rate, s)) else "n/a"
                                   for s in sizes) + " |")
    if "fx-tcp" in order and len(order) > 1:
        p("")
        p("fx-tcp / peer (ratio of medians; > 1: libfabricx faster):\n")
        p("| peer | " + " | ".join(human(s) for s in sizes) + " |")
        p("|---|" + "---:|" * len(sizes))
        for c in order:
            if c == "fx-tcp":
                continue
            cells = []
            for s in sizes:
                a, b = med(("fx-tcp", rate, s)), med((c, rate, s))
                cells.append(f"{a / b:.2f}" if a and b else "n/a")
            p(f"| {c} | " + " | ".join(cells) + " |")
    for cl in ("fx", "peers"):
        if ip.get((cl, rate)):
            g = ip[(cl, rate)]
            p("")
            p(f"iperf3 ring on the {cl} cluster (4 flows at once, mean per flow): "
              f"{statistics.median(g):.3f} Gbit/s median, {min(g):.3f}-{max(g):.3f}; "
              f"{statistics.median(g) / 8 / L:.3f} of the link rate")
    t = targets.get(rate)
    if t is not None and "fx-tcp" in order:
        p("")
        cells = []
        for s in sizes:
            a = med(("fx-tcp", rate, s))
            if a is None:
                cells.append(f"{human(s)} n/a")
                continue
            peers = [med((c, rate, s)) for c in order if c != "fx-tcp"]
            above = all(b is None or a > b for b in peers)
            ok = a / L >= t
            cells.append(f"{human(s)} {a / L:.3f} {'met' if ok else 'missed'}"
                         f"{', above every peer' if above else ', NOT above every peer'}")
        p(f"target {t} of the link rate, above both peers: " + "; ".join(cells))
    p("")
text = "\n".join(lines)
open(f"{out}/summary.md", "w").write(text + "\n")
print(text)
EOF
}

# ------------------------------------------------------------------ main

main() {
    local s b rate rep t0

    parse_args "$@"
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces and tc)"
    for t0 in ip tc iperf3 python3 timeout unshare; do
        command -v "$t0" >/dev/null || die "$t0 not found"
    done
    [ -x "$FXBENCH" ] || ! has fx-tcp ||
        die "$FXBENCH not built (meson setup build && ninja -C build)"
    [ -f "$PEERS/lib/netns-cluster.sh" ] || die "peers kit not found at $PEERS (FX_PEERS_DIR)"
    PEERS=$(cd "$PEERS" && pwd)
    SIZE_BYTES=()
    for s in $SIZES; do
        b=$(to_bytes "$s") || die "--sizes: '$s' is not a positive multiple of 4 bytes"
        SIZE_BYTES+=("$b")
    done
    # Refuse to touch clusters that are not ours: the kit's up would delete lfx-* first.
    if ip netns list | awk '{ print $1 }' | grep -Eq "^(lfx-(sw|h[1-4])|$NAME-(sw|h[0-9]+))$"; then
        die "namespaces lfx-* or $NAME-* exist already (another run?); remove them with" \
            "'$PEERS/lib/netns-cluster.sh down' and 'scripts/netns-cluster.sh down --name $NAME'"
    fi
    if [ "$SETUP" = 1 ] && peers_wanted; then
        scripts/peers-setup.sh --peers "$PEERS" --build "$PEERS_BUILD" ||
            die "peers not built (scripts/peers-setup.sh)"
    fi
    [ -z "$OUT" ] && OUT=$ROOT/.bench/netns-$(date +%Y%m%d-%H%M%S)
    if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/meta.txt" ]; then
        die "--out $OUT exists and is not a bench-netns results dir"
    fi
    mkdir -p "$OUT" || die "cannot create $OUT"
    OUT=$(cd "$OUT" && pwd)
    rm -rf "$OUT/logs" "$OUT"/*.csv "$OUT"/*.txt "$OUT"/*.md "$OUT/run.log"
    mkdir -p "$OUT/logs"
    TMPD=$(mktemp -d /tmp/bench-netns.XXXXXX) || die "mktemp failed"
    trap cleanup EXIT
    trap 'on_signal INT 130' INT
    trap 'on_signal TERM 143' TERM
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_btl_base_warn_component_unused=0
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null ||
            echo +dirty)"
        echo "rates=$RATES"
        echo "sizes=${SIZE_BYTES[*]}"
        echo "reps=$REPS"
        echo "contenders=$CONTENDERS"
        echo "target_s=$TARGET_S"
        echo "wait_idle=$WAIT_IDLE"
        echo "fx_env=$FXENV"
        echo "cpu=$(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')"
        echo "cores=$(nproc)"
        echo "kernel=$(uname -r)"
        echo "ompi=$(mpirun --version 2>/dev/null | head -1)"
        echo "gloo=$(dpkg-query -W -f='${Version}' libgloo-dev 2>/dev/null)"
    } >"$OUT/meta.txt"
    echo "contender,rate,rate_bits,rep,bytes,iters,time_us,busbw_GBps,link_GBps,busbw_over_link,check,status,load1" \
        >"$OUT/netns.csv"
    echo "cluster,rate,rep,flows,mean_Gbps,min_Gbps" >"$OUT/iperf.csv"
    echo "phase,rate,rep,other_busy_pct,waited_s,load1" >"$OUT/phases.csv"
    t0=$(date +%s)
    for rate in $RATES; do
        RATE_BITS=$(rate_bits "$rate")
        for ((rep = 1; rep <= REPS; rep++)); do
            one_rep "$rate" "$rep" || { FAILS=$((FAILS + 1)); fx_down; lfx_down; }
        done
    done
    say "done in $(($(date +%s) - t0)) s; $FAILS failed invocations; results in $OUT"
    echo "elapsed_s=$(($(date +%s) - t0))" >>"$OUT/meta.txt"
    summarize
    [ "$FAILS" = 0 ]
}

main "$@"
