/*
 * The cost model's parameters for this communicator (fx_tune.h): a short measurement on the
 * ring at init, agreed on by every rank, with FX_TUNE_* overrides.
 */
#include "fx_tune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "collectives/coll_kernels.h"
#include "fx_log.h"

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

fx_status fx_tune_measure(struct fx_comm *comm, char *err, size_t errlen)
{
    struct fx_cost_params *p = &comm->tune;
    uint8_t *buf             = NULL;
    double small             = 0;
    double big               = 0;
    double v[3];
    fx_status st;

    if (posix_memalign((void **)&buf, 4096, 2 * BIG_BYTES) != 0) {
        snprintf(err, errlen, "out of memory for the tuning measurement");
        return FX_ERR_NO_MEMORY;
    }
    st = FX_OK;
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
    /* Overrides replace what was measured; then every rank takes the largest of each, so that
     * all of them choose alike, by the job's slowest link. */
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
            "cost model: latency %.1f us per message, %.2f GB/s per link, reduction %.2f GB/s",
            p->alpha_s * 1e6, p->beta_s_per_byte > 0 ? 1e-9 / p->beta_s_per_byte : 0.0,
            p->gamma_s_per_byte > 0 ? 1e-9 / p->gamma_s_per_byte : 0.0);
    return FX_OK;
}
