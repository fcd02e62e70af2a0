#!/bin/sh
# All-reduce busbw, 8 B..128 MiB, on 2 and 4 local ranks, in one run: the UCX transport over
# UCX_TLS=tcp, UCX_TLS=shm,self (rendezvous off, the transport's choice there), UCX_TLS=shm,self
# with UCX_RNDV_THRESH=auto (cma single copy; not fault tolerant) and UCX's default transports,
# beside the TCP transport and the default choice (the shm transport).
# Usage: scripts/bench-ucx.sh [BUILD_DIR] > table.md   (prints a markdown table of busbw, GB/s)
set -eu
build=${1:-build}
bench="$build/tools/fx-bench"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
configs="ucx-tcp ucx-shm ucx-shm-cma ucx-all tcp shm"
for np in 2 4; do
    for cfg in $configs; do
        case $cfg in
        ucx-tcp) set -- env FX_TRANSPORT=ucx UCX_TLS=tcp UCX_NET_DEVICES=lo ;;
        ucx-shm) set -- env FX_TRANSPORT=ucx UCX_TLS=shm,self ;;
        ucx-shm-cma) set -- env FX_TRANSPORT=ucx UCX_TLS=shm,self UCX_RNDV_THRESH=auto ;;
        ucx-all) set -- env FX_TRANSPORT=ucx UCX_NET_DEVICES=lo ;;
        tcp) set -- env FX_TRANSPORT=tcp ;;
        shm) set -- env ;;
        esac
        "$@" "$bench" allreduce --np "$np" -b 8 -e 128M -f 8 -n 5 -w 2 -r 3 -c 0 --json \
            >"$out/$np-$cfg.json"
    done
done
# shellcheck disable=SC2086 # one argument per configuration
python3 - "$out" $configs <<'EOF'
import json, sys
out, configs = sys.argv[1], sys.argv[2:]
def human(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return "%d %s" % (n // div, unit)
    return "%d B" % n
for np in (2, 4):
    runs = {c: json.load(open("%s/%d-%s.json" % (out, np, c)))["results"] for c in configs}
    print("\n%d ranks, busbw GB/s (out of place, median of 3 blocks of 5)\n" % np)
    print("| size | " + " | ".join(configs) + " |")
    print("|---:|" + "---:|" * len(configs))
    for i, row in enumerate(runs[configs[0]]):
        cells = ["%.3f" % runs[c][i]["oop"]["busbw"] for c in configs]
        print("| %s | %s |" % (human(row["size"]), " | ".join(cells)))
EOF
