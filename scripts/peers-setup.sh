#!/bin/bash
# peers-setup.sh - install (if missing) and build the baseline peer benchmarks
# from ../shared/peers (Open MPI mpi_coll, Gloo gloo_allreduce, membw) into
# .bench/peers-build. Idempotent and quiet when everything is already there.
#
# usage: scripts/peers-setup.sh [--peers DIR] [--build DIR] [--no-install] [-v]
#   --peers DIR   peers source dir (default: $FX_PEERS_DIR, ../shared/peers
#                 next to the repository, or /work/shared/peers)
#   --build DIR   build dir (default: <repo>/.bench/peers-build)
#   --no-install  do not apt-get missing packages; fail instead
#   -v            say what is present
# Exit status: 0 ready, 1 install or build failed, 2 usage / peers not found.
# The peers source dir is never written to (only BUILD is).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${FX_PEERS_DIR:-}
BUILD=$ROOT/.bench/peers-build
INSTALL=1
VERBOSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) PEERS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -v) VERBOSE=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "peers-setup: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PEERS" ]; then
  for d in "$ROOT/../shared/peers" /work/shared/peers; do
    [ -f "$d/Makefile" ] && { PEERS=$d; break; }
  done
fi
if [ -z "$PEERS" ] || [ ! -f "$PEERS/Makefile" ]; then
  echo "peers-setup: peers source dir not found (tried ${PEERS:-../shared/peers, /work/shared/peers});" \
    "set FX_PEERS_DIR or pass --peers DIR" >&2
  exit 2
fi
PEERS=$(cd "$PEERS" && pwd)
say() { [ "$VERBOSE" = 1 ] && echo "peers-setup: $*" >&2; return 0; }

# ---------------------------------------------------------------- packages
# same list as peers/install-deps.sh
PKGS=(build-essential openmpi-bin libopenmpi-dev libgloo-dev iperf3 hwloc iproute2 util-linux python3)
missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$INSTALL" = 0 ]; then
    echo "peers-setup: missing packages: ${missing[*]}; install with: $PEERS/install-deps.sh" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "peers-setup: missing packages (${missing[*]}) and not root; run as root: $PEERS/install-deps.sh" >&2
    exit 1
  fi
  mkdir -p "$ROOT/.bench"
  log=$ROOT/.bench/peers-install.log
  echo "peers-setup: installing ${missing[*]} (log: $log) ..." >&2
  {
    timeout 900 apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -q \
        -o DPkg::Lock::Timeout=300 "${PKGS[@]}"
  } >"$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "peers-setup: package install failed (rc=$rc); see $log" >&2
    tail -5 "$log" >&2
    exit 1
  fi
else
  say "packages present: ${PKGS[*]}"
fi

# ---------------------------------------------------------------- build
mkdir -p "$BUILD"
blog=$BUILD/build.log
if ! timeout 600 make -s --no-print-directory -C "$PEERS" BUILD="$BUILD" all >"$blog" 2>&1; then
  echo "peers-setup: build failed; see $blog; retry with:" >&2
  echo "  make -C $PEERS BUILD=$BUILD" >&2
  tail -20 "$blog" >&2
  exit 1
fi
for b in mpi_coll gloo_allreduce membw; do
  if [ ! -x "$BUILD/$b" ]; then
    echo "peers-setup: $BUILD/$b missing after build; build with: make -C $PEERS BUILD=$BUILD" >&2
    exit 1
  fi
done
say "built in $BUILD (from $PEERS)"
exit 0
