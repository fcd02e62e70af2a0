#!/bin/sh
# Runs a program on the fake libibverbs/librdmacm (docs/verbs.md, "The fake provider"):
#   tests/fakeverbs/run-on-fake.sh PROG ARGS...
# FAKEVERBS_LIBDIR names the folder holding the fake libibverbs.so.1 and librdmacm.so.1 (default:
# build/tests/fakeverbs of this checkout). FAKEVERBS_DEVICES, FAKEVERBS_FAULT and FAKEVERBS_DEBUG
# pass through to the program.
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 PROG [ARGS...]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
libdir=${FAKEVERBS_LIBDIR:-$here/../../build/tests/fakeverbs}
for lib in libibverbs.so.1 librdmacm.so.1; do
    if [ ! -e "$libdir/$lib" ]; then
        echo "$0: $libdir/$lib not found (build with -Dverbs=enabled, or set FAKEVERBS_LIBDIR)" >&2
        exit 2
    fi
done
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$@"
