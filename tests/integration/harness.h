/*
 * Integration test harness: runs the ranks of a job as real processes forked from the calling
 * Criterion test, over loopback TCP, and collects what each one reports.
 *
 * harness_run() creates a unique id (unless told not to), forks one child per process, waits for
 * them with a deadline and reaps every one of them before it returns: a child that is still alive
 * at the deadline, or that the test marked as expected to hang, is killed with SIGKILL. Children
 * also die with the test process (PR_SET_PDEATHSIG), and harness_kill_all(), the suites' .fini,
 * kills anything left after a failed assertion. Children never call Criterion: they write their
 * findings into a shared anonymous mapping (struct harness_result) and leave with _exit().
 */
#ifndef FX_TEST_HARNESS_H
#define FX_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fabricx.h"

#define HARNESS_MAX_PROCS 16
#define HARNESS_ERR_LEN   512
#define HARNESS_LOG_LEN   2048
#define HARNESS_NSYNC     8 /* sync[HARNESS_NSYNC - 1] is the harness's own */
#define HARNESS_NHASH     1536

/* What one child process reports. Fields marked "parent" are written by harness_run. */
struct harness_result {
    pid_t pid;          /* parent: the child's process id */
    int reaped;         /* parent: 1 once waitpid returned the child */
    int exit_code;      /* parent: exit status, or -1 when killed by a signal */
    int term_signal;    /* parent: the signal that ended it, 0 when it exited */
    int killed;         /* parent: 1 when the harness sent SIGKILL */
    double elapsed_ms;  /* parent: from fork to reaping */
    int init_status;    /* child: fx_comm_init_* status (FX_INPROGRESS until called) */
    int status;         /* child: status of the operation under test */
    double t_init_ms;   /* child: harness_now_ms() when init returned */
    double t_status_ms; /* child: harness_now_ms() when status was set */
    double t_mark_ms;   /* child: a moment of the test's choosing (before a self-kill...) */
    long long wrong;    /* child: number of wrong elements seen */
    long long ops;      /* child: number of operations completed */
    long long aux;      /* child: anything else the test counts */
    uint64_t hash;      /* child: hash of a result buffer */
    uint64_t hashes[HARNESS_NHASH]; /* child: hash of each case's result, by case index */
    char err[HARNESS_ERR_LEN];      /* child: fx_comm_get_error or fx_last_error text */
    char log[HARNESS_LOG_LEN];      /* child: human-readable description of failures */
};

/* The shared area: one result per process and a few words for tests to synchronise through. */
struct harness_shared {
    struct harness_result res[HARNESS_MAX_PROCS];
    int sync[HARNESS_NSYNC];
};

/* What a child knows. */
struct harness_child {
    int index;                     /* 0 .. nprocs - 1; the rank unless the test says otherwise */
    int nprocs;                    /* processes forked */
    int nranks;                    /* the communicator size the test asked for */
    fx_unique_id id;               /* from fx_get_unique_id in the parent */
    void *arg;                     /* the test's argument */
    struct harness_result *res;    /* this child's result */
    struct harness_shared *shared; /* everybody's results and the sync words */
};

/* Runs after fx_comm_init_rank(comm, nranks, id, index) succeeded; returns the exit code. The
 * harness destroys the communicator afterwards. */
typedef int (*harness_rank_fn)(fx_comm_t comm, struct harness_child *c);

/* Runs instead of the harness's init: the child joins (or not) by itself. Returns the exit code. */
typedef int (*harness_raw_fn)(struct harness_child *c);

struct harness_opts {
    int nranks;              /* communicator size */
    int nprocs;              /* processes to fork; 0 means nranks */
    int deadline_ms;         /* every child is killed after this long */
    int fx_timeout_ms;       /* exported as FX_TIMEOUT_MS before anything starts; 0 leaves it */
    int no_unique_id;        /* 1: do not call fx_get_unique_id (the test joins by environment) */
    unsigned hang_mask;      /* processes expected to hang: killed once all others have exited */
    int one_host;            /* 1: every process stays in the test's network namespace, even
                                when LIBFABRICX_TEST_NETNS spreads jobs over namespace hosts */
    int sync_destroy;        /* 1: ranks meet (in shared memory, at most 10 s) before destroying,
                                so that none closes connections a peer still reads from */
    harness_rank_fn rank_fn; /* one of rank_fn and raw_fn */
    harness_raw_fn raw_fn;
    void *arg;
};

/* Everything a run produced. */
struct harness_run_info {
    fx_status id_status;           /* fx_get_unique_id's status */
    int deadline_hit;              /* 1 when the deadline expired with children still running */
    double t_start_ms;             /* harness_now_ms() when the first child was forked */
    double elapsed_ms;             /* the whole run */
    int nprocs;                    /* processes forked */
    struct harness_shared *shared; /* results; valid until harness_free */
};

/* Forks, runs and reaps the children; returns 0 or -1 when the run could not be set up (then
 * info->log-worthy detail is on stderr). Free info with harness_free. */
int harness_run(const struct harness_opts *opts, struct harness_run_info *info);
void harness_free(struct harness_run_info *info);

/*
 * Several hosts: when LIBFABRICX_TEST_NETNS lists network namespaces ("fxm-h0,fxm-h1", made by
 * scripts/netns-cluster.sh), process i runs in namespace i % count and the unique id is made in
 * the first, so one job spans namespace hosts: ranks of one namespace talk through shared memory,
 * the others through TCP over the namespaces' veth links (FX_SOCKET_IFNAME then names that link).
 * Returns the number of namespaces (0: the test's own namespace only).
 */
int harness_netns_count(void);

/* Keeps the job on loopback: FX_SOCKET_IFNAME=lo unless the environment already chose.
 * harness_run calls it; tests that call the library themselves call it first. */
void harness_use_loopback(void);

/* SIGKILLs and reaps every child still registered; the suites' .fini. */
void harness_kill_all(void);

/* Milliseconds on CLOCK_MONOTONIC, comparable between the processes of a run. */
double harness_now_ms(void);
void harness_sleep_ms(int ms);

/* Child helpers: record a status with its time and the communicator's (or, with comm NULL, the
 * thread's) last error text; append a printf-style line to the child's log. */
void harness_set_status(struct harness_child *c, fx_comm_t comm, fx_status status);
void harness_logf(struct harness_child *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Waits until shared->sync[slot] >= value or timeout_ms passed; returns 1 when reached. */
int harness_sync_wait(struct harness_child *c, int slot, int value, int timeout_ms);
void harness_sync_set(struct harness_child *c, int slot, int value);
void harness_sync_add(struct harness_child *c, int slot, int delta);

/* Prints one line per process (exit, statuses, times, error text, log) to stderr. */
void harness_dump(const struct harness_run_info *info, const char *what);

/* 1 when text names rank r: "rank 3", "ranks 1, 3", "rank=3", "missing ranks: [1 3]"... */
int harness_names_rank(const char *text, int r);

/* 1 when the process with this id no longer exists (kill(pid, 0) fails with ESRCH). */
int harness_pid_gone(pid_t pid);

/* A 64-bit hash of bytes, for comparing result buffers between ranks. */
uint64_t harness_hash(const void *buf, size_t len);

#endif /* FX_TEST_HARNESS_H */
