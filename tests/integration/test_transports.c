/*
 * Which transport each pair of ranks uses, over real rank processes: shared memory between ranks
 * of one host, TCP between hosts (namespace hosts when LIBFABRICX_TEST_NETNS is set), or the one
 * FX_TRANSPORT forces; FX_SHM_DISABLE; two jobs on one host at once; and nothing left in
 * /dev/shm after a rank is killed; the cost model's per-host cache. Each rank logs its choice at
 * INFO ("transport shm to 1 of 3 peers", "cost model (from the cache, ...)"); the tests read
 * those logs.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define COUNT_BIG (1u << 20)
#define NJOBS     2
#define JOB_RANKS 3
#define JOB_ITERS 40

/* ------------------------------------------------------------------ helpers */

/* Fills element i of rank r's contribution; the sum over ranks 0..n-1 is known. */
static int32_t contrib(int r, size_t i, int salt)
{
    return (int32_t)((r + 1) * (int)(i % 1013) + salt);
}

static int32_t expected_sum(int n, size_t i, int salt)
{
    return (int32_t)(n * (n + 1) / 2 * (int)(i % 1013) + n * salt);
}

/* One checked all-reduce of count int32 elements; counts wrong elements into c->res->wrong. */
static fx_status checked_allreduce(fx_comm_t comm, struct harness_child *c, int rank, int nranks,
                                   size_t count, int salt)
{
    int32_t *send = calloc(count + 1, sizeof(int32_t));
    int32_t *recv = calloc(count + 1, sizeof(int32_t));
    fx_status status;

    if (send == NULL || recv == NULL) {
        free(send);
        free(recv);
        return FX_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < count; i++) {
        send[i] = contrib(rank, i, salt);
    }
    status = fx_allreduce(send, recv, count, FX_INT32, FX_SUM, comm);
    if (status == FX_OK) {
        for (size_t i = 0; i < count; i++) {
            if (recv[i] != expected_sum(nranks, i, salt)) {
                if (c->res->wrong++ == 0) {
                    harness_logf(c, "count %zu: element %zu is %d, expected %d", count, i, recv[i],
                                 expected_sum(nranks, i, salt));
                }
            }
        }
    }
    free(send);
    free(recv);
    return status;
}

static int allreduce_sizes(fx_comm_t comm, struct harness_child *c)
{
    static const size_t counts[] = {1, 1000, 65537, COUNT_BIG};
    fx_status status             = FX_OK;

    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]) && status == FX_OK; k++) {
        status = checked_allreduce(comm, c, c->index, c->nranks, counts[k], (int)k);
        c->res->ops++;
    }
    harness_set_status(c, comm, status);
    return 0;
}

/* Log file of process pid in this test's directory. */
static void log_path(char *buf, size_t len, pid_t pid)
{
    snprintf(buf, len, "/tmp/fx-test-transports-%d-%d.log", (int)getpid(), (int)pid);
}

/* Every rank logs at INFO to a file of its own, read back by expect_routes. */
static void log_to_files(void)
{
    char pattern[128];

    snprintf(pattern, sizeof(pattern), "/tmp/fx-test-transports-%d-%%p.log", (int)getpid());
    setenv("FX_DEBUG", "INFO", 1);
    setenv("FX_DEBUG_SUBSYS", "INIT", 1);
    setenv("FX_DEBUG_FILE", pattern, 1);
}

/* How many peers of rank r (of n) process i of a run should reach through each transport. */
struct routes {
    int shm;
    int tcp;
    int forced; /* another transport FX_TRANSPORT names (ucx) */
};

static struct routes expected_routes(int i, int n, const char *forced)
{
    struct routes want = {0, 0, 0};
    int hosts          = harness_netns_count();

    if (forced != NULL && forced[0] != '\0') {
        if (strcmp(forced, "shm") == 0) {
            want.shm = n - 1;
        } else if (strcmp(forced, "tcp") == 0) {
            want.tcp = n - 1;
        } else {
            want.forced = n - 1;
        }
        return want;
    }
    for (int j = 0; j < n; j++) {
        if (j != i) {
            bool same = hosts < 2 || j % hosts == i % hosts;

            want.shm += same;
            want.tcp += !same;
        }
    }
    return want;
}

/* Reads each process's log: the transports it reports match want(); removes the logs. */
static void expect_routes(const struct harness_run_info *info, int n, bool shm_disabled)
{
    const char *forced = getenv("FX_TRANSPORT");
    char path_self[160];

    for (int i = 0; i < n; i++) {
        struct routes want = expected_routes(i, n, forced);
        struct routes got  = {0, 0, 0};
        char path[160], line[512];
        FILE *f;

        if (shm_disabled && (forced == NULL || forced[0] == '\0')) {
            want.tcp += want.shm;
            want.shm = 0;
        }
        log_path(path, sizeof(path), info->shared->res[i].pid);
        f = fopen(path, "r");
        cr_expect(f != NULL, "rank %d wrote no log %s", i, path);
        if (f == NULL) {
            continue;
        }
        while (fgets(line, sizeof(line), f) != NULL) {
            const char *p = strstr(line, "INFO transport ");
            char name[16];
            int peers, of;

            if (p != NULL &&
                sscanf(p, "INFO transport %15s to %d of %d peers", name, &peers, &of) == 3) {
                cr_expect_eq(of, n - 1, "rank %d: %s", i, line);
                if (strcmp(name, "shm") == 0) {
                    got.shm = peers;
                } else if (strcmp(name, "tcp") == 0) {
                    got.tcp = peers;
                } else if (forced != NULL && strcmp(name, forced) == 0) {
                    got.forced = peers;
                }
            }
        }
        fclose(f);
        unlink(path);
        cr_expect(got.shm == want.shm && got.tcp == want.tcp && got.forced == want.forced,
                  "rank %d of %d: shm to %d, tcp to %d and FX_TRANSPORT's to %d peers, expected "
                  "%d, %d and %d (namespace hosts: %d, FX_TRANSPORT=%s)",
                  i, n, got.shm, got.tcp, got.forced, want.shm, want.tcp, want.forced,
                  harness_netns_count(), forced != NULL ? forced : "");
    }
    log_path(path_self, sizeof(path_self), getpid()); /* the test's own, if it logged */
    unlink(path_self);
}

static void expect_all_ok(const struct harness_run_info *info, int n, long long ops)
{
    for (int i = 0; i < n; i++) {
        const struct harness_result *res = &info->shared->res[i];

        cr_expect(res->exit_code == 0 && res->status == FX_OK && res->wrong == 0 && res->ops == ops,
                  "rank %d: exit %d, status %d (%s), %lld wrong, %lld of %lld operations: %s", i,
                  res->exit_code, res->status, res->err, res->wrong, res->ops, ops, res->log);
    }
}

/* ------------------------------------------------------------------ routes */

Test(transports, pairs_use_shared_memory_inside_a_host_and_tcp_between, .timeout = 120,
     .fini = harness_kill_all)
{
    for (int n = 2; n <= 5; n += 3) {
        struct harness_opts opts = {.nranks = n, .deadline_ms = 60000, .rank_fn = allreduce_sizes};
        struct harness_run_info info;

        log_to_files();
        cr_assert_eq(harness_run(&opts, &info), 0);
        harness_dump(&info, "routes");
        expect_all_ok(&info, n, 4);
        expect_routes(&info, n, false);
        harness_free(&info);
    }
}

Test(transports, shm_disable_keeps_every_pair_on_the_network, .timeout = 120,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks = 3, .deadline_ms = 60000, .rank_fn = allreduce_sizes};
    struct harness_run_info info;

    setenv("FX_SHM_DISABLE", "1", 1);
    log_to_files();
    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "FX_SHM_DISABLE=1");
    expect_all_ok(&info, 3, 4);
    expect_routes(&info, 3, true);
    harness_free(&info);
}

/* FX_TRANSPORT=shm on a job that spans namespace hosts: init fails on every rank, naming a rank
 * of the other host, instead of hanging on a connection that cannot exist. */
Test(transports, forced_shm_across_hosts_fails_naming_the_remote_rank, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks = 2, .deadline_ms = 30000, .rank_fn = allreduce_sizes};
    struct harness_run_info info;

    if (harness_netns_count() < 2) {
        cr_skip_test("needs two namespace hosts (LIBFABRICX_TEST_NETNS)");
    }
    setenv("FX_TRANSPORT", "shm", 1);
    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "FX_TRANSPORT=shm across hosts");
    for (int i = 0; i < 2; i++) {
        const struct harness_result *res = &info.shared->res[i];

        cr_expect_eq(res->init_status, FX_ERR_INVALID_ARG, "rank %d: init status %d (%s)", i,
                     res->init_status, res->err);
        cr_expect(strstr(res->err, "reaches only ranks of this host") != NULL &&
                      harness_names_rank(res->err, 1 - i),
                  "rank %d: the error must say why and name rank %d: %s", i, 1 - i, res->err);
        cr_expect(!res->killed, "rank %d hung until the harness killed it", i);
    }
    harness_free(&info);
}

/* ------------------------------------------------------------------ two jobs on one host */

struct two_jobs {
    fx_unique_id ids[NJOBS];
};

/* Process i is rank i % JOB_RANKS of job i / JOB_RANKS; each job reduces its own data. */
static int run_in_job(struct harness_child *c)
{
    const struct two_jobs *jobs = c->arg;
    int job                     = c->index / JOB_RANKS;
    int rank                    = c->index % JOB_RANKS;
    fx_status status;
    fx_comm_t comm;

    status              = fx_comm_init_rank(&comm, JOB_RANKS, jobs->ids[job], rank);
    c->res->init_status = status;
    if (status != FX_OK) {
        harness_set_status(c, NULL, status);
        return 0;
    }
    for (int it = 0; it < JOB_ITERS && status == FX_OK; it++) {
        /* Job-specific values: a message crossing into the other job would show. */
        status = checked_allreduce(comm, c, rank, JOB_RANKS, it % 2 ? COUNT_BIG : 4099,
                                   1000 * (job + 1) + it);
        c->res->ops++;
    }
    harness_set_status(c, comm, status);
    fx_comm_destroy(comm);
    return 0;
}

Test(transports, two_jobs_on_one_host_do_not_disturb_each_other, .timeout = 120,
     .fini = harness_kill_all)
{
    struct two_jobs jobs;
    struct harness_opts opts = {.nranks       = JOB_RANKS,
                                .nprocs       = NJOBS * JOB_RANKS,
                                .deadline_ms  = 90000,
                                .no_unique_id = 1,
                                .one_host     = 1,
                                .raw_fn       = run_in_job,
                                .arg          = &jobs};
    struct harness_run_info info;

    harness_use_loopback();
    for (int j = 0; j < NJOBS; j++) {
        cr_assert_eq(fx_get_unique_id(&jobs.ids[j]), FX_OK, "%s", fx_last_error());
    }
    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "two jobs");
    expect_all_ok(&info, NJOBS * JOB_RANKS, JOB_ITERS);
    harness_free(&info);
}

/* ------------------------------------------------------------------ the cost model's cache */

/* Lines of process i's log holding text; the log is removed when `drop`. */
static int log_lines(const struct harness_run_info *info, int i, const char *text, bool drop)
{
    char path[160], line[512];
    int n = 0;
    FILE *f;

    log_path(path, sizeof(path), info->shared->res[i].pid);
    if ((f = fopen(path, "r")) == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        n += strstr(line, text) != NULL;
    }
    fclose(f);
    if (drop) {
        unlink(path);
    }
    return n;
}

static int one_allreduce(fx_comm_t comm, struct harness_child *c)
{
    fx_status status = checked_allreduce(comm, c, c->index, c->nranks, 4099, 7);

    c->res->ops++;
    harness_set_status(c, comm, status);
    return 0;
}

/* What a 3-rank job's ranks said of their cost model (cost model (<source>...)). */
struct model_sources {
    int cached;   /* measured and cached */
    int hit;      /* from the cache */
    int measured; /* measured, not cached (not this host's writer, or no cache) */
};

static struct model_sources cache_run(void)
{
    struct harness_opts opts  = {.nranks       = 3,
                                 .deadline_ms  = 60000,
                                 .one_host     = 1,
                                 .sync_destroy = 1,
                                 .rank_fn      = one_allreduce};
    struct model_sources seen = {0, 0, 0};
    struct harness_run_info info;
    char self[160];

    cr_assert_eq(harness_run(&opts, &info), 0);
    expect_all_ok(&info, 3, 1);
    for (int i = 0; i < 3; i++) {
        seen.cached += log_lines(&info, i, "cost model (measured and cached, ", false);
        seen.hit += log_lines(&info, i, "cost model (from the cache, ", false);
        seen.measured += log_lines(&info, i, "cost model (measured, ", false) +
                         log_lines(&info, i, "cost model (measured)", true);
    }
    harness_free(&info);
    log_path(self, sizeof(self), getpid());
    unlink(self);
    return seen;
}

/* The first job measures and the host's lowest rank stores the result; the next job of the same
 * shape takes it from the file on every rank; FX_TUNE_CACHE=none measures again. */
Test(transports, cost_model_is_measured_once_then_taken_from_the_host_cache, .timeout = 120,
     .fini = harness_kill_all)
{
    char dir[64] = "/tmp/fx-test-tune-XXXXXX";
    char cmd[96];
    struct model_sources got;
    struct dirent *e;
    int files = 0;
    DIR *d;

    cr_assert_not_null(mkdtemp(dir));
    setenv("FX_TUNE_CACHE", dir, 1);
    log_to_files();
    got = cache_run();
    cr_expect(got.cached == 1 && got.measured == 2 && got.hit == 0,
              "first job: %d ranks measured and cached, %d measured, %d from the cache; want 1, "
              "2, 0",
              got.cached, got.measured, got.hit);
    if ((d = opendir(dir)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            files += strncmp(e->d_name, "tune-", 5) == 0;
        }
        closedir(d);
    }
    cr_expect_eq(files, 1, "one cache file for the host in %s", dir);
    got = cache_run();
    cr_expect(got.hit == 3 && got.cached == 0 && got.measured == 0,
              "second job: %d ranks from the cache, %d measured; want 3, 0", got.hit,
              got.cached + got.measured);
    setenv("FX_TUNE_CACHE", "none", 1);
    got = cache_run();
    cr_expect(got.measured == 3 && got.hit == 0 && got.cached == 0,
              "FX_TUNE_CACHE=none: %d ranks measured, %d used the cache; want 3, 0", got.measured,
              got.hit + got.cached);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* ------------------------------------------------------------------ placement */

/* Accelerators given in reverse: rank r takes accelerator 3 - r of the recorded JURECA-DC node
 * (4 A100s in PCI order 03, 44, 84, c4 on NUMA nodes 3, 1, 7, 5, each with its HDR HCA mlx5_k
 * under the same switch). */
static int placed_rank(struct harness_child *c)
{
    char dev[16];
    fx_status status;
    fx_comm_t comm;

    snprintf(dev, sizeof(dev), "%d", 3 - c->index);
    setenv("FX_DEVICE", dev, 1);
    status              = fx_comm_init_rank(&comm, 4, c->id, c->index);
    c->res->init_status = status;
    if (status != FX_OK) {
        harness_set_status(c, NULL, status);
        return 0;
    }
    status = checked_allreduce(comm, c, c->index, 4, 65537, 3);
    c->res->ops++;
    harness_set_status(c, comm, status);
    fx_comm_destroy(comm);
    return 0;
}

/* Lines of process i's log holding text, copied (the first) to out. */
static int log_find(const struct harness_run_info *info, int i, const char *text, char *out,
                    size_t len)
{
    char path[160], line[512];
    int n = 0;
    FILE *f;

    log_path(path, sizeof(path), info->shared->res[i].pid);
    if ((f = fopen(path, "r")) == NULL) {
        return 0;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, text) != NULL && n++ == 0 && out != NULL) {
            snprintf(out, len, "%s", line);
        }
    }
    fclose(f);
    return n;
}

/* Each rank finds its accelerator and the HCA under its switch; the bootstrap carries every
 * rank's place, so rank 0 lists the host's NICs and accelerators, and the ring follows PCI
 * locality (NUMA node, then bus id) instead of rank order. */
Test(transports, accelerators_choose_their_nic_and_order_the_ring, .timeout = 60,
     .fini = harness_kill_all)
{
    static const char *hca[4] = {"mlx5_3", "mlx5_2", "mlx5_1", "mlx5_0"};
    static const char *gpu[4] = {"0000:c4:00.0", "0000:84:00.0", "0000:44:00.0", "0000:03:00.0"};
    const char *src           = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    struct harness_opts opts  = {
         .nranks = 4, .deadline_ms = 30000, .one_host = 1, .raw_fn = placed_rank};
    struct harness_run_info info;
    char topo[1024], want[160], line[512] = "";

    cr_assert_not_null(src, "LIBFABRICX_TEST_SOURCE_DIR not set (run through meson test)");
    snprintf(topo, sizeof(topo), "%s/tests/data/topologies/topo.jrc0323.xml", src);
    setenv("FX_TOPO_FILE", topo, 1);
    log_to_files();
    cr_assert_eq(harness_run(&opts, &info), 0);
    expect_all_ok(&info, 4, 1);
    for (int i = 0; i < 4; i++) {
        snprintf(want, sizeof(want), "accelerator %s (FX_DEVICE=%d), nearest NIC %s (PIX)", gpu[i],
                 3 - i, hca[i]);
        cr_expect_eq(log_find(&info, i, want, NULL, 0), 1, "rank %d does not log '%s'", i, want);
    }
    /* Keys (NUMA node, bus): rank 2 (1, 44), rank 3 (3, 03), rank 0 (5, c4), rank 1 (7, 84). */
    cr_expect_eq(log_find(&info, 0, "ring order", line, sizeof(line)), 1);
    cr_expect(strstr(line, ": 2 3 0 1") != NULL, "ring order: %s", line);
    cr_expect_eq(log_find(&info, 0,
                          "NICs used: mlx5_3,mlx5_2,mlx5_1,mlx5_0; accelerators: "
                          "0000:c4:00.0,0000:84:00.0,0000:44:00.0,0000:03:00.0",
                          line, sizeof(line)),
                 1, "rank 0's host summary: %s", line);
    for (int i = 0; i < 4; i++) {
        log_lines(&info, i, "", true); /* removes the log */
    }
    harness_free(&info);
    unsetenv("FX_TOPO_FILE");
}

/* ------------------------------------------------------------------ nothing left behind */

static int count_dev_shm(void)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    int n = 0;

    if (d == NULL) {
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n;
}

/* Rank 1 kills itself in the middle of a large all-reduce; the others get an error. */
static int die_midway(fx_comm_t comm, struct harness_child *c)
{
    fx_status status = FX_OK;

    for (int it = 0; it < 200 && status == FX_OK; it++) {
        if (c->index == 1 && it == 5) {
            kill(getpid(), SIGKILL);
        }
        status = checked_allreduce(comm, c, c->index, c->nranks, COUNT_BIG, it);
        c->res->ops++;
    }
    harness_set_status(c, comm, status);
    return 0;
}

Test(transports, a_killed_rank_leaves_nothing_in_dev_shm, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {
        .nranks = 4, .deadline_ms = 30000, .fx_timeout_ms = 10000, .rank_fn = die_midway};
    struct harness_run_info info;
    int before = count_dev_shm();

    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "rank 1 killed");
    cr_expect_eq(info.shared->res[1].term_signal, SIGKILL);
    for (int i = 0; i < 4; i++) {
        if (i != 1) {
            cr_expect_eq(info.shared->res[i].status, FX_ERR_PEER_FAILED, "rank %d: %d (%s)", i,
                         info.shared->res[i].status, info.shared->res[i].err);
        }
    }
    cr_expect_eq(count_dev_shm(), before, "/dev/shm held %d entries before the job, %d after",
                 before, count_dev_shm());
    harness_free(&info);
}

/* ------------------------------------------------------------------ link statistics */

#define STATS_COUNT (4 * 65536) /* floats: 1 MiB, a multiple of 4 ranks */
#define STATS_REPS  3

/* Checks the counters after STATS_REPS ring all-reduces: exactly one peer received all this
 * rank sent (its ring successor) and one sent all it received, 2(n-1)/n of the buffer per
 * operation; every other peer is untouched. Returns the number of problems, logged. */
static long long check_counters(struct harness_child *c, const fx_link_stats *s, int n, bool on)
{
    uint64_t want = on ? (uint64_t)STATS_REPS * 2 * (uint64_t)(n - 1) * STATS_COUNT * 4 / n : 0;
    uint64_t sent = 0, recvd = 0;
    int nsend = 0, nrecv = 0;
    long long bad = 0;

    for (int k = 0; k < n - 1; k++) {
        int peer = k < c->index ? k : k + 1;

        if (s[k].peer != peer || s[k].host[0] == '\0' ||
            (strcmp(s[k].transport, "tcp") != 0 && strcmp(s[k].transport, "shm") != 0 &&
             strcmp(s[k].transport, "ucx") != 0 && strcmp(s[k].transport, "verbs") != 0)) {
            harness_logf(c, "entry %d: peer %d (want %d), host '%s', transport '%s'; ", k,
                         s[k].peer, peer, s[k].host, s[k].transport);
            bad++;
        }
        if ((s[k].bytes_sent > 0) != (s[k].messages_sent > 0) ||
            (s[k].bytes_sent > 0) != (s[k].send_blocked_ns > 0) ||
            (s[k].bytes_received > 0) != (s[k].messages_received > 0) ||
            (s[k].bytes_received > 0) != (s[k].recv_blocked_ns > 0)) {
            harness_logf(c, "peer %d: bytes, messages and blocked times disagree; ", peer);
            bad++;
        }
        sent += s[k].bytes_sent;
        recvd += s[k].bytes_received;
        nsend += s[k].bytes_sent > 0;
        nrecv += s[k].bytes_received > 0;
    }
    if (sent != want || recvd != want || nsend != (on ? 1 : 0) || nrecv != (on ? 1 : 0)) {
        harness_logf(c, "sent %llu to %d peers, received %llu from %d, want %llu each way; ",
                     (unsigned long long)sent, nsend, (unsigned long long)recvd, nrecv,
                     (unsigned long long)want);
        bad++;
    }
    return bad;
}

static int stats_rank(fx_comm_t comm, struct harness_child *c)
{
    int n              = c->nranks;
    size_t big         = 4u << 20; /* floats: 16 MiB, for the rates */
    float *buf         = calloc(big, sizeof(float));
    fx_link_stats s[8] = {0};
    bool on            = getenv("FX_LINK_STATS") == NULL || strcmp(getenv("FX_LINK_STATS"), "0");
    fx_status status   = buf == NULL ? FX_ERR_NO_MEMORY : FX_OK;
    int nlinks         = -1;
    double until;

    for (int r = 0; r < STATS_REPS && status == FX_OK; r++, c->res->ops++) {
        status = fx_allreduce(buf, buf, STATS_COUNT, FX_FLOAT32, FX_SUM, comm);
    }
    if (status == FX_OK) {
        status = fx_comm_stats(comm, s, 8, &nlinks);
    }
    if (status == FX_OK) {
        c->res->wrong += nlinks != n - 1;
        c->res->wrong += check_counters(c, s, n, on);
    }
    /* Bad arguments. */
    if (fx_comm_stats(NULL, s, 8, &nlinks) != FX_ERR_INVALID_ARG ||
        fx_comm_stats(comm, NULL, 1, &nlinks) != FX_ERR_INVALID_ARG ||
        fx_comm_stats(comm, s, -1, &nlinks) != FX_ERR_INVALID_ARG ||
        fx_comm_stats(comm, s, 8, NULL) != FX_ERR_INVALID_ARG) {
        harness_logf(c, "a bad argument was accepted; ");
        c->res->wrong++;
    }
    nlinks = -1;
    if (fx_comm_stats(comm, NULL, 0, &nlinks) != FX_OK || nlinks != n - 1) {
        harness_logf(c, "max 0: nlinks %d; ", nlinks);
        c->res->wrong++;
    }
    /* Rates: a second or more of traffic, until every rank sees a rate on each active link. */
    until = harness_now_ms() + 10000;
    for (int more = 1; more && status == FX_OK;) {
        float go;

        status = fx_allreduce(buf, buf, big, FX_FLOAT32, FX_SUM, comm);
        if (status == FX_OK) {
            status = fx_comm_stats(comm, s, 8, &nlinks);
        }
        more = 0;
        for (int k = 0; k < n - 1 && on; k++) {
            more |= s[k].bytes_sent > 0 && !(s[k].send_gbps > 0);
            more |= s[k].bytes_received > 0 && !(s[k].recv_gbps > 0);
        }
        go = (float)(more && harness_now_ms() < until); /* until every rank has its rates */
        if (status == FX_OK) {
            status = fx_allreduce(&go, &go, 1, FX_FLOAT32, FX_MAX, comm);
        }
        more = go > 0;
    }
    for (int k = 0; k < n - 1 && status == FX_OK; k++) {
        bool tcp = strcmp(s[k].transport, "tcp") == 0;

        if (on && ((s[k].bytes_sent > 0 && !(s[k].send_gbps > 0)) ||
                   (s[k].bytes_received > 0 && !(s[k].recv_gbps > 0)) ||
                   (tcp && s[k].bytes_sent > 0 && s[k].wire_busy_ns == 0))) {
            harness_logf(c,
                         "peer %d (%s): no rate after 10 s: send %.3f, recv %.3f Gbit/s, "
                         "wire busy %llu ns; ",
                         s[k].peer, s[k].transport, s[k].send_gbps, s[k].recv_gbps,
                         (unsigned long long)s[k].wire_busy_ns);
            c->res->wrong++;
        }
        if (!on && (s[k].bytes_sent || s[k].bytes_received || s[k].send_gbps > 0 ||
                    s[k].recv_gbps > 0 || s[k].wire_busy_ns)) {
            harness_logf(c, "FX_LINK_STATS=0 but peer %d has counts; ", s[k].peer);
            c->res->wrong++;
        }
    }
    free(buf);
    harness_set_status(c, comm, status);
    return 0;
}

Test(transports, link_statistics_count_each_peer_and_measure_rates, .timeout = 120,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks = 4, .deadline_ms = 90000, .rank_fn = stats_rank};
    struct harness_run_info info;

    setenv("FX_ALGO", "allreduce:ring", 1); /* the counts below are the ring's */
    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "link statistics");
    for (int i = 0; i < 4; i++) {
        const struct harness_result *res = &info.shared->res[i];

        cr_expect(res->exit_code == 0 && res->status == FX_OK && res->wrong == 0,
                  "rank %d: exit %d, status %d (%s), %lld problems: %s", i, res->exit_code,
                  res->status, res->err, res->wrong, res->log);
    }
    harness_free(&info);
}

Test(transports, link_statistics_off_count_nothing, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks = 3, .deadline_ms = 50000, .rank_fn = stats_rank};
    struct harness_run_info info;

    setenv("FX_LINK_STATS", "0", 1);
    cr_assert_eq(harness_run(&opts, &info), 0);
    harness_dump(&info, "FX_LINK_STATS=0");
    for (int i = 0; i < 3; i++) {
        const struct harness_result *res = &info.shared->res[i];

        cr_expect(res->exit_code == 0 && res->status == FX_OK && res->wrong == 0,
                  "rank %d: exit %d, status %d (%s), %lld problems: %s", i, res->exit_code,
                  res->status, res->err, res->wrong, res->log);
    }
    harness_free(&info);
}
