# shellcheck shell=bash
# netns-lib.sh - what the namespace test scripts share; sourced, not run.
#   require_netns      exits 77 (skipped) unless this process can create network namespaces
#   require_tool VAR   the executable named by $VAR (unset afterwards: the library would warn
#                      about an FX_ variable it does not know), in TOOL; exits 77 without one
#   pass / fail TEXT   count and print one check; summary prints "N passed, N failed" and
#                      returns non-zero if any failed
#   cluster_up N ARGS  scripts/netns-cluster.sh up N ARGS --name $NAME, output in $TMP/up.log;
#                      on failure prints it and exits 1
# The caller sets ROOT, NAME and TMP (made here by netns_tmp) and tears down with its own trap.
CLUSTER=$ROOT/scripts/netns-cluster.sh
RUN=$ROOT/scripts/netns-run.sh # used by the scripts that source this
export RUN
PASSED=0
FAILED=0

require_netns() {
    local probe="fxprobe$$"

    if [ "$(id -u)" != 0 ]; then
        echo "skip: network namespaces need root"
        exit 77
    fi
    if ! ip netns list >/dev/null 2>&1; then
        echo "skip: 'ip netns' is not available"
        exit 77
    fi
    # Root in a container may still lack the right to make namespaces: try one.
    if ! ip netns add "$probe" >/dev/null 2>&1; then
        echo "skip: this environment cannot create network namespaces"
        exit 77
    fi
    ip netns del "$probe" >/dev/null 2>&1 || true
    # The ranks choose their interface the testbed way (eth0), whatever the caller exported
    # (scripts/test exports FX_SOCKET_IFNAME=lo).
    unset FX_SOCKET_IFNAME
}

require_tool() {
    TOOL=${!1:-}
    unset "$1"
    if [ -z "$TOOL" ] || [ ! -x "$TOOL" ]; then
        echo "skip: no executable in $1"
        exit 77
    fi
}

pass() {
    PASSED=$((PASSED + 1))
    echo "ok: $*"
}

fail() {
    FAILED=$((FAILED + 1))
    echo "FAILED: $*"
}

summary() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}

cluster_up() {
    if ! "$CLUSTER" up "$@" --name "$NAME" >"$TMP/up.log" 2>&1; then
        cat "$TMP/up.log"
        echo "0 passed, 1 failed"
        exit 1
    fi
}
