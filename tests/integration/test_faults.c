/*
 * Faults over real rank processes: killed, stopped, missing, duplicate and unauthenticated
 * ranks, mismatched calls, garbage on the bootstrap port, bad arguments, abort, and a zero-wait.
 * Each must give a clear error within a stated time and leave no process behind.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "refdata.h"

#define LOOP_COUNT     (1u << 20) /* elements of the allreduces a victim dies in */
#define LOOP_MAX_ITERS 1000
#define LOOP_MAX_MS    30000
#define VICTIM         2

/* Every process of the run has exited or been reaped: kill(pid, 0) finds none of them. */
static void expect_no_process_left(const struct harness_run_info *info)
{
    for (int i = 0; i < info->nprocs; i++) {
        pid_t pid = info->shared->res[i].pid;

        cr_expect(info->shared->res[i].reaped && harness_pid_gone(pid),
                  "process %d (pid %d) outlived the test", i, (int)pid);
    }
}

static const struct harness_result *run_faults(const struct harness_opts *opts,
                                               struct harness_run_info *info, const char *what)
{
    cr_assert_eq(harness_run(opts, info), 0, "%s: harness could not start", what);
    harness_dump(info, what);
    expect_no_process_left(info);
    return info->shared->res;
}

/* The process exited normally with code 0, not killed by the harness. */
static void expect_exit_clean(const struct harness_result *res, int i)
{
    cr_expect(res->exit_code == 0 && !res->killed,
              "process %d: exit code %d, signal %d%s (it must return and exit by itself)", i,
              res->exit_code, res->term_signal, res->killed ? ", killed by the harness" : "");
}

/* res's status came no later than bound_ms after since_ms (the fault, or the call). */
static void expect_within(const struct harness_result *res, int i, double since_ms, double bound_ms)
{
    if (res->t_status_ms <= 0 || since_ms <= 0) {
        cr_expect(0, "process %d: no status recorded (or no fault time), the bound is %.0f ms", i,
                  bound_ms);
        return;
    }
    cr_expect(res->t_status_ms - since_ms <= bound_ms,
              "process %d: the status came %.0f ms after the fault, the bound is %.0f ms", i,
              res->t_status_ms - since_ms, bound_ms);
}

/* res returned want, no later than bound_ms after since_ms. */
static void expect_status_by(const struct harness_result *res, int i, fx_status want,
                             double since_ms, double bound_ms)
{
    cr_expect_eq(res->status, want, "process %d: got %d (%s), want %d (%s): %s", i, res->status,
                 fx_strerror(res->status), want, fx_strerror(want), res->err);
    expect_within(res, i, since_ms, bound_ms);
}

/* res returned want or alt, no later than bound_ms after since_ms. */
static void expect_either_by(const struct harness_result *res, int i, fx_status want, fx_status alt,
                             double since_ms, double bound_ms)
{
    cr_expect(res->status == want || res->status == alt,
              "process %d: got %d (%s), want %d (%s) or %d (%s): %s", i, res->status,
              fx_strerror(res->status), want, fx_strerror(want), alt, fx_strerror(alt), res->err);
    expect_within(res, i, since_ms, bound_ms);
}

static void expect_names_rank(const struct harness_result *res, int i, int rank)
{
    cr_expect(harness_names_rank(res->err, rank),
              "process %d: error text does not name rank %d: '%s'", i, rank, res->err);
}

static void expect_mentions(const struct harness_result *res, int i, const char *word)
{
    cr_expect(strstr(res->err, word) != NULL, "process %d: error text does not say '%s': '%s'", i,
              word, res->err);
}

/* Runs a correct FLOAT32 SUM allreduce of count elements; returns its status and counts wrong
 * elements into the child's result. */
static fx_status checked_allreduce(fx_comm_t comm, struct harness_child *c, size_t count)
{
    struct ref_case k = {FX_FLOAT32, FX_SUM, count, c->nranks, ref_mix(count)};
    float *send       = malloc(count * sizeof(float));
    float *recv       = malloc(count * sizeof(float));
    float *expect     = malloc(count * sizeof(float));
    uint64_t *scratch = malloc(count * sizeof(uint64_t));
    fx_status status  = FX_ERR_NO_MEMORY;
    char first[160];
    size_t wrong;

    if (send != NULL && recv != NULL && expect != NULL && scratch != NULL) {
        ref_fill(&k, c->index, send);
        status = fx_allreduce(send, recv, count, FX_FLOAT32, FX_SUM, comm);
    }
    if (status == FX_OK) {
        ref_expect(&k, expect, scratch);
        wrong = ref_compare(&k, recv, expect, first, sizeof(first));
        if (wrong != 0) {
            c->res->wrong += (long long)wrong;
            harness_logf(c, "allreduce of %zu floats: %zu wrong, %s", count, wrong, first);
        }
    }
    free(send);
    free(recv);
    free(expect);
    free(scratch);
    return status;
}

/* ---- 1 and 9: a rank killed or stopped in the middle of a collective ---- */

struct self_signal {
    struct harness_child *c;
    int sig;
};

/* Sends sig to the whole process 20 ms after it started, while the main thread is inside an
 * allreduce; the moment is recorded first, in shared memory. */
static void *self_signal_main(void *arg)
{
    struct self_signal *s = arg;

    harness_sleep_ms(20);
    s->c->res->t_mark_ms = harness_now_ms();
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    kill(getpid(), s->sig);
    return NULL;
}

/* Large allreduces in a loop; the victim signals itself during the fourth. The others record
 * the first error (or FX_OK if none came, which the parent reports). */
static int loop_until_error(fx_comm_t comm, struct harness_child *c, int sig)
{
    float *send                = calloc(LOOP_COUNT, sizeof(float));
    float *recv                = calloc(LOOP_COUNT, sizeof(float));
    double end                 = harness_now_ms() + LOOP_MAX_MS;
    struct self_signal sig_arg = {c, sig};
    fx_status status           = FX_OK;
    pthread_t thread;

    if (send == NULL || recv == NULL) {
        return 3;
    }
    for (int it = 0; it < LOOP_MAX_ITERS && status == FX_OK && harness_now_ms() < end; it++) {
        if (c->index == VICTIM && it == 3) {
            pthread_create(&thread, NULL, self_signal_main, &sig_arg);
        }
        status      = fx_allreduce(send, recv, LOOP_COUNT, FX_FLOAT32, FX_SUM, comm);
        c->res->ops = it + 1;
    }
    harness_set_status(c, comm, status);
    free(send);
    free(recv);
    return 0;
}

static int loop_until_killed(fx_comm_t comm, struct harness_child *c)
{
    return loop_until_error(comm, c, SIGKILL);
}

Test(faults, killed_rank_gives_peer_failed_on_every_survivor, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {
        .nranks = 4, .deadline_ms = 40000, .fx_timeout_ms = 10000, .rank_fn = loop_until_killed};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "rank 2 killed");
    double killed_at                 = res[VICTIM].t_mark_ms;

    cr_expect(res[VICTIM].term_signal == SIGKILL && !res[VICTIM].killed && killed_at > 0,
              "rank 2 did not die of its own SIGKILL (signal %d)", res[VICTIM].term_signal);
    for (int i = 0; i < 4; i++) {
        if (i != VICTIM) {
            expect_status_by(&res[i], i, FX_ERR_PEER_FAILED, killed_at, 2000);
            expect_names_rank(&res[i], i, VICTIM);
            expect_exit_clean(&res[i], i);
        }
    }
    harness_free(&info);
}

static int loop_until_stopped(fx_comm_t comm, struct harness_child *c)
{
    return loop_until_error(comm, c, SIGSTOP);
}

Test(faults, stopped_rank_gives_timeout_on_every_live_rank, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = 40000,
                                .fx_timeout_ms = 3000,
                                .hang_mask     = 1u << VICTIM,
                                .rank_fn       = loop_until_stopped};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "rank 2 stopped");
    double stopped_at                = res[VICTIM].t_mark_ms;
    int named                        = 0;

    cr_expect(res[VICTIM].killed && res[VICTIM].term_signal == SIGKILL && stopped_at > 0,
              "rank 2 should have stopped and been killed by the harness (signal %d)",
              res[VICTIM].term_signal);
    for (int i = 0; i < 4; i++) {
        if (i == VICTIM) {
            continue;
        }
        expect_either_by(&res[i], i, FX_ERR_TIMEOUT, FX_ERR_PEER_FAILED, stopped_at, 3000 + 3000);
        cr_expect(strstr(res[i].err, "rank") != NULL, "process %d: error names no rank: '%s'", i,
                  res[i].err);
        named += harness_names_rank(res[i].err, VICTIM);
        expect_exit_clean(&res[i], i);
    }
    cr_expect(named > 0, "no live rank names the stopped rank 2");
    harness_free(&info);
}

/* ---- 2, 5 and 8: ranks that never join, join with a wrong secret, or twice ---- */

#define MISSING_TIMEOUT_MS 3000

/* Joins as rank `rank` of c->nranks with id, recording when it started and how it ended. */
static int join_as(struct harness_child *c, fx_unique_id id, int rank)
{
    fx_comm_t comm = NULL;
    fx_status status;

    c->res->t_mark_ms   = harness_now_ms();
    status              = fx_comm_init_rank(&comm, c->nranks, id, rank);
    c->res->init_status = status;
    harness_set_status(c, NULL, status);
    if (status == FX_OK) {
        fx_comm_destroy(comm);
    }
    return 0;
}

static int join_unless_last(struct harness_child *c)
{
    if (c->index == c->nranks - 1) {
        return 0;
    }
    return join_as(c, c->id, c->index);
}

Test(faults, missing_rank_gives_timeout_naming_it, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = MISSING_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = MISSING_TIMEOUT_MS,
                                .raw_fn        = join_unless_last};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "rank 3 missing");

    for (int i = 0; i < 3; i++) {
        expect_status_by(&res[i], i, FX_ERR_TIMEOUT, res[i].t_mark_ms, MISSING_TIMEOUT_MS + 2000);
        expect_names_rank(&res[i], i, 3);
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

#define AUTH_TIMEOUT_MS 5000

/* The last rank flips every byte of the secret (offsets 16 to 47 of the binary id). */
static int join_last_with_wrong_secret(struct harness_child *c)
{
    fx_unique_id id = c->id;

    if (c->index == c->nranks - 1) {
        for (int i = 16; i < 48; i++) {
            id.internal[i] = (char)~id.internal[i];
        }
    }
    return join_as(c, id, c->index);
}

Test(faults, wrong_secret_gives_auth_error_and_others_time_out, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = AUTH_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = AUTH_TIMEOUT_MS,
                                .raw_fn        = join_last_with_wrong_secret};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "rank 3 with a wrong secret");

    expect_status_by(&res[3], 3, FX_ERR_AUTH, res[3].t_mark_ms, AUTH_TIMEOUT_MS / 2);
    expect_exit_clean(&res[3], 3);
    for (int i = 0; i < 3; i++) {
        expect_status_by(&res[i], i, FX_ERR_TIMEOUT, res[i].t_mark_ms, AUTH_TIMEOUT_MS + 2000);
        expect_names_rank(&res[i], i, 3);
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

#define DUP_TIMEOUT_MS 4000

/* Processes 0..2 join as ranks 0..2; process 3 joins as rank 2 again, 300 ms after the first. */
static int join_with_duplicate(struct harness_child *c)
{
    if (c->index == 2) {
        harness_sync_set(c, 0, 1);
    }
    if (c->index < 3) {
        return join_as(c, c->id, c->index);
    }
    if (!harness_sync_wait(c, 0, 1, 10000)) {
        return 4;
    }
    harness_sleep_ms(300);
    return join_as(c, c->id, 2);
}

Test(faults, duplicate_rank_is_rejected_naming_it, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = DUP_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = DUP_TIMEOUT_MS,
                                .raw_fn        = join_with_duplicate};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "rank 2 twice");

    expect_status_by(&res[3], 3, FX_ERR_INVALID_ARG, res[3].t_mark_ms, DUP_TIMEOUT_MS + 2000);
    expect_names_rank(&res[3], 3, 2);
    for (int i = 0; i < 4; i++) {
        cr_expect(res[i].status < 0 &&
                      res[i].t_status_ms - res[i].t_mark_ms <= DUP_TIMEOUT_MS + 2000,
                  "process %d: got %d (%s) after %.0f ms, want an error within %d ms: %s", i,
                  res[i].status, fx_strerror(res[i].status), res[i].t_status_ms - res[i].t_mark_ms,
                  DUP_TIMEOUT_MS + 2000, res[i].err);
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

/* ---- 3 and 4: mismatched count and datatype ---- */

#define MISMATCH_COUNT      4099
#define MISMATCH_TIMEOUT_MS 10000
#define MISMATCH_BOUND_MS   3000

/* What a mismatch run varies: the datatype or the count, and the size. */
struct mm_case {
    int by_dtype; /* rank 1 passes FX_INT32 instead of FX_FLOAT32; else count + 1 */
    size_t count;
};

static int mismatched_allreduce(fx_comm_t comm, struct harness_child *c)
{
    const struct mm_case *m = c->arg;
    size_t count            = m->count + (!m->by_dtype && c->index == 1);
    fx_datatype dt          = m->by_dtype && c->index == 1 ? FX_INT32 : FX_FLOAT32;
    float *send             = calloc(m->count + 1, sizeof(float));
    float *recv             = calloc(m->count + 1, sizeof(float));
    fx_status status        = FX_ERR_NO_MEMORY;

    c->res->t_mark_ms = harness_now_ms();
    if (send != NULL && recv != NULL) {
        status = fx_allreduce(send, recv, count, dt, FX_SUM, comm);
    }
    harness_set_status(c, comm, status);
    free(send);
    free(recv);
    return 0;
}

static void expect_mismatch(struct mm_case m)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = MISMATCH_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = MISMATCH_TIMEOUT_MS,
                                .rank_fn       = mismatched_allreduce,
                                .arg           = &m};
    struct harness_run_info info;
    const struct harness_result *res =
        run_faults(&opts, &info, m.by_dtype ? "datatype mismatch" : "count mismatch");

    for (int i = 0; i < 4; i++) {
        expect_status_by(&res[i], i, FX_ERR_MISMATCH, res[i].t_mark_ms, MISMATCH_BOUND_MS);
        expect_names_rank(&res[i], i, 1);
        expect_mentions(&res[i], i, m.by_dtype ? "datatype" : "count");
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

Test(faults, mismatched_count_gives_mismatch_on_every_rank, .timeout = 60, .fini = harness_kill_all)
{
    expect_mismatch((struct mm_case){0, MISMATCH_COUNT});
}

Test(faults, mismatched_datatype_gives_mismatch_on_every_rank, .timeout = 60,
     .fini = harness_kill_all)
{
    expect_mismatch((struct mm_case){1, MISMATCH_COUNT});
}

/* ---- 6: garbage on the bootstrap port, torchrun-style environment ---- */

#define ENV_NRANKS 4
#define FUZZER     ENV_NRANKS

/* A port p on 127.0.0.1 with p and p + 1 both free just now, or 0. */
static int free_port_pair(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int fds[2]            = {socket(AF_INET, SOCK_STREAM, 0), socket(AF_INET, SOCK_STREAM, 0)};
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len         = sizeof(sa);
        int port              = 0;

        if (bind(fds[0], (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
            getsockname(fds[0], (struct sockaddr *)&sa, &len) == 0 && ntohs(sa.sin_port) < 65535) {
            port        = ntohs(sa.sin_port);
            sa.sin_port = htons((uint16_t)(port + 1));
            if (bind(fds[1], (struct sockaddr *)&sa, sizeof(sa)) != 0) {
                port = 0;
            }
        }
        close(fds[0]);
        close(fds[1]);
        if (port != 0) {
            return port;
        }
    }
    return 0;
}

/* A connected socket to 127.0.0.1:port, or -1. */
static int connect_to(int port)
{
    struct sockaddr_in sa = {.sin_family      = AF_INET,
                             .sin_port        = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd                = socket(AF_INET, SOCK_STREAM, 0);

    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Sends len random bytes; the peer may close on us, which is fine. */
static void send_random(int fd, uint64_t seed, size_t len)
{
    unsigned char buf[4096];

    for (size_t i = 0; i < len && i < sizeof(buf); i++) {
        buf[i] = (unsigned char)ref_bits(seed, 0, i);
    }
    (void)send(fd, buf, len < sizeof(buf) ? len : sizeof(buf), MSG_NOSIGNAL);
}

/* One round of abuse: garbage of several sizes, all-ones "lengths", a connect-and-close, and
 * one connection left open and silent (returned, or -1). */
static int abuse_round(struct harness_child *c, int port, int round)
{
    static const size_t sizes[] = {1, 7, 16, 64, 1000, 4096};
    int silent;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        int fd = connect_to(port);

        if (fd >= 0) {
            send_random(fd, (uint64_t)round * 100 + i, sizes[i]);
            c->res->aux++;
            close(fd);
        }
    }
    for (int i = 0; i < 3; i++) {
        int fd = connect_to(port);

        if (fd >= 0) {
            c->res->aux++;
            close(fd);
        }
    }
    silent = connect_to(port);
    c->res->aux += silent >= 0;
    return silent;
}

/* The fuzzer: waits for rank 0's port, abuses it, lets the other ranks start, keeps abusing
 * for a while with silent connections held open, then leaves. */
static int fuzz_bootstrap(struct harness_child *c, int port)
{
    int silent[8];
    int nsilent = 0;
    int fd      = -1;

    for (int i = 0; i < 500 && fd < 0; i++) {
        fd = connect_to(port);
        if (fd < 0) {
            harness_sleep_ms(10);
        }
    }
    if (fd < 0) {
        harness_logf(c, "rank 0 never listened on 127.0.0.1:%d", port);
        harness_sync_set(c, 0, 1);
        return 5;
    }
    silent[nsilent++] = fd;
    for (int round = 0; round < 6; round++) {
        int s = abuse_round(c, port, round);

        if (s >= 0 && nsilent < 8) {
            silent[nsilent++] = s;
        } else if (s >= 0) {
            close(s);
        }
        if (round == 2) {
            harness_sync_set(c, 0, 1);
        }
        harness_sleep_ms(100);
    }
    harness_sleep_ms(2000);
    for (int i = 0; i < nsilent; i++) {
        close(silent[i]);
    }
    return 0;
}

/* Ranks: rank 0 joins at once; the others once the fuzzer has had a go. Then an allreduce. */
static int join_env_under_fire(struct harness_child *c)
{
    int port = *(const int *)c->arg;
    char rank[16];
    fx_comm_t comm = NULL;
    fx_status status;

    if (c->index == FUZZER) {
        return fuzz_bootstrap(c, port + 1);
    }
    snprintf(rank, sizeof(rank), "%d", c->index);
    setenv("RANK", rank, 1);
    if (c->index != 0 && !harness_sync_wait(c, 0, 1, 15000)) {
        return 4;
    }
    c->res->t_mark_ms   = harness_now_ms();
    status              = fx_comm_init_env(&comm);
    c->res->init_status = status;
    if (status != FX_OK) {
        harness_set_status(c, NULL, status);
        return 0;
    }
    harness_set_status(c, comm, checked_allreduce(comm, c, 1021));
    harness_sync_add(c, 1, 1);
    harness_sync_wait(c, 1, ENV_NRANKS, 10000);
    fx_comm_destroy(comm);
    return 0;
}

static void set_torchrun_env(int port)
{
    char value[16];

    snprintf(value, sizeof(value), "%d", port);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", value, 1);
    snprintf(value, sizeof(value), "%d", ENV_NRANKS);
    setenv("WORLD_SIZE", value, 1);
    setenv("FX_JOB_SECRET", "integration-test-secret-5f0c2a9e", 1);
    unsetenv("FX_UNIQUE_ID");
    unsetenv("FX_RANK");
    unsetenv("FX_NRANKS");
}

Test(faults, garbage_on_bootstrap_port_is_rejected_without_harm, .timeout = 60,
     .fini = harness_kill_all)
{
    int port                 = free_port_pair();
    struct harness_opts opts = {.nranks        = ENV_NRANKS,
                                .nprocs        = ENV_NRANKS + 1,
                                .deadline_ms   = 40000,
                                .fx_timeout_ms = 15000,
                                .no_unique_id  = 1,
                                .one_host      = 1, /* MASTER_ADDR is 127.0.0.1 */
                                .raw_fn        = join_env_under_fire,
                                .arg           = &port};
    struct harness_run_info info;
    const struct harness_result *res;

    cr_assert_neq(port, 0, "no free port pair on 127.0.0.1");
    set_torchrun_env(port);
    res = run_faults(&opts, &info, "garbage on the bootstrap port");
    cr_expect(res[FUZZER].aux >= 10 && res[FUZZER].exit_code == 0,
              "the fuzzer made only %lld connections (exit %d):\n%s", res[FUZZER].aux,
              res[FUZZER].exit_code, res[FUZZER].log);
    for (int i = 0; i < ENV_NRANKS; i++) {
        cr_expect_eq(res[i].init_status, FX_OK, "rank %d: fx_comm_init_env returned %d (%s): %s", i,
                     res[i].init_status, fx_strerror(res[i].init_status), res[i].err);
        cr_expect_eq(res[i].status, FX_OK, "rank %d: allreduce returned %d (%s): %s", i,
                     res[i].status, fx_strerror(res[i].status), res[i].err);
        cr_expect_eq(res[i].wrong, 0, "rank %d: %s", i, res[i].log);
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

/* ---- 7: invalid arguments are local errors and leave the communicator working ---- */

#define ARGS_COUNT 16

/* Records a call that did not return FX_ERR_INVALID_ARG. */
static void want_invalid(struct harness_child *c, fx_status got, const char *call)
{
    if (got != FX_ERR_INVALID_ARG) {
        c->res->wrong++;
        harness_logf(c, "%s returned %d (%s), want FX_ERR_INVALID_ARG", call, got,
                     fx_strerror(got));
    }
}

static void bad_allreduce_args(fx_comm_t comm, struct harness_child *c, float *s, float *r)
{
    want_invalid(c, fx_allreduce(NULL, r, ARGS_COUNT, FX_FLOAT32, FX_SUM, comm),
                 "fx_allreduce(sendbuf NULL)");
    want_invalid(c, fx_allreduce(s, NULL, ARGS_COUNT, FX_FLOAT32, FX_SUM, comm),
                 "fx_allreduce(recvbuf NULL)");
    want_invalid(c, fx_allreduce(s, r, SIZE_MAX / 2, FX_FLOAT32, FX_SUM, comm),
                 "fx_allreduce(count SIZE_MAX / 2)");
    want_invalid(c, fx_allreduce(s, r, ARGS_COUNT, (fx_datatype)99, FX_SUM, comm),
                 "fx_allreduce(datatype 99)");
    want_invalid(c, fx_allreduce(s, r, ARGS_COUNT, FX_FLOAT32, (fx_op)99, comm),
                 "fx_allreduce(op 99)");
    want_invalid(c, fx_allreduce(s, r, ARGS_COUNT, FX_FLOAT32, FX_SUM, NULL),
                 "fx_allreduce(comm NULL)");
}

/* A failed non-blocking call leaves its request NULL (fabricx.h), whatever it held before. */
static void want_no_request(struct harness_child *c, fx_request_t *req, const char *call)
{
    if (*req != NULL) {
        c->res->wrong++;
        harness_logf(c, "%s failed but left its request set", call);
    }
    *req = (fx_request_t)(uintptr_t)0x5eed;
}

static void bad_nonblocking_args(fx_comm_t comm, struct harness_child *c, float *s, float *r)
{
    fx_request_t req = (fx_request_t)(uintptr_t)0x5eed;

    want_invalid(c, fx_iallreduce(NULL, r, ARGS_COUNT, FX_FLOAT32, FX_SUM, comm, &req),
                 "fx_iallreduce(sendbuf NULL)");
    want_no_request(c, &req, "fx_iallreduce(sendbuf NULL)");
    want_invalid(c, fx_iallreduce(s, r, ARGS_COUNT, (fx_datatype)99, FX_SUM, comm, &req),
                 "fx_iallreduce(datatype 99)");
    want_no_request(c, &req, "fx_iallreduce(datatype 99)");
    want_invalid(c, fx_iallreduce(s, r, ARGS_COUNT, FX_FLOAT32, (fx_op)99, comm, &req),
                 "fx_iallreduce(op 99)");
    want_no_request(c, &req, "fx_iallreduce(op 99)");
    want_invalid(c, fx_iallreduce(s, r, ARGS_COUNT, FX_FLOAT32, FX_SUM, NULL, &req),
                 "fx_iallreduce(comm NULL)");
    want_no_request(c, &req, "fx_iallreduce(comm NULL)");
    want_invalid(c, fx_iallgather(s, NULL, ARGS_COUNT, FX_FLOAT32, comm, &req),
                 "fx_iallgather(recvbuf NULL)");
    want_no_request(c, &req, "fx_iallgather(recvbuf NULL)");
}

static void bad_allgather_args(fx_comm_t comm, struct harness_child *c, float *s, float *r)
{
    want_invalid(c, fx_allgather(NULL, r, ARGS_COUNT, FX_FLOAT32, comm),
                 "fx_allgather(sendbuf NULL)");
    want_invalid(c, fx_allgather(s, NULL, ARGS_COUNT, FX_FLOAT32, comm),
                 "fx_allgather(recvbuf NULL)");
    want_invalid(c, fx_allgather(s, r, SIZE_MAX / 2, FX_FLOAT32, comm),
                 "fx_allgather(sendcount SIZE_MAX / 2)");
    want_invalid(c, fx_allgather(s, r, ARGS_COUNT, (fx_datatype)99, comm),
                 "fx_allgather(datatype 99)");
    want_invalid(c, fx_allgather(s, r, ARGS_COUNT, FX_FLOAT32, NULL), "fx_allgather(comm NULL)");
}

static void bad_comm_args(struct harness_child *c)
{
    char text[64];
    int value;

    want_invalid(c, fx_comm_rank(NULL, &value), "fx_comm_rank(NULL)");
    want_invalid(c, fx_comm_size(NULL, &value), "fx_comm_size(NULL)");
    want_invalid(c, fx_comm_get_error(NULL, text, sizeof(text)), "fx_comm_get_error(NULL)");
    want_invalid(c, fx_comm_destroy(NULL), "fx_comm_destroy(NULL)");
}

static int invalid_then_valid(fx_comm_t comm, struct harness_child *c)
{
    float s[ARGS_COUNT * 8] = {0};
    float r[ARGS_COUNT * 8] = {0};

    bad_allreduce_args(comm, c, s, r);
    bad_nonblocking_args(comm, c, s, r);
    bad_allgather_args(comm, c, s, r);
    bad_comm_args(c);
    harness_set_status(c, comm, checked_allreduce(comm, c, 1021));
    return 0;
}

Test(faults, invalid_arguments_are_rejected_and_comm_still_works, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 3,
                                .deadline_ms   = 30000,
                                .fx_timeout_ms = 5000,
                                .sync_destroy  = 1,
                                .rank_fn       = invalid_then_valid};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "invalid arguments");

    for (int i = 0; i < 3; i++) {
        cr_expect_eq(res[i].init_status, FX_OK, "rank %d: init returned %d (%s): %s", i,
                     res[i].init_status, fx_strerror(res[i].init_status), res[i].err);
        cr_expect_eq(res[i].wrong, 0, "rank %d:\n%s", i, res[i].log);
        cr_expect_eq(res[i].status, FX_OK,
                     "rank %d: allreduce after the errors returned %d (%s): %s", i, res[i].status,
                     fx_strerror(res[i].status), res[i].err);
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

/* ---- 8: bad arguments to init and to the id's string form ---- */

static void expect_init_invalid(fx_unique_id id, int nranks, int rank)
{
    fx_comm_t sentinel = (fx_comm_t)(uintptr_t)0x5eed;
    fx_comm_t comm     = sentinel;
    double start       = harness_now_ms();
    fx_status status   = fx_comm_init_rank(&comm, nranks, id, rank);
    double took        = harness_now_ms() - start;

    cr_expect_eq(status, FX_ERR_INVALID_ARG,
                 "fx_comm_init_rank(nranks %d, rank %d) returned %d (%s), want "
                 "FX_ERR_INVALID_ARG: %s",
                 nranks, rank, status, fx_strerror(status), fx_last_error());
    cr_expect(took < 500, "fx_comm_init_rank(nranks %d, rank %d) took %.0f ms to reject", nranks,
              rank, took);
    cr_expect(comm == sentinel, "fx_comm_init_rank(nranks %d, rank %d) wrote comm on failure",
              nranks, rank);
}

Test(faults, init_rejects_bad_rank_and_size_at_once, .timeout = 30)
{
    fx_unique_id id;
    fx_status status;

    setenv("FX_TIMEOUT_MS", "5000", 1);
    harness_use_loopback();
    status = fx_get_unique_id(&id);
    cr_assert_eq(status, FX_OK, "fx_get_unique_id: %s: %s", fx_strerror(status), fx_last_error());
    expect_init_invalid(id, 4, 4);
    expect_init_invalid(id, 4, 7);
    expect_init_invalid(id, 4, -1);
    expect_init_invalid(id, 0, 0);
    expect_init_invalid(id, -3, 0);
}

static void expect_string_invalid(const char *s, const char *what)
{
    fx_unique_id id;
    fx_status status = fx_unique_id_from_string(s, &id);

    cr_expect_eq(status, FX_ERR_INVALID_ARG,
                 "fx_unique_id_from_string(%s) returned %d (%s), want FX_ERR_INVALID_ARG", what,
                 status, fx_strerror(status));
}

Test(faults, unique_id_string_rejects_garbage, .timeout = 30)
{
    char good[FX_UNIQUE_ID_STRLEN];
    char bad[FX_UNIQUE_ID_STRLEN];
    fx_unique_id id;
    fx_unique_id back;

    harness_use_loopback();
    cr_assert_eq(fx_get_unique_id(&id), FX_OK, "fx_get_unique_id: %s", fx_last_error());
    cr_assert_eq(fx_unique_id_to_string(&id, good, sizeof(good)), FX_OK);
    cr_expect_eq(fx_unique_id_to_string(&id, bad, 10), FX_ERR_INVALID_ARG,
                 "to_string into a 10-byte buffer must fail");
    cr_assert_eq(fx_unique_id_from_string(good, &back), FX_OK, "a good string must parse");
    cr_expect(memcmp(&id, &back, sizeof(id)) == 0, "the id does not survive its string form");
    expect_string_invalid("", "empty");
    expect_string_invalid("garbage", "\"garbage\"");
    expect_string_invalid(NULL, "NULL");
    memcpy(bad, good, sizeof(bad));
    bad[strlen(bad) / 2] = bad[strlen(bad) / 2] == 'A' ? 'B' : 'A';
    expect_string_invalid(bad, "one character changed");
    memcpy(bad, good, sizeof(bad));
    bad[strlen(bad) - 3] = '\0';
    expect_string_invalid(bad, "truncated");
    memset(bad, 'x', sizeof(bad) - 1);
    bad[sizeof(bad) - 1] = '\0';
    expect_string_invalid(bad, "all 'x'");
}

/* ---- 10: abort from another thread while a collective is blocked ---- */

#define ABORT_AFTER_MS 500

struct aborter {
    fx_comm_t comm;
    struct harness_child *c;
    fx_status status;
};

static void *aborter_main(void *arg)
{
    struct aborter *a = arg;

    harness_sleep_ms(ABORT_AFTER_MS);
    a->c->res->t_mark_ms = harness_now_ms();
    a->status            = fx_comm_abort(a->comm);
    return NULL;
}

/* Ranks 0..2 allreduce; rank 3 never calls it and waits until they are done. Rank 0 aborts
 * its communicator from a second thread. */
static int abort_blocked(fx_comm_t comm, struct harness_child *c)
{
    struct aborter a = {comm, c, FX_INPROGRESS};
    pthread_t thread;
    fx_status status;

    if (c->index == 3) {
        harness_sync_wait(c, 0, 3, 20000);
        c->res->status = FX_OK;
        return 0;
    }
    if (c->index == 0 && pthread_create(&thread, NULL, aborter_main, &a) != 0) {
        return 6;
    }
    status = checked_allreduce(comm, c, 1021);
    harness_set_status(c, comm, status);
    if (c->index == 0) {
        pthread_join(thread, NULL);
        c->res->aux = a.status;
    }
    harness_sync_add(c, 0, 1);
    return 0;
}

Test(faults, abort_from_another_thread_ends_blocked_collective, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {
        .nranks = 4, .deadline_ms = 30000, .fx_timeout_ms = 15000, .rank_fn = abort_blocked};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "abort");
    double aborted_at                = res[0].t_mark_ms;

    cr_expect_eq(res[0].aux, FX_OK, "fx_comm_abort returned %lld", res[0].aux);
    expect_status_by(&res[0], 0, FX_ERR_ABORTED, aborted_at, 1000);
    for (int i = 1; i < 3; i++) {
        expect_either_by(&res[i], i, FX_ERR_PEER_FAILED, FX_ERR_ABORTED, aborted_at, 2000);
    }
    for (int i = 0; i < 4; i++) {
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}

/* ---- 11: a zero wait on an operation that cannot complete yet ---- */

/* Records a status other than the one wanted. */
static void want_status(struct harness_child *c, fx_status got, fx_status want, const char *call)
{
    if (got != want) {
        c->res->wrong++;
        harness_logf(c, "%s returned %d (%s), want %d (%s)", call, got, fx_strerror(got), want,
                     fx_strerror(want));
    }
}

/* Rank 0 starts an iallreduce and polls it before rank 1 has joined the operation. */
static int zero_wait_then_complete(fx_comm_t comm, struct harness_child *c,
                                   const struct ref_case *k, float *send, float *recv)
{
    fx_request_t req = NULL;
    double start;

    want_status(c, fx_iallreduce(send, recv, k->count, k->dt, k->op, comm, &req), FX_OK,
                "fx_iallreduce");
    if (req == NULL) {
        return 1;
    }
    start = harness_now_ms();
    want_status(c, fx_wait(req, 0), FX_INPROGRESS, "fx_wait(req, 0)");
    if (harness_now_ms() - start > 250) {
        harness_logf(c, "fx_wait(req, 0) took %.0f ms", harness_now_ms() - start);
        c->res->wrong++;
    }
    want_status(c, fx_test(req), FX_INPROGRESS, "fx_test(req)");
    start = harness_now_ms();
    want_status(c, fx_wait(req, 200), FX_INPROGRESS, "fx_wait(req, 200)");
    c->res->aux = (long long)(harness_now_ms() - start);
    harness_sync_set(c, 0, 1);
    want_status(c, fx_wait(req, -1), FX_OK, "fx_wait(req, -1) after the peer joined");
    return 0;
}

static int zero_wait(fx_comm_t comm, struct harness_child *c)
{
    struct ref_case k = {FX_FLOAT32, FX_SUM, 1021, c->nranks, 42};
    float send[1021];
    float recv[1021];
    float expect[1021];
    uint64_t scratch[1021];
    char first[160];
    size_t wrong;

    ref_fill(&k, c->index, send);
    if (c->index == 0) {
        zero_wait_then_complete(comm, c, &k, send, recv);
    } else if (harness_sync_wait(c, 0, 1, 10000)) {
        want_status(c, fx_allreduce(send, recv, k.count, k.dt, k.op, comm), FX_OK, "fx_allreduce");
    }
    ref_expect(&k, expect, scratch);
    wrong = ref_compare(&k, recv, expect, first, sizeof(first));
    if (wrong != 0) {
        c->res->wrong += (long long)wrong;
        harness_logf(c, "result: %zu wrong, %s", wrong, first);
    }
    harness_set_status(c, comm, FX_OK);
    return 0;
}

Test(faults, zero_wait_on_pending_op_returns_inprogress, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 2,
                                .deadline_ms   = 30000,
                                .fx_timeout_ms = 10000,
                                .sync_destroy  = 1,
                                .rank_fn       = zero_wait};
    struct harness_run_info info;
    const struct harness_result *res = run_faults(&opts, &info, "zero wait");

    for (int i = 0; i < 2; i++) {
        cr_expect_eq(res[i].init_status, FX_OK, "rank %d: init returned %d (%s): %s", i,
                     res[i].init_status, fx_strerror(res[i].init_status), res[i].err);
        cr_expect_eq(res[i].wrong, 0, "rank %d:\n%s", i, res[i].log);
        expect_exit_clean(&res[i], i);
    }
    cr_expect(res[0].aux < 1000, "fx_wait(req, 200) returned after %lld ms", res[0].aux);
    harness_free(&info);
}

/* ---- 13: the verbs transport's faults, injected by the fake provider (tests/fakeverbs) ---- */

#define VERBS_FAULT_TIMEOUT_MS 5000
#define VERBS_FAULT_COUNT      (256u << 10) /* floats: 1 MiB per rank, the large-message path */

/* Only over FX_TRANSPORT=verbs, where FAKEVERBS_FAULT reaches the fake provider. */
static void verbs_only(void)
{
    const char *t = getenv("FX_TRANSPORT");

    if (t == NULL || strcmp(t, "verbs") != 0) {
        cr_skip_test("a fault of the fake verbs provider: runs in integration-faults-verbs");
    }
}

/* Rank 1 starts with FAKEVERBS_FAULT (the fake reads it at its first call), then every rank
 * runs allreduces until one fails; the status and the time of the first error are recorded. */
static int allreduce_with_verbs_fault(struct harness_child *c)
{
    float *send      = calloc(VERBS_FAULT_COUNT, sizeof(float));
    float *recv      = calloc(VERBS_FAULT_COUNT, sizeof(float));
    fx_comm_t comm   = NULL;
    fx_status status = FX_ERR_NO_MEMORY;
    double end       = harness_now_ms() + LOOP_MAX_MS;

    if (c->index == 1) {
        setenv("FAKEVERBS_FAULT", (const char *)c->arg, 1);
    }
    c->res->t_mark_ms = harness_now_ms();
    if (send != NULL && recv != NULL) {
        status              = fx_comm_init_rank(&comm, c->nranks, c->id, c->index);
        c->res->init_status = status;
    }
    for (int it = 0; it < 200 && status == FX_OK && harness_now_ms() < end; it++) {
        status      = fx_allreduce(send, recv, VERBS_FAULT_COUNT, FX_FLOAT32, FX_SUM, comm);
        c->res->ops = it + 1;
    }
    harness_set_status(c, comm, status);
    if (comm != NULL) {
        fx_comm_destroy(comm);
    }
    free(send);
    free(recv);
    return 0;
}

static const struct harness_result *run_verbs_fault(const char *fault,
                                                    struct harness_run_info *info)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = 40000,
                                .fx_timeout_ms = VERBS_FAULT_TIMEOUT_MS,
                                .raw_fn        = allreduce_with_verbs_fault,
                                .arg           = (void *)fault};

    return run_faults(&opts, info, fault);
}

/* Rank 1's 300th RDMA write carries a corrupted rkey: its completion is a remote access error,
 * which rank 1 reports naming the peer; every rank ends with an error, none hangs. */
Test(faults, verbs_bad_rkey_is_a_clear_error_naming_the_peer, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_run_info info;
    const struct harness_result *res;

    verbs_only();
    res = run_verbs_fault("bad_rkey:300", &info);
    for (int i = 0; i < 4; i++) {
        cr_expect(res[i].status != FX_OK && res[i].status != FX_INPROGRESS,
                  "process %d: %s after %lld allreduces: %s", i, fx_strerror(res[i].status),
                  res[i].ops, res[i].err);
        expect_within(&res[i], i, res[i].t_mark_ms, LOOP_MAX_MS);
        expect_exit_clean(&res[i], i);
    }
    expect_mentions(&res[1], 1, "remote access error");
    expect_mentions(&res[1], 1, "rank");
    harness_free(&info);
}

/* Rank 1's receives stop reaching its queues after 1500: writes to it meet RNR NAKs, retried
 * (rnr_retry 7) until the core's timeout, which names a rank on every process; none hangs. */
Test(faults, verbs_starved_receive_queue_ends_in_an_error_naming_a_rank, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_run_info info;
    const struct harness_result *res;

    verbs_only();
    res = run_verbs_fault("starve_recv:1500", &info);
    for (int i = 0; i < 4; i++) {
        cr_expect(res[i].status != FX_OK && res[i].status != FX_INPROGRESS,
                  "process %d: %s after %lld allreduces: %s", i, fx_strerror(res[i].status),
                  res[i].ops, res[i].err);
        expect_within(&res[i], i, res[i].t_mark_ms, LOOP_MAX_MS);
        expect_mentions(&res[i], i, "rank");
        expect_exit_clean(&res[i], i);
    }
    harness_free(&info);
}
