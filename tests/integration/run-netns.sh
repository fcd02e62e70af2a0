#!/bin/bash
# Runs an integration test binary with its ranks spread over two namespace hosts:
#   run-netns.sh SOURCE_ROOT TEST_BINARY [criterion args...]
# Makes a two-host cluster with scripts/netns-cluster.sh (a name of its own, so two runs never
# collide), points the harness at it (LIBFABRICX_TEST_NETNS) with FX_SOCKET_IFNAME=eth0, the
# hosts' veth link, and removes the cluster afterwards, on failure and on signals too.
# Exit 77 (skipped) where network namespaces cannot be made: not root, or no iproute2.
set -uo pipefail
src=$1
bin=$2
shift 2
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! ip netns list >/dev/null 2>&1; then
    echo "run-netns.sh: needs root and iproute2 network namespaces: skipped"
    exit 77
fi
# Root in a container may still lack the right to make namespaces: try one first.
if ! ip netns add "fxprobe$$" >/dev/null 2>&1; then
    echo "run-netns.sh: this environment cannot create network namespaces: skipped"
    exit 77
fi
ip netns del "fxprobe$$" >/dev/null 2>&1 || true
name="fxi$(( $$ % 100000 ))"
cluster="$src/scripts/netns-cluster.sh"
cleanup() { "$cluster" down --name "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
if ! "$cluster" up 2 --name "$name" --replace; then
    echo "run-netns.sh: could not make the namespace hosts"
    exit 1
fi
export LIBFABRICX_TEST_NETNS="$name-h0,$name-h1"
export FX_SOCKET_IFNAME=eth0
"$bin" "$@"
