/*
 * How the tools (fx-bench, fx-doctor) start: under a launcher's environment, or with --np N
 * local ranks of one job forked on this host, each joining the communicator and running the
 * tool's body, then reaped.
 */
#ifndef FX_TOOL_LAUNCH_H
#define FX_TOOL_LAUNCH_H

#include "fabricx.h"

/* A rank's body: returns its exit status (0..255). It owns comm (destroys it or exits). */
typedef int (*tool_rank_fn)(fx_comm_t comm, void *arg);

/*
 * Starts np ranks (FX_SOCKET_IFNAME defaults to lo) and waits for them all. A rank that exits
 * with a status of at least fatal_min, or dies of a signal, makes the others be killed; that
 * status (2 for a signal when fatal_min is 2, else 128 + signal) is returned. Otherwise rank
 * 0's status is returned. SIGINT, SIGTERM and timeout_ms kill every rank (status fatal_min).
 * prog prefixes the messages.
 */
int tool_launch_local(const char *prog, int np, long timeout_ms, int fatal_min, tool_rank_fn run,
                      void *arg);

/*
 * A tool's whole run: with np > 0, tool_launch_local; otherwise this process joins the job its
 * launcher describes (fx_comm_init_env) and runs as one rank. An init failure is reported and
 * returns fatal_min.
 */
int tool_run(const char *prog, int np, long timeout_ms, int fatal_min, tool_rank_fn run, void *arg);

#endif /* FX_TOOL_LAUNCH_H */
