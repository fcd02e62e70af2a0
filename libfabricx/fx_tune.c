/*
 * The cost model's parameters for this communicator (fx_tune.h): a short measurement on the
 * ring at init, or what this job shape measured before (the per-host cache, fx_tune_cache.h),
 * agreed on by every rank, with FX_TUNE_* overrides.
 */
#include "fx_tune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "collectives/coll_kernels.h"
#include "fx_log.h"
#include "fx_route.h"
#include "fx_tune_cache.h"

#define SMALL_REPS  16
#define BIG_BYTES   (1u << 20)
#define BIG_REPS    4
#define GAMMA_ELEMS (1u << 18) /* fp32: 1 MiB per operand */
#define GAMMA_REPS  4

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds per exchange of `bytes` with the ring neighbours (send right, receive from the
 * left), the best of reps after one warm-up. */
static fx_status time_exchange(struct fx_comm *comm, uint8_t *buf, size_t bytes, int reps,
                               double *out)
{
    int n        = comm->nranks;
    int next     = comm->ring_order[(comm->ring_pos + 1) % n];
    int prev     = comm->ring_order[(comm->ring_pos + n - 1) % n];
    double best  = 1e30;
    fx_status st = FX_OK;

    for (int i = 0; i <= reps && st == FX_OK; i++) {
        double t0 = now_s();

        st = fx_sendrecv(buf, bytes, next, buf + bytes, bytes, prev, FX_UINT8, comm);
        if (i > 0 && now_s() - t0 < best) {
            best = now_s() - t0;
        }
    }
    *out = best;
    return st;
}

/* Seconds per byte of fp32 reduction: the best of a few 1 MiB sums. */
static double time_reduce(uint8_t *buf)
{
    float *a    = (float *)buf;
    float *b    = a + GAMMA_ELEMS;
    double best = 1e30;

    memset(buf, 0, 2 * GAMMA_ELEMS * sizeof(float));
    for (int i = 0; i <= GAMMA_REPS; i++) {
        double t0 = now_s();

        fx_coll_reduce(a, a, b, GAMMA_ELEMS, FX_FLOAT32, FX_SUM);
        if (i > 0 && now_s() - t0 < best) {
            best = now_s() - t0;
        }
    }
    return best / (GAMMA_ELEMS * sizeof(float));
}

/*
 * What the measurement depends on: every rank's host and the transports it offers, in ring
 * order (the routes follow from them), the settings that change the transports' speed, and
 * the reduction kernels.
 */
static uint64_t cache_key(const struct fx_comm *comm)
{
    int32_t shape[4] = {comm->nranks, (int32_t)comm->boot.info.chunk_bytes, comm->cfg.nsocks,
                        comm->cfg.tcp_zerocopy};
    const char *isa  = fx_coll_kernel_isa();
    uint64_t h       = fx_tune_hash(FX_TUNE_HASH_INIT, "fx-tune-v1", 10);

    h = fx_tune_hash(h, shape, sizeof(shape));
    h = fx_tune_hash(h, isa, strlen(isa));
    for (int pos = 0; pos < comm->nranks; pos++) {
        const struct fx_boot_entry *e = &comm->boot.table[comm->ring_order[pos]];

        h = fx_tune_hash(h, e->host, strnlen(e->host, sizeof(e->host)));
        h = fx_tune_hash(h, e->host_id, sizeof(e->host_id));
        for (int a = 0; a < e->naddrs; a++) {
            h = fx_tune_hash(h, e->addrs[a].tp, strnlen(e->addrs[a].tp, sizeof(e->addrs[a].tp)));
        }
    }
    return h;
}

/* The lowest rank of this host writes the host's cache. */
static bool host_leader(const struct fx_comm *comm)
{
    const struct fx_boot_entry *me = &comm->boot.table[comm->rank];

    for (int r = 0; r < comm->rank; r++) {
        if (fx_route_same_host(&comm->boot.table[r], me)) {
            return false;
        }
    }
    return true;
}

/*
 * Looks the job shape up in this host's cache; then every rank learns whether all of them found
 * it (v[0]: 1 when some rank did not) and takes the largest of the cached values. True when all
 * found it: v[1..4) then hold the job's parameters.
 */
static fx_status cache_agree(struct fx_comm *comm, const char *path, uint64_t key, double v[4])
{
    bool hit = path[0] != '\0' &&
               fx_tune_cache_lookup(path, key, (int64_t)time(NULL), FX_TUNE_CACHE_MAX_AGE_S, v + 1);

    v[0] = hit ? 0 : 1;
    if (!hit) {
        v[1] = v[2] = v[3] = 0;
    }
    return fx_allreduce(v, v, 4, FX_FLOAT64, FX_MAX, comm);
}

/* Measures the ring's latency and bandwidth and the reduction speed into v[0..3). */
static fx_status measure(struct fx_comm *comm, double v[3], char *err, size_t errlen)
{
    uint8_t *buf = NULL;
    double small = 0;
    double big   = 0;
    fx_status st = FX_OK;

    if (posix_memalign((void **)&buf, 4096, 2 * BIG_BYTES) != 0) {
        snprintf(err, errlen, "out of memory for the tuning measurement");
        return FX_ERR_NO_MEMORY;
    }
    if (comm->nranks > 1) {
        memset(buf, 0, 2 * BIG_BYTES);
        st = time_exchange(comm, buf, 8, SMALL_REPS, &small);
        if (st == FX_OK) {
            st = time_exchange(comm, buf, BIG_BYTES, BIG_REPS, &big);
        }
    }
    v[0] = small;
    v[1] = big > small ? (big - small) / BIG_BYTES : 0;
    v[2] = time_reduce(buf);
    free(buf);
    return st;
}

fx_status fx_tune_measure(struct fx_comm *comm, char *err, size_t errlen)
{
    struct fx_cost_params *p = &comm->tune;
    uint64_t key             = comm->nranks > 1 ? cache_key(comm) : 0;
    const char *from         = "measured";
    char path[1024]          = "";
    double c[4]              = {0};
    double v[3];
    fx_status st = FX_OK;

    if (comm->nranks > 1) {
        fx_tune_cache_path(comm->cfg.tune_cache, comm->boot.table[comm->rank].host, path,
                           sizeof(path));
        st = cache_agree(comm, path, key, c);
    }
    if (st == FX_OK && comm->nranks > 1 && c[0] == 0) {
        memcpy(v, c + 1, sizeof(v));
        from = "from the cache";
    } else if (st == FX_OK) {
        st = measure(comm, v, err, errlen);
        if (st == FX_ERR_NO_MEMORY) {
            return st;
        }
        /* Every rank takes the largest of each, so that all of them choose alike, by the
         * job's slowest link. */
        if (st == FX_OK && comm->nranks > 1) {
            st = fx_allreduce(v, v, 3, FX_FLOAT64, FX_MAX, comm);
        }
        if (st == FX_OK && path[0] != '\0' && host_leader(comm)) {
            char why[300];

            if (fx_tune_cache_store(path, key, (int64_t)time(NULL), FX_TUNE_CACHE_MAX_AGE_S, v, why,
                                    sizeof(why)) == FX_OK) {
                from = "measured and cached";
            } else {
                fx_info(FX_SUB_INIT, "cost model not cached: %s", why);
            }
        }
    }
    /* Overrides replace what was measured; the largest over the ranks again, in case only some
     * ranks set them. */
    if (comm->cfg.tune_latency_ns > 0) {
        v[0] = comm->cfg.tune_latency_ns * 1e-9;
    }
    if (comm->cfg.tune_link_mbps > 0) {
        v[1] = 1.0 / (comm->cfg.tune_link_mbps * 1e6);
    }
    if (comm->cfg.tune_reduce_mbps > 0) {
        v[2] = 1.0 / (comm->cfg.tune_reduce_mbps * 1e6);
    }
    if (st == FX_OK && comm->nranks > 1) {
        st = fx_allreduce(v, v, 3, FX_FLOAT64, FX_MAX, comm);
    }
    if (st != FX_OK) {
        fx_comm_get_error(comm, err, errlen);
        return st;
    }
    p->alpha_s          = v[0];
    p->beta_s_per_byte  = v[1];
    p->gamma_s_per_byte = v[2];
    fx_info(FX_SUB_INIT,
            "cost model (%s%s%s): latency %.1f us per message, %.2f GB/s per link, reduction "
            "%.2f GB/s",
            from, path[0] != '\0' ? ", " : "", path, p->alpha_s * 1e6,
            p->beta_s_per_byte > 0 ? 1e-9 / p->beta_s_per_byte : 0.0,
            p->gamma_s_per_byte > 0 ? 1e-9 / p->gamma_s_per_byte : 0.0);
    return FX_OK;
}
