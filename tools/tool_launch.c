/* How the tools start their ranks (tool_launch.h). */
#include "tool_launch.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LOCAL 1024

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void kill_all(const pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
        }
    }
}

/* Waits for every child: see tool_launch_local. */
static int reap(const char *prog, pid_t *pids, int n, long timeout_ms, int fatal_min)
{
    double deadline = now_s() + (double)timeout_ms / 1000.0;
    int left        = n;
    int rc          = -1; /* no fatal status yet */
    int rank0       = 0;

    while (left > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);

        if (pid > 0) {
            for (int i = 0; i < n; i++) {
                if (pids[i] != pid) {
                    continue;
                }
                int code = WIFEXITED(st)   ? WEXITSTATUS(st)
                           : fatal_min > 1 ? fatal_min
                                           : 128 + WTERMSIG(st);

                pids[i] = -1;
                left--;
                if (i == 0) {
                    rank0 = code;
                }
                if ((code >= fatal_min || !WIFEXITED(st)) && rc < 0) {
                    rc = code;
                    kill_all(pids, n);
                }
            }
            continue;
        }
        if (got_signal || now_s() > deadline) {
            fprintf(stderr, "%s: %s, killing the ranks\n", prog,
                    got_signal ? "interrupted" : "timed out");
            kill_all(pids, n);
            rc         = rc < 0 ? fatal_min : rc;
            got_signal = 0;
            deadline   = now_s() + 3600;
        }
        usleep(10000);
    }
    return rc >= 0 ? rc : rank0;
}

int tool_launch_local(const char *prog, int np, long timeout_ms, int fatal_min, tool_rank_fn run,
                      void *arg)
{
    fx_unique_id id;
    pid_t pids[MAX_LOCAL];
    fx_status s;

    if (np < 1 || np > MAX_LOCAL) {
        fprintf(stderr, "%s: --np %d: give 1 to %d local ranks\n", prog, np, MAX_LOCAL);
        return fatal_min;
    }
    /* Local ranks all live on this host: keep the job on loopback unless told otherwise. */
    setenv("FX_SOCKET_IFNAME", "lo", 0);
    s = fx_get_unique_id(&id);
    if (s != FX_OK) {
        fprintf(stderr, "%s: fx_get_unique_id: %s: %s\n", prog, fx_strerror(s), fx_last_error());
        return fatal_min;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fflush(stdout);
    for (int r = 0; r < np; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            fx_comm_t comm;

            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            s = fx_comm_init_rank(&comm, np, id, r);
            if (s != FX_OK) {
                fprintf(stderr, "%s: rank %d: init: %s: %s\n", prog, r, fx_strerror(s),
                        fx_last_error());
                _exit(fatal_min);
            }
            s = (fx_status)run(comm, arg);
            fflush(stdout);
            _exit((int)s);
        }
        if (pids[r] < 0) {
            perror("fork");
            kill_all(pids, r);
            return fatal_min;
        }
    }
    return reap(prog, pids, np, timeout_ms, fatal_min);
}

int tool_run(const char *prog, int np, long timeout_ms, int fatal_min, tool_rank_fn run, void *arg)
{
    fx_comm_t comm;
    fx_status s;

    if (np > 0) {
        return tool_launch_local(prog, np, timeout_ms, fatal_min, run, arg);
    }
    s = fx_comm_init_env(&comm);
    if (s != FX_OK) {
        fprintf(stderr, "%s: init: %s: %s\n(use --np N to start N local ranks)\n", prog,
                fx_strerror(s), fx_last_error());
        return fatal_min;
    }
    return run(comm, arg);
}
