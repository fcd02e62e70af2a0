/*
 * Alpha-beta-gamma cost model (coll_cost.h). Byte counts follow the plans exactly: buffers are
 * cut into segments or blocks the way the builders cut them (the longer ones first), so the
 * busiest rank's bytes are computed, not approximated, for the algorithms with plans here.
 */
#include "coll_cost.h"

#include <math.h>

#include "coll_algo_inl.h"
#include "coll_algos.h"

struct shape {
    int n;
    size_t count;
    uint64_t es;
    uint64_t chunk; /* bytes per chunk (whole elements) */
};

static fx_status cost_check(const struct fx_cost_params *p, int nranks, size_t count,
                            size_t elem_size, size_t factor, struct fx_cost *out)
{
    if (p == NULL || out == NULL || nranks < 1 || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (!isfinite(p->alpha_s) || !isfinite(p->beta_s_per_byte) || !isfinite(p->gamma_s_per_byte) ||
        p->alpha_s < 0 || p->beta_s_per_byte < 0 || p->gamma_s_per_byte < 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (count > SIZE_MAX / elem_size / factor) {
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}

static struct shape shape_of(int nranks, size_t count, size_t elem_size, size_t chunk_bytes)
{
    return (struct shape){.n     = nranks,
                          .count = count,
                          .es    = elem_size,
                          .chunk = fx_build_chunk_elems(chunk_bytes, elem_size) * elem_size};
}

/* Writes a step-by-step algorithm's cost. */
static fx_status cost_flat(const struct fx_cost_params *p, uint32_t steps, uint64_t bytes,
                           uint64_t reduced, struct fx_cost *out)
{
    *out = (struct fx_cost){.steps         = steps,
                            .bytes         = bytes,
                            .reduced_bytes = reduced,
                            .time_s = steps * p->alpha_s + (double)bytes * p->beta_s_per_byte +
                                      (double)reduced * p->gamma_s_per_byte};
    return FX_OK;
}

/* A pipeline of `steps` stages streaming `len` bytes in chunks of `chunk` bytes. */
static fx_status cost_pipelined(const struct fx_cost_params *p, uint32_t steps, uint64_t bytes,
                                uint64_t reduced, uint64_t len, uint64_t chunk, struct fx_cost *out)
{
    uint64_t c = chunk < len ? chunk : len;
    uint64_t k = len ? (len + chunk - 1) / chunk : 0;
    double fill;

    if (steps == 0 || k == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    fill = (double)((steps - 1) * c);
    *out = (struct fx_cost){
        .steps         = steps,
        .bytes         = bytes,
        .reduced_bytes = reduced,
        .time_s        = (double)(steps + k - 1) * p->alpha_s +
                  ((double)bytes + fill) * p->beta_s_per_byte +
                  (reduced ? (double)reduced + fill : 0.0) * p->gamma_s_per_byte,
    };
    return FX_OK;
}

static uint64_t seg_bytes(const struct shape *s, int parts, int k)
{
    return fx_algo_block_len(s->count, parts, ((k % parts) + parts) % parts) * s->es;
}

fx_status fx_cost_ring_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    struct shape s;
    uint64_t bytes   = 0;
    uint64_t reduced = 0;

    if (status != FX_OK) {
        return status;
    }
    s = shape_of(nranks, count, elem_size, chunk_bytes);
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    for (int r = 0; r < nranks; r++) {
        uint64_t all  = 2 * (uint64_t)count * s.es;
        uint64_t sent = all - seg_bytes(&s, nranks, r + 1) - seg_bytes(&s, nranks, r + 2);
        uint64_t red  = (uint64_t)count * s.es - seg_bytes(&s, nranks, r);

        bytes   = sent > bytes ? sent : bytes;
        reduced = red > reduced ? red : reduced;
    }
    return cost_flat(p, 2 * (uint32_t)(nranks - 1), bytes, reduced, out);
}

fx_status fx_cost_pair_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    uint64_t bytes   = (uint64_t)count * elem_size;

    (void)chunk_bytes;
    if (status != FX_OK) {
        return status;
    }
    if (nranks != 2) {
        return FX_ERR_UNSUPPORTED;
    }
    return count == 0 ? cost_flat(p, 0, 0, 0, out) : cost_flat(p, 1, bytes, bytes, out);
}

fx_status fx_cost_tree_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    struct shape s;
    uint64_t half[2] = {(uint64_t)(count - count / 2) * elem_size,
                        (uint64_t)(count / 2) * elem_size};
    uint64_t bytes   = 0;
    uint64_t reduced = 0;

    if (status != FX_OK) {
        return status;
    }
    s = shape_of(nranks, count, elem_size, chunk_bytes);
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    for (int r = 0; r < nranks; r++) {
        uint64_t sent = 0;
        uint64_t red  = 0;

        for (int tree = 0; tree < 2; tree++) {
            int parent;
            int kids[2];
            uint64_t nkids;

            fx_coll_tree_links(nranks, r, tree, &parent, kids);
            nkids = (uint64_t)(kids[0] >= 0) + (uint64_t)(kids[1] >= 0);
            sent += half[tree] * (nkids + (parent >= 0 ? 1 : 0));
            red += half[tree] * nkids;
        }
        bytes   = sent > bytes ? sent : bytes;
        reduced = red > reduced ? red : reduced;
    }
    return cost_pipelined(p, 2 * (uint32_t)fx_algo_log2_ceil(nranks), bytes, reduced, half[0],
                          s.chunk, out);
}

fx_status fx_cost_rd_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    int pw           = fx_algo_pow2_floor(nranks);
    uint32_t steps   = (uint32_t)fx_algo_log2_ceil(pw) + (nranks > pw ? 2u : 0u);
    uint64_t full    = (uint64_t)count * elem_size;

    (void)chunk_bytes;
    if (status != FX_OK) {
        return status;
    }
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    /* A folding rank sends each exchange and the result back; it also reduces the fold. */
    return cost_flat(p, steps, full * (steps - (nranks > pw ? 1u : 0u)),
                     full * (steps - (nranks > pw ? 1u : 0u)), out);
}

/* Bytes virtual rank v sends (halving and doubling) and reduces in Rabenseifner. */
static void rab_rank(const struct shape *s, int pw, int v, uint64_t *sent, uint64_t *red)
{
    *sent = 0;
    *red  = 0;
    for (int mask = pw / 2; mask >= 1; mask /= 2) {
        int mine = v & ~(mask - 1);
        int his  = (v ^ mask) & ~(mask - 1);

        for (int b = 0; b < mask; b++) {
            *sent += seg_bytes(s, pw, his + b) + seg_bytes(s, pw, mine + b);
            *red += seg_bytes(s, pw, mine + b);
        }
    }
}

fx_status fx_cost_rabenseifner_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                         size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    struct shape s;
    int pw           = fx_algo_pow2_floor(nranks);
    int rem          = nranks - pw;
    uint64_t full    = (uint64_t)count * elem_size;
    uint64_t bytes   = rem > 0 ? full : 0;
    uint64_t reduced = 0;

    if (status != FX_OK) {
        return status;
    }
    s = shape_of(nranks, count, elem_size, chunk_bytes);
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    for (int v = 0; v < pw; v++) {
        uint64_t sent;
        uint64_t red;

        rab_rank(&s, pw, v, &sent, &red);
        sent += v < rem ? full : 0;
        red += v < rem ? full : 0;
        bytes   = sent > bytes ? sent : bytes;
        reduced = red > reduced ? red : reduced;
    }
    return cost_flat(p, 2 * (uint32_t)fx_algo_log2_ceil(pw) + (rem > 0 ? 2u : 0u), bytes, reduced,
                     out);
}

/* All-gathers: every rank sends the n - 1 other blocks' worth in all. */
static fx_status cost_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                                size_t elem_size, uint32_t steps, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, (size_t)nranks, out);

    if (status != FX_OK) {
        return status;
    }
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    return cost_flat(p, steps, (uint64_t)(nranks - 1) * count * elem_size, 0, out);
}

fx_status fx_cost_ring_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    return cost_allgather(p, nranks, count, elem_size, (uint32_t)(nranks - 1), out);
}

fx_status fx_cost_rd_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    if (nranks > 0 && (nranks & (nranks - 1)) != 0 && p != NULL && out != NULL && elem_size != 0) {
        return FX_ERR_UNSUPPORTED;
    }
    return cost_allgather(p, nranks, count, elem_size,
                          (uint32_t)fx_algo_log2_ceil(nranks > 0 ? nranks : 1), out);
}

fx_status fx_cost_bruck_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    return cost_allgather(p, nranks, count, elem_size,
                          (uint32_t)fx_algo_log2_ceil(nranks > 0 ? nranks : 1), out);
}

fx_status fx_cost_ring_reduce_scatter(const struct fx_cost_params *p, int nranks, size_t count,
                                      size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, (size_t)nranks, out);
    uint64_t bytes   = (uint64_t)(nranks - 1) * count * elem_size;

    (void)chunk_bytes;
    if (status != FX_OK) {
        return status;
    }
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    return cost_flat(p, (uint32_t)(nranks - 1), bytes, bytes, out);
}

/* Chain broadcast or reduce: n - 1 stages, each rank but one end forwarding the buffer. */
static fx_status cost_chain(const struct fx_cost_params *p, int nranks, size_t count,
                            size_t elem_size, size_t chunk_bytes, bool reduce, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    struct shape s;
    uint64_t full = (uint64_t)count * elem_size;

    if (status != FX_OK) {
        return status;
    }
    s = shape_of(nranks, count, elem_size, chunk_bytes);
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    return cost_pipelined(p, (uint32_t)(nranks - 1), full, reduce ? full : 0, full, s.chunk, out);
}

fx_status fx_cost_chain_broadcast(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    return cost_chain(p, nranks, count, elem_size, chunk_bytes, false, out);
}

fx_status fx_cost_chain_reduce(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    return cost_chain(p, nranks, count, elem_size, chunk_bytes, true, out);
}

/* Binomial tree: ceil(log2 n) rounds; the root sends (broadcast) or receives and reduces
 * (reduce) the whole buffer in each. */
static fx_status cost_binomial(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, bool reduce, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, count, elem_size, 1, out);
    uint64_t full    = (uint64_t)count * elem_size;
    uint32_t rounds  = (uint32_t)fx_algo_log2_ceil(nranks > 0 ? nranks : 1);

    if (status != FX_OK) {
        return status;
    }
    if (nranks == 1 || count == 0) {
        return cost_flat(p, 0, 0, 0, out);
    }
    return reduce ? cost_flat(p, rounds, full, rounds * full, out)
                  : cost_flat(p, rounds, rounds * full, 0, out);
}

fx_status fx_cost_binomial_broadcast(const struct fx_cost_params *p, int nranks, size_t count,
                                     size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    return cost_binomial(p, nranks, count, elem_size, false, out);
}

fx_status fx_cost_binomial_reduce(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    return cost_binomial(p, nranks, count, elem_size, true, out);
}

fx_status fx_cost_pairwise_alltoall(const struct fx_cost_params *p, int nranks, size_t count,
                                    size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    (void)chunk_bytes;
    return cost_allgather(p, nranks, count, elem_size, (uint32_t)(nranks - 1), out);
}

fx_status fx_cost_dissemination_barrier(const struct fx_cost_params *p, int nranks, size_t count,
                                        size_t elem_size, size_t chunk_bytes, struct fx_cost *out)
{
    fx_status status = cost_check(p, nranks, 0, elem_size ? elem_size : 1, 1, out);

    (void)count;
    (void)chunk_bytes;
    if (status != FX_OK) {
        return status;
    }
    return cost_flat(p, (uint32_t)fx_algo_log2_ceil(nranks), 0, 0, out);
}
