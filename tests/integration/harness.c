/*
 * Integration test harness: forks rank processes, bounds their lifetime, collects their reports.
 * See harness.h for the contract.
 */
#include "harness.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long the harness waits for killed children to be reaped before giving up on them. */
#define REAP_GRACE_MS 5000
#define POLL_MS       2

/* Children of this process not yet reaped, so that harness_kill_all can find them. */
static pid_t live_pids[HARNESS_MAX_PROCS];

double harness_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void harness_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        continue;
    }
}

static void track_pid(pid_t pid)
{
    for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
        if (live_pids[i] == 0) {
            live_pids[i] = pid;
            return;
        }
    }
}

static void untrack_pid(pid_t pid)
{
    for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
        if (live_pids[i] == pid) {
            live_pids[i] = 0;
        }
    }
}

void harness_kill_all(void)
{
    for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
        if (live_pids[i] > 0) {
            kill(live_pids[i], SIGKILL);
            waitpid(live_pids[i], NULL, 0);
            live_pids[i] = 0;
        }
    }
}

void harness_set_status(struct harness_child *c, fx_comm_t comm, fx_status status)
{
    struct harness_result *res = c->res;

    res->status      = status;
    res->t_status_ms = harness_now_ms();
    if (comm != NULL) {
        fx_comm_get_error(comm, res->err, sizeof(res->err));
    } else {
        const char *text = fx_last_error();

        snprintf(res->err, sizeof(res->err), "%s", text != NULL ? text : "(null)");
    }
}

void harness_logf(struct harness_child *c, const char *fmt, ...)
{
    char *log   = c->res->log;
    size_t used = strnlen(log, HARNESS_LOG_LEN - 1);
    va_list ap;

    if (used + 2 >= HARNESS_LOG_LEN) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(log + used, HARNESS_LOG_LEN - used - 1, fmt, ap);
    va_end(ap);
    used          = strnlen(log, HARNESS_LOG_LEN - 1);
    log[used]     = '\n';
    log[used + 1] = '\0';
}

int harness_sync_wait(struct harness_child *c, int slot, int value, int timeout_ms)
{
    double end = harness_now_ms() + timeout_ms;

    while (__atomic_load_n(&c->shared->sync[slot], __ATOMIC_ACQUIRE) < value) {
        if (harness_now_ms() > end) {
            return 0;
        }
        harness_sleep_ms(1);
    }
    return 1;
}

void harness_sync_set(struct harness_child *c, int slot, int value)
{
    __atomic_store_n(&c->shared->sync[slot], value, __ATOMIC_RELEASE);
}

void harness_sync_add(struct harness_child *c, int slot, int delta)
{
    __atomic_add_fetch(&c->shared->sync[slot], delta, __ATOMIC_ACQ_REL);
}

/* Milliseconds from the run's start to t, or -1 when t was never set. */
static double since(const struct harness_run_info *info, double t)
{
    return t > 0 ? t - info->t_start_ms : -1;
}

void harness_dump(const struct harness_run_info *info, const char *what)
{
    fprintf(stderr, "%s: %d processes, %.0f ms%s\n", what, info->nprocs, info->elapsed_ms,
            info->deadline_hit ? ", deadline hit" : "");
    for (int i = 0; i < info->nprocs; i++) {
        const struct harness_result *res = &info->shared->res[i];

        fprintf(stderr,
                "  [%d] pid %d exit %d signal %d%s, init %d, status %d (%s) at %.0f ms, "
                "mark at %.0f ms, wrong %lld, ops %lld: %s\n%s",
                i, (int)res->pid, res->exit_code, res->term_signal, res->killed ? " (killed)" : "",
                res->init_status, res->status, fx_strerror(res->status),
                since(info, res->t_status_ms), since(info, res->t_mark_ms), res->wrong, res->ops,
                res->err, res->log);
    }
}

/* Parses the list after one "rank"/"ranks" and reports whether it holds r. */
static int list_holds_rank(const char *q, int r)
{
    for (int steps = 0; steps < 64 && *q != '\0'; steps++) {
        if (isdigit((unsigned char)*q)) {
            char *end;
            long n = strtol(q, &end, 10);

            if (n == r) {
                return 1;
            }
            q = end;
        } else if (strchr(" :,=[]{}()#", *q) != NULL) {
            q++;
        } else if (strncmp(q, "and ", 4) == 0) {
            q += 4;
        } else if (strncmp(q, "or ", 3) == 0) {
            q += 3;
        } else {
            return 0;
        }
    }
    return 0;
}

int harness_names_rank(const char *text, int r)
{
    for (const char *p = text; (p = strcasestr(p, "rank")) != NULL; p += 4) {
        const char *q = p + 4;

        if (*q == 's' || *q == 'S') {
            q++;
        }
        if (list_holds_rank(q, r)) {
            return 1;
        }
    }
    return 0;
}

int harness_pid_gone(pid_t pid)
{
    return kill(pid, 0) == -1 && errno == ESRCH;
}

uint64_t harness_hash(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t h             = 0xcbf29ce484222325ULL ^ len;
    size_t i               = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t w;

        memcpy(&w, p + i, sizeof(w));
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 32;
    }
    for (; i < len; i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    return h;
}

/* The body of a child: join (or let the test join) and run the test's function. */
static int child_main(const struct harness_opts *opts, struct harness_child *c)
{
    fx_comm_t comm = NULL;
    fx_status status;
    int code;

    if (opts->raw_fn != NULL) {
        return opts->raw_fn(c);
    }
    status              = fx_comm_init_rank(&comm, c->nranks, c->id, c->index);
    c->res->init_status = status;
    c->res->t_init_ms   = harness_now_ms();
    if (status != FX_OK) {
        harness_set_status(c, NULL, status);
        return 10;
    }
    code = opts->rank_fn(comm, c);
    if (opts->sync_destroy) {
        harness_sync_add(c, HARNESS_NSYNC - 1, 1);
        harness_sync_wait(c, HARNESS_NSYNC - 1, c->nprocs, 10000);
    }
    fx_comm_destroy(comm);
    return code;
}

/* ------------------------------------------------------------------ namespace hosts */

#define HARNESS_MAX_NETNS 8

static int netns_names(char names[HARNESS_MAX_NETNS][64])
{
    const char *list = getenv("LIBFABRICX_TEST_NETNS");
    int n            = 0;

    while (list != NULL && *list != '\0' && n < HARNESS_MAX_NETNS) {
        size_t len = strcspn(list, ",");

        if (len > 0 && len < 64) {
            memcpy(names[n], list, len);
            names[n++][len] = '\0';
        }
        list += len + (list[len] == ',');
    }
    return n;
}

int harness_netns_count(void)
{
    char names[HARNESS_MAX_NETNS][64];

    return netns_names(names);
}

/* Moves the calling thread into namespace host i (modulo the count); 0 or -1. */
static int enter_netns(int i)
{
    char names[HARNESS_MAX_NETNS][64];
    char path[128];
    int n = netns_names(names);
    int fd, rc;

    if (n == 0) {
        return 0;
    }
    snprintf(path, sizeof(path), "/var/run/netns/%s", names[i % n]);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "harness: LIBFABRICX_TEST_NETNS: %s: %s\n", path, strerror(errno));
        return -1;
    }
    rc = setns(fd, CLONE_NEWNET);
    if (rc != 0) {
        fprintf(stderr, "harness: setns %s: %s\n", path, strerror(errno));
    }
    close(fd);
    return rc;
}

/* Forks child `index`; returns its pid or -1. */
static pid_t spawn_child(const struct harness_opts *opts, struct harness_run_info *info,
                         const fx_unique_id *id, int index)
{
    pid_t parent = getpid();
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid != 0) {
        return pid;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(99);
    }
    if (!opts->one_host && enter_netns(index) != 0) {
        _exit(98);
    }
    struct harness_child c = {
        .index  = index,
        .nprocs = info->nprocs,
        .nranks = opts->nranks,
        .id     = *id,
        .arg    = opts->arg,
        .res    = &info->shared->res[index],
        .shared = info->shared,
    };
    _exit(child_main(opts, &c));
}

/* Reaps whatever has exited; returns the number of children still unreaped. */
static int reap_some(struct harness_run_info *info, double start)
{
    int live = 0;

    for (int i = 0; i < info->nprocs; i++) {
        struct harness_result *res = &info->shared->res[i];
        int wstatus;

        if (res->reaped) {
            continue;
        }
        if (waitpid(res->pid, &wstatus, WNOHANG) != res->pid) {
            live++;
            continue;
        }
        res->reaped      = 1;
        res->elapsed_ms  = harness_now_ms() - start;
        res->exit_code   = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
        res->term_signal = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
        untrack_pid(res->pid);
    }
    return live;
}

/* SIGKILLs the unreaped children selected by mask. */
static void kill_children(struct harness_run_info *info, unsigned mask)
{
    for (int i = 0; i < info->nprocs; i++) {
        struct harness_result *res = &info->shared->res[i];

        if (!res->reaped && (mask & (1u << i)) != 0 && !res->killed) {
            kill(res->pid, SIGKILL);
            res->killed = 1;
        }
    }
}

/* 1 when every child outside hang_mask has been reaped. */
static int others_done(const struct harness_run_info *info, unsigned hang_mask)
{
    for (int i = 0; i < info->nprocs; i++) {
        if (!info->shared->res[i].reaped && (hang_mask & (1u << i)) == 0) {
            return 0;
        }
    }
    return 1;
}

/* Waits for all children with the run's deadline; kills the hanging and the late. */
static void wait_children(const struct harness_opts *opts, struct harness_run_info *info,
                          double start)
{
    double deadline = start + opts->deadline_ms;
    long max_polls  = (opts->deadline_ms + REAP_GRACE_MS) / POLL_MS + 1;

    for (long polls = 0; polls < max_polls; polls++) {
        if (reap_some(info, start) == 0) {
            return;
        }
        if (others_done(info, opts->hang_mask)) {
            kill_children(info, opts->hang_mask);
        }
        if (harness_now_ms() > deadline && !info->deadline_hit) {
            info->deadline_hit = 1;
            kill_children(info, ~0u);
        }
        harness_sleep_ms(POLL_MS);
    }
    harness_kill_all();
}

static int check_opts(const struct harness_opts *opts, int nprocs)
{
    if (nprocs < 1 || nprocs > HARNESS_MAX_PROCS || opts->deadline_ms <= 0 ||
        (opts->rank_fn == NULL) == (opts->raw_fn == NULL)) {
        fprintf(stderr, "harness: bad options (nprocs %d, deadline %d ms)\n", nprocs,
                opts->deadline_ms);
        return -1;
    }
    return 0;
}

void harness_use_loopback(void)
{
    setenv("FX_SOCKET_IFNAME", "lo", 0);
}

/* Creates the shared area and the id; returns 0 or -1. */
static int prepare_run(const struct harness_opts *opts, struct harness_run_info *info,
                       fx_unique_id *id)
{
    char value[32];

    harness_use_loopback();
    if (opts->fx_timeout_ms > 0) {
        snprintf(value, sizeof(value), "%d", opts->fx_timeout_ms);
        setenv("FX_TIMEOUT_MS", value, 1);
    }
    info->shared = mmap(NULL, sizeof(*info->shared), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (info->shared == MAP_FAILED) {
        info->shared = NULL;
        perror("harness: mmap");
        return -1;
    }
    for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
        info->shared->res[i].init_status = FX_INPROGRESS;
        info->shared->res[i].status      = FX_INPROGRESS;
    }
    memset(id, 0, sizeof(*id));
    if (!opts->one_host && harness_netns_count() > 0) {
        /* Rank 0 runs in the first namespace host: the id (and its listener) are made there. */
        int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);

        if (home < 0 || enter_netns(0) != 0) {
            if (home >= 0) {
                close(home);
            }
            return -1;
        }
        info->id_status = opts->no_unique_id ? FX_OK : fx_get_unique_id(id);
        if (setns(home, CLONE_NEWNET) != 0) {
            perror("harness: setns back");
            close(home);
            return -1;
        }
        close(home);
    } else {
        info->id_status = opts->no_unique_id ? FX_OK : fx_get_unique_id(id);
    }
    if (info->id_status != FX_OK) {
        fprintf(stderr, "harness: fx_get_unique_id: %s: %s\n", fx_strerror(info->id_status),
                fx_last_error());
        return -1;
    }
    return 0;
}

int harness_run(const struct harness_opts *opts, struct harness_run_info *info)
{
    int nprocs = opts->nprocs > 0 ? opts->nprocs : opts->nranks;
    fx_unique_id id;
    double start;

    memset(info, 0, sizeof(*info));
    info->nprocs = nprocs;
    if (check_opts(opts, nprocs) != 0 || prepare_run(opts, info, &id) != 0) {
        return -1;
    }
    start            = harness_now_ms();
    info->t_start_ms = start;
    for (int i = 0; i < nprocs; i++) {
        pid_t pid = spawn_child(opts, info, &id, i);

        if (pid < 0) {
            perror("harness: fork");
            harness_kill_all();
            return -1;
        }
        info->shared->res[i].pid = pid;
        track_pid(pid);
    }
    wait_children(opts, info, start);
    info->elapsed_ms = harness_now_ms() - start;
    return 0;
}

void harness_free(struct harness_run_info *info)
{
    if (info->shared != NULL) {
        munmap(info->shared, sizeof(*info->shared));
        info->shared = NULL;
    }
}
