#!/bin/bash
# bench-foundation.sh - libfabricx vs Open MPI vs Gloo, side by side, one run.
#
# All-reduce float32 sum (or, with --coll allgather, all-gather float32),
# N ranks (--np, default 2) on loopback: busbw at 1/16/64/128 MiB and the
# 8-byte latency, for
#   fx-tcp            fx-bench with FX_TRANSPORT=tcp, default settings
#   fx-tcp-nsocksK    same with FX_NSOCKS=K for each K of --nsocks
#   with --shm instead: fx-shm (FX_TRANSPORT=shm), fx-tcp, Open MPI over shared
#   memory (ompi-shm: --mca btl self,vader) and Gloo
#   ompi-tcp          Open MPI, --mca pml ob1 --mca btl self,tcp (over lo)
#   gloo-ring_chunked Gloo AllreduceRingChunked over its TCP transport
#                     (all-reduce only: the peers have no Gloo all-gather
#                     benchmark, so --coll allgather leaves Gloo out)
# plus machine limits: iperf3 --bidir over loopback (1 and 2 streams) and
# memcpy / fp32 a+=b bandwidth (membw, 1 thread, 16 MiB and 256 MiB).
# Each round runs every size once for every contender, back to back, in an
# order rotated per round (noise hits all contenders alike); limits are
# probed in every round too. Medians, min and max are over the rounds.
#
# Sizes follow nccl-tests (as fx-bench and the peers' mpi_coll do): for
# all-reduce, size = bytes of the float buffer, busbw = algbw * 2(N-1)/N; for
# all-gather, size = bytes of the gathered OUTPUT buffer (each rank sends
# size/N), busbw = algbw * (N-1)/N. fx-bench -b/-e and mpi_coll -b/-e both
# take that output size for all-gather, so both get the same number and a
# row compares the same total bytes. A size must be a whole number of floats
# per rank: sizes are rounded down to a multiple of 4 B (all-reduce) or 4*N B
# (all-gather), but never below one float per rank; the 8-byte latency row
# becomes 4*N B for an all-gather with N > 2 (one float per rank). Sizes
# <= 64 B are reported as time per op (us), larger ones as busbw (GB/s).
#
# usage: scripts/bench-foundation.sh [options]     (from anywhere; root for apt)
#   --reps R          rounds (default 5)
#   --out DIR         results dir (default .bench/foundation-<date>)
#   --quick           smoke test: 8 B, 1 and 16 MiB, 1 round, short probes
#   --fx-bench PATH   fx-bench binary (default ./build/tools/fx-bench)
#   --np N            ranks for every contender (default 2; N >= 2): fx-bench
#                     --np N, mpirun -np N --oversubscribe, N Gloo processes
#   --coll C          allreduce (default) or allgather (fx-bench allgather,
#                     mpi_coll -o allgather; no Gloo contender)
#   --nsocks "1 2 4"  FX_NSOCKS variants ("" for none)
#   --no-fx           peers and limits only
#   --shm             shared memory: fx-shm and ompi-shm (vader) beside fx-tcp (and Gloo)
#   --sizes "1M 16M 64M 128M"   sizes in bytes (K/M/G suffixes), small ones
#                     too: e.g. "8 1K 64K 1M 16M 64M 256M" covers 8 B-256 MiB
#                     (the 8 B latency row is always run; not run twice)
#   --fx-check C      fx-bench -c value (default 1: like the peers, fx-bench
#                     checks one extra untimed run per size)
#   --fx-mode oop|ip  which fx-bench figure the tables use (default oop)
#   --fx-env "K=V .." extra environment for every fx-bench run (e.g. FX_DEBUG=INFO)
#   --timeout S       limit for one benchmark invocation (default 300)
#   --target-ms T     timed work per invocation (default 500; --quick: 100).
#                     fx-bench does not auto-size: its iterations are
#                     estimated (100 us x (N-1) per op up to 64 B, else
#                     ~1 GB/s of busbw traffic per rank; both slowed by
#                     ceil(N / cores) when N > cores), at most 5000 (<= 64 B)
#                     or 1000, at least 2 timed + 2 warm-up; when that estimate
#                     gives < 2 iterations, the peers (which size from their
#                     warm-up) run 2 repetitions of T/2 each, so >= 2 timed ops
#   --wait-idle S     before each round wait (up to S s) until the CPUs are
#                     < 25% busy over 1 s (other jobs on a shared box)
#   --no-setup        do not run scripts/peers-setup.sh (just check builds)
#   --peers DIR / --peers-build DIR   peers sources / build dir
# Output: DIR/allreduce.csv (allgather.csv with --coll allgather; columns
# coll and nranks name the collective and N), iperf.csv, membw.csv, load.csv,
# meta.txt (coll=, np=), logs/, run.log, summary.md; the markdown summary goes
# to stdout, progress to stderr. Exit 0 when every invocation worked, 1 when
# some failed, 2 on setup errors.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPTS=$ROOT/scripts
cd "$ROOT" || exit 2

REPS=5
OUT=
QUICK=0
FXBENCH=./build/tools/fx-bench
NSOCKS="1 2 4"
NP=2            # ranks for every contender
COLL=allreduce  # or allgather
NOFX=0
SHM=0
SIZES="1M 16M 64M 128M"
SIZES_SET=0
LAT_BYTES=8
FXCHECK=1
FXMODE=oop
FXENV=
TMO=300
SETUP=1
TARGET_SET=0
WAIT_IDLE=0
PEERS_DIR=${FX_PEERS_DIR:-}
PEERS_BUILD=$ROOT/.bench/peers-build
IPERF_SECS=3
TARGET_MS=500   # timed work per invocation (peers auto-size iterations to it)
MAXIT=5000      # iteration cap per invocation (the 8-byte latency runs)

die() { echo "bench-foundation: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] || die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) need_arg "$@"; REPS=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --fx-bench) need_arg "$@"; FXBENCH=$2; shift 2 ;;
    --nsocks) need_arg "$@"; NSOCKS=$2; shift 2 ;;
    --np) need_arg "$@"; NP=$2; shift 2 ;;
    --coll) need_arg "$@"; COLL=$2; shift 2 ;;
    --no-fx) NOFX=1; shift ;;
    --shm) SHM=1; shift ;;
    --sizes) need_arg "$@"; SIZES=$2; SIZES_SET=1; shift 2 ;;
    --fx-check) need_arg "$@"; FXCHECK=$2; shift 2 ;;
    --fx-mode) need_arg "$@"; FXMODE=$2; shift 2 ;;
    --fx-env) need_arg "$@"; FXENV=$2; shift 2 ;;
    --timeout) need_arg "$@"; TMO=$2; shift 2 ;;
    --target-ms) need_arg "$@"; TARGET_MS=$2; TARGET_SET=1; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --wait-idle) need_arg "$@"; WAIT_IDLE=$2; shift 2 ;;
    --peers) need_arg "$@"; PEERS_DIR=$2; shift 2 ;;
    --peers-build) need_arg "$@"; PEERS_BUILD=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  REPS=1; IPERF_SECS=1
  [ "$TARGET_SET" = 1 ] || TARGET_MS=100
  [ "$SIZES_SET" = 1 ] || SIZES="1M 16M"
fi
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
[[ "$TMO" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
[[ "$TARGET_MS" =~ ^[1-9][0-9]*$ ]] || die "--target-ms must be a positive integer"
[[ "$WAIT_IDLE" =~ ^[0-9]+$ ]] || die "--wait-idle must be a number of seconds"
[[ "$NP" =~ ^[1-9][0-9]*$ ]] && [ "$NP" -ge 2 ] || die "--np must be an integer >= 2"
case $COLL in allreduce|allgather) ;; *) die "--coll must be allreduce or allgather" ;; esac
case $FXMODE in oop|ip) ;; *) die "--fx-mode must be oop or ip" ;; esac
for k in $NSOCKS; do [[ "$k" =~ ^[1-9][0-9]*$ ]] || die "--nsocks: bad value '$k'"; done
for kv in $FXENV; do [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--fx-env: '$kv' is not NAME=VALUE"; done

to_bytes() { # 1M -> 1048576
  local s=$1 n u
  n=${s%[KkMmGg]}; u=${s#"$n"}
  [[ "$n" =~ ^[0-9]+$ ]] || return 1
  case $u in
    K|k) echo $((n << 10)) ;; M|m) echo $((n << 20)) ;; G|g) echo $((n << 30)) ;; "") echo "$n" ;;
  esac
}
# sizes are whole floats per rank (fx-bench and mpi_coll would round the same
# way, and skip a size with no float per rank): round down to a multiple of
# UNIT, never below one UNIT
if [ "$COLL" = allgather ]; then UNIT=$((4 * NP)); else UNIT=4; fi
norm_bytes() { local b=$1; b=$(((b / UNIT) * UNIT)); [ "$b" -lt "$UNIT" ] && b=$UNIT; echo "$b"; }
hsize() { # 1048576 -> 1 MiB (as bench_summary.py's human())
  local n=$1
  if [ "$n" -ge $((1 << 30)) ] && [ $((n % (1 << 30))) = 0 ]; then echo "$((n >> 30)) GiB"
  elif [ "$n" -ge $((1 << 20)) ] && [ $((n % (1 << 20))) = 0 ]; then echo "$((n >> 20)) MiB"
  elif [ "$n" -ge 1024 ] && [ $((n % 1024)) = 0 ]; then echo "$((n >> 10)) KiB"
  else echo "$n B"; fi
}
LAT_BYTES=$(norm_bytes "$LAT_BYTES")
SIZE_BYTES=()
SIZE_NOTES=
for s in $SIZES; do
  b=$(to_bytes "$s") || die "--sizes: bad size '$s'"
  [ "$b" -ge 1 ] || die "--sizes: '$s' is too small"
  nb=$(norm_bytes "$b")
  [ "$nb" = "$b" ] || SIZE_NOTES+=" $s->$nb"
  [ "$nb" = "$LAT_BYTES" ] && continue            # the latency row runs it
  case " ${SIZE_BYTES[*]} " in *" $nb "*) continue ;; esac
  SIZE_BYTES+=("$nb")
done

T_START=$(date +%s)
[ -n "$OUT" ] || OUT=$ROOT/.bench/foundation-$(date +%Y%m%d-%H%M%S)
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ] && [ ! -f "$OUT/meta.txt" ]; then
  die "--out $OUT exists and is not a bench-foundation results dir; pick another"
fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/logs"
rm -f "$OUT"/*.csv "$OUT"/summary.md "$OUT"/run.log "$OUT"/meta.txt
mkdir -p "$OUT/logs" || die "cannot create $OUT/logs"
TMPD=$(mktemp -d /tmp/fx-bench-foundation.XXXXXX) || die "mktemp failed"

# ---------------------------------------------------------------- cleanup
BGPIDS=()   # background `timeout` processes of this script (iperf3 server, gloo ranks)
CUR=        # pid of the foreground `timeout` being waited for
cleanup() {
  local p
  trap - EXIT INT TERM HUP
  local pids=("${BGPIDS[@]}") i alive
  [ -n "$CUR" ] && pids+=("$CUR")
  # `timeout` passes the TERM on to its command's process group and exits
  # when the command has; give them 5 s, then KILL what is left
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$TMPD"
}
trap cleanup EXIT
trap 'echo "bench-foundation: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM HUP

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

# run_tmo SECS CMD... : CMD under timeout, waited for in the background so a
# signal to this script reaches the trap at once (timeout runs in its own
# process group, so ^C would not reach it). Returns CMD's status.
run_tmo() {
  local secs=$1; shift
  timeout -k 10 "$secs" "$@" </dev/null &
  CUR=$!
  wait "$CUR"
  local rc=$?
  CUR=
  return $rc
}

# ---------------------------------------------------------------- peers
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_base_warn_component_unused=0
setup_args=(--build "$PEERS_BUILD")
[ -n "$PEERS_DIR" ] && setup_args+=(--peers "$PEERS_DIR")
if [ "$SETUP" = 1 ]; then
  "$SCRIPTS/peers-setup.sh" "${setup_args[@]}" ||
    { echo "bench-foundation: peer setup failed; fix it, then: $SCRIPTS/peers-setup.sh ${setup_args[*]}" >&2; exit 2; }
fi
for b in mpi_coll gloo_allreduce membw; do
  if [ ! -x "$PEERS_BUILD/$b" ]; then
    pd=${PEERS_DIR:-$ROOT/../shared/peers}
    echo "bench-foundation: peer binary $PEERS_BUILD/$b is not built. Build the peers with:" >&2
    echo "  $SCRIPTS/peers-setup.sh --build $PEERS_BUILD" >&2
    echo "  (or: make -C $pd BUILD=$PEERS_BUILD)" >&2
    exit 2
  fi
done
for t in mpirun iperf3 python3 timeout; do
  command -v "$t" >/dev/null || die "$t not found; run $SCRIPTS/peers-setup.sh"
done
B=$PEERS_BUILD

# ---------------------------------------------------------------- fx-bench
if [ "$NOFX" = 0 ]; then
  if [ ! -x "$FXBENCH" ]; then
    cands=$(ls -1 "$ROOT"/build*/tools/fx-bench 2>/dev/null | tr '\n' ' ')
    echo "bench-foundation: fx-bench not found at '$FXBENCH'." >&2
    echo "  build it (meson setup build && ninja -C build), or pass --fx-bench PATH${cands:+ (found: $cands)}," >&2
    echo "  or pass --no-fx to measure only the peers and the machine limits." >&2
    exit 2
  fi
  case $FXBENCH in /*) ;; *) FXBENCH=$ROOT/$FXBENCH ;; esac
fi

FX_CONT=()
if [ "$NOFX" = 0 ] && [ "$SHM" = 1 ]; then
  FX_CONT+=(fx-shm fx-tcp)
elif [ "$NOFX" = 0 ]; then
  FX_CONT+=(fx-tcp)
  for k in $NSOCKS; do FX_CONT+=("fx-tcp-nsocks$k"); done
fi
if [ "$SHM" = 1 ]; then
  CONTENDERS=("${FX_CONT[@]}" ompi-shm)
else
  CONTENDERS=("${FX_CONT[@]}" ompi-tcp)
fi
LEFT_OUT=
if [ "$COLL" = allreduce ]; then
  CONTENDERS+=(gloo-ring_chunked)
else
  LEFT_OUT="gloo-ring_chunked (the peers have no Gloo all-gather benchmark)"
fi

# ---------------------------------------------------------------- metadata
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host=$(hostname)"
  echo "cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "reps=$REPS"
  echo "quick=$QUICK"
  echo "coll=$COLL"
  echo "np=$NP"
  echo "sizes=${SIZE_BYTES[*]}"
  echo "lat_bytes=$LAT_BYTES"
  echo "contenders=${CONTENDERS[*]}"
  echo "left_out=$LEFT_OUT"
  echo "fx_bench=$([ "$NOFX" = 0 ] && echo "$FXBENCH" || echo none)"
  echo "fx_check=$FXCHECK"
  echo "fx_mode=$FXMODE"
  echo "fx_env=$FXENV"
  echo "git=$(timeout 10 git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(timeout 10 git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo +dirty)"
  echo "openmpi=$(timeout 10 mpirun --version 2>/dev/null | head -1)"
  echo "gloo=$(dpkg-query -W -f='${Version}' libgloo0 2>/dev/null)"
  echo "iperf3=$(dpkg-query -W -f='${Version}' iperf3 2>/dev/null)"
  echo "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
  echo "peers_build=$B"
  echo "target_ms=$TARGET_MS"
} >"$OUT/meta.txt"

# one CSV per collective (allreduce.csv, allgather.csv); the trailing coll and
# nranks columns repeat --coll and --np on every row
AR_CSV=$OUT/$COLL.csv
echo "round,slot,contender,mode,bytes,iters,time_us,algbw_GBps,busbw_GBps,check,rc,wall_s,load1,coll,nranks" >"$AR_CSV"
echo "round,streams,secs,fwd_Gbps,rev_Gbps,sum_Gbps,rc" >"$OUT/iperf.csv"
echo "round,kernel,threads,bytes,GBps,min_GBps,max_GBps,check,rc" >"$OUT/membw.csv"
echo "time,round,what,load1,load5,load15,cpu_busy_pct" >"$OUT/load.csv"
loadmark() { echo "$(date +%H:%M:%S),$1,$2,$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ','),${3:-}" >>"$OUT/load.csv"; }
# percentage of all CPUs busy over the next second (from /proc/stat)
cpu_busy() {
  local a b
  a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); t = 0
    for (i = 2; i <= 9 && i <= n; i++) t += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}
wait_idle() { # round
  local busy t0=$SECONDS
  busy=$(cpu_busy)
  while [ "$WAIT_IDLE" -gt 0 ] && [ "$busy" -ge 25 ] && [ $((SECONDS - t0)) -lt "$WAIT_IDLE" ]; do
    [ $((SECONDS - t0)) -le 1 ] && log " CPUs ${busy}% busy with other work; waiting up to ${WAIT_IDLE} s"
    sleep 2; busy=$(cpu_busy)
  done
  [ "$busy" -ge 25 ] && log " note: CPUs ${busy}% busy with other work before round $1"
  loadmark "$1" round-start "$busy"
}
load1() { cut -d' ' -f1 /proc/loadavg; }

NFAIL=0
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
py() { timeout 60 python3 "$SCRIPTS/bench_summary.py" "$@"; }

# ---------------------------------------------------------------- contenders
# Each run_* prints progress, appends CSV rows, and returns 0 on success.
# Timed work is about TARGET_MS per invocation; one timed repetition each
# (the rounds are the repetitions; peer_reps gives the peers 2 at big sizes).

# ranks per core beyond the first 2 (1 unless N > max(nproc, 2)): N ranks
# oversubscribing the CPUs run about that much slower
NCPU=$(nproc 2>/dev/null || echo 2); [ "$NCPU" -lt 2 ] && NCPU=2
OVERSUB=$(((NP + NCPU - 1) / NCPU))

# ops that fit in TARGET_MS when each rank moves busbw-bytes (bytes * 2(N-1)/N
# for all-reduce, bytes * (N-1)/N for all-gather) at ~1 GB/s / OVERSUB; for a
# 2-rank all-reduce that is TARGET_MS ms / (bytes / 1 GB/s). Not clamped.
model_iters() { # bytes
  local num=$((TARGET_MS * 1000000 * NP)) den=$(($1 * (NP - 1) * OVERSUB))
  [ "$COLL" = allreduce ] && den=$((den * 2))
  echo $((num / den))
}

# iterations for fx-bench (which does not auto-size): ~TARGET_MS at ~1 GB/s
# (model_iters), or at 100 us x (N-1) x OVERSUB per op for sizes <= 64 B
fx_iters() {
  local bytes=$1 n
  if [ "$bytes" -le 64 ]; then
    n=$((TARGET_MS * 10 / ((NP - 1) * OVERSUB))); [ "$n" -lt 100 ] && n=100; [ "$n" -gt "$MAXIT" ] && n=$MAXIT
    echo "$n $((n / 10))"; return
  fi
  n=$(model_iters "$bytes")
  [ "$n" -lt 2 ] && n=2
  [ "$n" -gt 1000 ] && n=1000
  local w=$((n / 10)); [ "$w" -lt 2 ] && w=2; [ "$w" -gt 20 ] && w=20
  echo "$n $w"
}

# the peers size their iterations from their warm-up (>= 1 per repetition);
# where the model gives < 2 ops (the big sizes) they run 2 repetitions of
# TARGET_MS/2 each instead of 1 of TARGET_MS: >= 2 timed ops, same time
peer_reps() { # bytes -> "REPS TARGET_MS"
  if [ "$1" -gt 64 ] && [ "$(model_iters "$1")" -lt 2 ]; then
    local t=$((TARGET_MS / 2)); [ "$t" -lt 1 ] && t=1
    echo "2 $t"
  else
    echo "1 $TARGET_MS"
  fi
}

record_err() { # round slot contender mode bytes why rc wall
  echo "$1,$2,$3,$4,$5,,,,,$6,$7,$8,$(load1),$COLL,$NP" >>"$AR_CSV"
  NFAIL=$((NFAIL + 1))
}

run_fx() { # round slot contender bytes
  local r=$1 slot=$2 c=$3 bytes=$4 nsocks='' rc t0 lf
  [[ "$c" == fx-tcp-nsocks* ]] && nsocks=${c#fx-tcp-nsocks}
  read -r n w < <(fx_iters "$bytes")
  lf=$OUT/logs/r$r-$c-$bytes
  local fxtmo=$(((TMO > 10 ? TMO - 5 : TMO) * 1000))   # fx-bench kills its ranks first
  local tp=tcp
  [ "$c" = fx-shm ] && tp=shm
  local envs=(env -u FX_NSOCKS FX_TRANSPORT=$tp)
  for kv in $FXENV; do envs+=("$kv"); done
  [ -n "$nsocks" ] && envs+=(FX_NSOCKS="$nsocks")
  local fxargs=("$COLL" --np "$NP" -b "$bytes" -e "$bytes" -f 2 -n "$n" -w "$w" -r 1 -d float)
  [ "$COLL" = allreduce ] && fxargs+=(-o sum)
  fxargs+=(-c "$FXCHECK" --timeout-ms "$fxtmo" --json)
  echo "${envs[*]} $FXBENCH ${fxargs[*]}" >"$lf.cmd"
  t0=$(now)
  run_tmo "$TMO" "${envs[@]}" "$FXBENCH" "${fxargs[@]}" >"$lf.out" 2>"$lf.err"
  rc=$?
  local wall; wall=$(elapsed "$t0")
  local rows
  if [ $rc -ne 0 ]; then
    record_err "$r" "$slot" "$c" "$FXMODE" "$bytes" "$([ $rc -ge 124 ] && echo TIMEOUT || echo ERR)" "$rc" "$wall"
    log "  $c: FAILED rc=$rc (see $lf.err)"
    return 1
  fi
  if ! rows=$(py parse-fx "$lf.out" "$c" "$FXCHECK" "$COLL" "$NP" 2>>"$lf.err"); then
    record_err "$r" "$slot" "$c" "$FXMODE" "$bytes" ERR "$rc" "$wall"
    log "  $c: no usable JSON in output (see $lf.out, $lf.err)"
    return 1
  fi
  local l1; l1=$(load1)
  local line
  while IFS= read -r line; do
    IFS=, read -r cc mode sz it tus alg bus ok <<<"$line"
    echo "$r,$slot,$cc,$mode,$sz,$it,$tus,$alg,$bus,$ok,$rc,$wall,$l1,$COLL,$NP" >>"$AR_CSV"
    [ "$ok" = FAIL ] && NFAIL=$((NFAIL + 1))
    [ "$mode" = "$FXMODE" ] && show "$c" "$bytes" "$tus" "$bus" "$ok"
  done <<<"$rows"
  return 0
}

show() { # contender bytes time_us busbw check
  if [ "$2" -le 64 ]; then
    log "  $(printf '%-20s' "$1") $3 us ${5:+[$5]}"
  else
    log "  $(printf '%-20s' "$1") $4 GB/s ${5:+[$5]}"
  fi
}

# peers print: peer,op,nranks,bytes,reps,iters,med_us,min_us,max_us,algbw_GBps,busbw_GBps,check
peer_row() { # round slot contender mode file rc wall
  local r=$1 slot=$2 c=$3 mode=$4 f=$5 rc=$6 wall=$7 line
  line=$(grep -E "^[^,]+,$COLL,$NP," "$f" | tail -1)
  if [ -z "$line" ]; then return 1; fi
  IFS=, read -r _p _op _n bytes _reps iters med _mn _mx alg bus ok <<<"$line"
  # iters = timed ops in all (repetitions x iterations; peer_reps may ask for 2)
  [[ "$_reps" =~ ^[0-9]+$ && "$iters" =~ ^[0-9]+$ ]] && iters=$((_reps * iters))
  echo "$r,$slot,$c,$mode,$bytes,$iters,$med,$alg,$bus,$ok,$rc,$wall,$(load1),$COLL,$NP" >>"$AR_CSV"
  [ "$ok" = ok ] || NFAIL=$((NFAIL + 1))
  show "$c" "$bytes" "$med" "$bus" "$ok"
}

run_ompi() { # round slot bytes [contender: ompi-tcp or ompi-shm]
  local r=$1 slot=$2 bytes=$3 c=${4:-ompi-tcp} rc t0 wall lf btl=self,tcp
  [ "$c" = ompi-shm ] && btl=self,vader
  lf=$OUT/logs/r$r-$c-$bytes
  local preps ptms
  read -r preps ptms < <(peer_reps "$bytes")
  # mpi_coll -b/-e: buffer bytes (all-reduce) / gathered output bytes (all-gather)
  local cmd=(mpirun --oversubscribe -np "$NP" --mca pml ob1 --mca btl "$btl"
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
    "$B/mpi_coll" -p "$c" -o "$COLL" -b "$bytes" -e "$bytes" -r "$preps" -t "$ptms" -m "$MAXIT")
  echo "${cmd[*]}" >"$lf.cmd"
  t0=$(now)
  run_tmo "$TMO" "${cmd[@]}" >"$lf.out" 2>"$lf.err"
  rc=$?
  wall=$(elapsed "$t0")
  if [ $rc -ne 0 ] || ! peer_row "$r" "$slot" "$c" oop "$lf.out" "$rc" "$wall"; then
    record_err "$r" "$slot" "$c" oop "$bytes" "$([ $rc -ge 124 ] && echo TIMEOUT || echo ERR)" "$rc" "$wall"
    log "  $c: FAILED rc=$rc (see $lf.err)"
    return 1
  fi
}

run_gloo() { # round slot bytes ; NP ranks meeting in a private FileStore dir (all-reduce only)
  local r=$1 slot=$2 bytes=$3 c=gloo-ring_chunked rc=0 t0 wall lf store p rank
  lf=$OUT/logs/r$r-$c-$bytes
  store=$TMPD/gloo-store-$r-$bytes
  rm -rf "$store"; mkdir -p "$store"
  local preps ptms
  read -r preps ptms < <(peer_reps "$bytes")
  echo "$B/gloo_allreduce --rank 0..$((NP - 1)) --size $NP --store $store --host 127.0.0.1" \
    "--algo ring_chunked --min $bytes --max $bytes --reps $preps --target-ms $ptms" \
    "--max-iters $MAXIT --timeout-s $TMO" >"$lf.cmd"
  t0=$(now)
  local pids=() nbg=${#BGPIDS[@]}
  for ((rank = 0; rank < NP; rank++)); do
    timeout -k 10 "$TMO" "$B/gloo_allreduce" --rank $rank --size "$NP" --store "$store" \
      --host 127.0.0.1 --algo ring_chunked --min "$bytes" --max "$bytes" --reps "$preps" \
      --target-ms "$ptms" --max-iters "$MAXIT" --timeout-s "$TMO" </dev/null >"$lf.out.$rank" 2>"$lf.err.$rank" &
    pids+=($!); BGPIDS+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  BGPIDS=("${BGPIDS[@]:0:nbg}")
  wall=$(elapsed "$t0")
  rm -rf "$store"
  if [ $rc -ne 0 ] || ! peer_row "$r" "$slot" "$c" ip "$lf.out.0" "$rc" "$wall"; then
    record_err "$r" "$slot" "$c" ip "$bytes" "$([ $rc -ge 124 ] && echo TIMEOUT || echo ERR)" "$rc" "$wall"
    log "  $c: FAILED rc=$rc (see $lf.err.0 .. .$((NP - 1)))"
    return 1
  fi
}

run_contender() { # round slot contender bytes
  case $3 in
    fx-*) run_fx "$1" "$2" "$3" "$4" ;;
    ompi-tcp|ompi-shm) run_ompi "$1" "$2" "$4" "$3" ;;
    gloo-ring_chunked) run_gloo "$1" "$2" "$4" ;;
    *) log "  $3: unknown contender"; return 1 ;;
  esac
}

# ---------------------------------------------------------------- limits
run_iperf() { # round streams
  local r=$1 P=$2 port spid rc res lf
  lf=$OUT/logs/r$r-iperf-P$P
  port=$(py free-port)
  timeout -k 5 $((IPERF_SECS + 20)) iperf3 -s -1 -B 127.0.0.1 -p "$port" </dev/null >"$lf.srv" 2>&1 &
  spid=$!; BGPIDS+=("$spid")
  local i
  for ((i = 0; i < 50; i++)); do   # wait until the server listens (max 5 s)
    ss -ltn "sport = :$port" 2>/dev/null | grep -q LISTEN && break
    sleep 0.1
  done
  run_tmo $((IPERF_SECS + 15)) iperf3 -c 127.0.0.1 -B 127.0.0.1 -p "$port" -P "$P" \
    -t "$IPERF_SECS" --bidir -J >"$lf.json" 2>"$lf.err"
  rc=$?
  wait "$spid" 2>/dev/null
  BGPIDS=("${BGPIDS[@]:0:${#BGPIDS[@]}-1}")
  res=$(py parse-iperf "$lf.json")
  echo "$r,$P,$IPERF_SECS,$res,$rc" >>"$OUT/iperf.csv"
  [[ $rc -ne 0 || "$res" == NA* ]] && NFAIL=$((NFAIL + 1))
  log "  iperf3 --bidir P=$P: fwd,rev,sum Gbit/s = $res"
}

MEMBW_KERNELS="memcpy reduce"
grep -qw avx2 /proc/cpuinfo && MEMBW_KERNELS="$MEMBW_KERNELS reduce_avx2"
MEMBW_SIZES="16M 256M"
run_membw() { # round
  local r=$1 k s line rc
  for k in $MEMBW_KERNELS; do
    for s in $MEMBW_SIZES; do
      run_tmo 120 "$B/membw" -k "$k" -s "$s" -t 1 -r 3 -T 0.1 >"$TMPD/membw.out" 2>>"$OUT/logs/membw.err"
      rc=$?
      line=$(tail -1 "$TMPD/membw.out")
      if [ $rc -ne 0 ] || [ -z "$line" ]; then
        echo "$r,$k,1,$(to_bytes "$s"),,,,ERR,$rc" >>"$OUT/membw.csv"; NFAIL=$((NFAIL + 1))
        log "  membw $k $s: FAILED rc=$rc"
        continue
      fi
      # kernel,threads,bytes,reps,med_GBps,min_GBps,max_GBps,check
      IFS=, read -r kk th by _reps med mn mx ok <<<"$line"
      echo "$r,$kk,$th,$by,$med,$mn,$mx,$ok,$rc" >>"$OUT/membw.csv"
      log "  membw $(printf '%-12s' "$k") $s: $med GB/s"
    done
  done
}

# ---------------------------------------------------------------- pre-flight
# one small invocation of every contender so a broken one fails here, clearly
log "output: $OUT"
hs=; for b in "${SIZE_BYTES[@]}"; do hs+="${hs:+, }$(hsize "$b")"; done
log "$COLL, $NP ranks; contenders: ${CONTENDERS[*]}; sizes: ${hs:-none} + ${LAT_BYTES} B latency; rounds: $REPS"
[ -n "$SIZE_NOTES" ] && log "sizes rounded to whole floats per rank:$SIZE_NOTES"
[ -n "$LEFT_OUT" ] && log "left out: $LEFT_OUT"
[ "$NP" -gt "$(nproc)" ] && log "note: $NP ranks on $(nproc) CPUs (oversubscribed)"
PRE_BYTES=$(norm_bytes 65536)
log "pre-flight ($(hsize "$PRE_BYTES"), not recorded)"
pre_ok=1
AR_CSV_SAVE=$AR_CSV
AR_CSV=$TMPD/preflight.csv
for c in "${CONTENDERS[@]}"; do
  if ! run_contender 0 0 "$c" "$PRE_BYTES"; then
    pre_ok=0
    echo "bench-foundation: pre-flight of $c failed; logs: $OUT/logs/r0-$c-$PRE_BYTES.*" >&2
    case $c in
      fx-*) for f in "$OUT/logs/r0-$c-$PRE_BYTES".{err,out}; do [ -s "$f" ] && tail -5 "$f" >&2; done
            echo "  (pass --no-fx to skip libfabricx, or --fx-bench PATH for another build)" >&2 ;;
      *) for f in "$OUT/logs/r0-$c-$PRE_BYTES".err*; do [ -s "$f" ] && tail -5 "$f" >&2; done
         echo "  (rebuild the peers: $SCRIPTS/peers-setup.sh --build $PEERS_BUILD)" >&2 ;;
    esac
  fi
done
AR_CSV=$AR_CSV_SAVE
NFAIL=0
[ "$pre_ok" = 1 ] || exit 2

# ---------------------------------------------------------------- rounds
NC=${#CONTENDERS[@]}
for ((r = 1; r <= REPS; r++)); do
  log "round $r/$REPS"
  wait_idle "$r"
  slot=0
  for bytes in "$LAT_BYTES" "${SIZE_BYTES[@]}"; do
    if [ "$bytes" = "$LAT_BYTES" ]; then log " ${bytes} B latency"
    elif [ "$bytes" -le 64 ]; then log " ${bytes} B time"
    else log " $(hsize "$bytes") busbw"; fi
    for ((i = 0; i < NC; i++)); do
      c=${CONTENDERS[$(((i + r - 1 + slot) % NC))]}
      run_contender "$r" "$i" "$c" "$bytes"
    done
    slot=$((slot + 1))
  done
  loadmark "$r" limits
  log " limits"
  for P in 1 2; do run_iperf "$r" "$P"; done
  run_membw "$r"
  loadmark "$r" round-end
done

WALL=$(($(date +%s) - T_START))
echo "wall_s=$WALL" >>"$OUT/meta.txt"
log "done in ${WALL} s; $NFAIL failed invocation(s)"
py summarize "$OUT" --fx-mode "$FXMODE" || exit 2
[ "$NFAIL" = 0 ] || exit 1
exit 0
