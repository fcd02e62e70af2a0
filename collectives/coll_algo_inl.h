/*
 * Helpers shared by the plan builders of coll_tree.c, coll_rd.c and coll_gather.c: argument
 * checks, chunk sizes, rank arithmetic for powers of two, and op emission.
 */
#ifndef FX_COLL_ALGO_INL_H
#define FX_COLL_ALGO_INL_H

#include <stddef.h>
#include <stdint.h>

#include "coll_plan.h"

#define FX_ALGO_DEFAULT_CHUNK_BYTES (1u << 20)

/* Common argument checks; factor multiplies count for the receive buffer's size. */
static inline fx_status fx_algo_check(const struct fx_plan *plan, int nranks, int rank,
                                      size_t count, size_t elem_size, size_t factor)
{
    if (plan == NULL || nranks < 1 || rank < 0 || rank >= nranks || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (count > SIZE_MAX / elem_size / factor) {
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}

/* Empties the plan and records the call's shape. */
static inline void fx_algo_begin(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size)
{
    fx_plan_reset(plan);
    plan->nranks    = nranks;
    plan->rank      = rank;
    plan->count     = count;
    plan->elem_size = elem_size;
}

/* Elements per chunk: chunk_bytes (0: the default) in whole elements, at least one. */
static inline size_t fx_algo_chunk_elems(size_t chunk_bytes, size_t elem_size)
{
    size_t c = (chunk_bytes ? chunk_bytes : FX_ALGO_DEFAULT_CHUNK_BYTES) / elem_size;

    return c ? c : 1;
}

static inline size_t fx_algo_nchunks(size_t len, size_t chunk)
{
    return (len + chunk - 1) / chunk;
}

/* The largest power of two <= n (n >= 1). */
static inline int fx_algo_pow2_floor(int n)
{
    int p = 1;

    while (p <= n / 2) {
        p *= 2;
    }
    return p;
}

/* log2 of a power of two, or ceil(log2(n)) for any n >= 1. */
static inline int fx_algo_log2_ceil(int n)
{
    int k = 0;

    while ((1 << k) < n) {
        k++;
    }
    return k;
}

/*
 * Folding n ranks onto p = pow2_floor(n) virtual ranks: of the first 2 * (n - p) ranks, each
 * odd one stands for itself and the even one below it; the rest keep their order.
 * Virtual rank of a rank, or -1 for an even rank that folds into rank + 1.
 */
static inline int fx_algo_vrank(int rank, int rem)
{
    if (rank < 2 * rem) {
        return rank % 2 ? rank / 2 : -1;
    }
    return rank - rem;
}

static inline int fx_algo_rank_of(int vrank, int rem)
{
    return vrank < rem ? 2 * vrank + 1 : vrank + rem;
}

/* Start and length of block k of `count` elements cut into n blocks, the longer ones first. */
static inline size_t fx_algo_block_start(size_t count, int n, int k)
{
    size_t base = count / (size_t)n;
    size_t rem  = count % (size_t)n;

    return (size_t)k * base + ((size_t)k < rem ? (size_t)k : rem);
}

static inline size_t fx_algo_block_len(size_t count, int n, int k)
{
    return count / (size_t)n + ((size_t)k < count % (size_t)n ? 1 : 0);
}

/* Appends an op; returns its index or -1 when out of memory. */
static inline int fx_algo_push(struct fx_plan *plan, struct fx_plan_op op)
{
    return fx_plan_push(plan, &op);
}

/* A local copy of count elements (none when count is 0); FX_OK or FX_ERR_NO_MEMORY. */
static inline fx_status fx_algo_copy(struct fx_plan *plan, uint8_t dst, uint64_t dst_off,
                                     uint8_t src, uint64_t src_off, size_t count, uint8_t flags,
                                     int32_t dep, int *idx)
{
    int i;

    if (count == 0) {
        if (idx != NULL) {
            *idx = dep;
        }
        return FX_OK;
    }
    i = fx_algo_push(plan, (struct fx_plan_op){
                               .kind       = FX_PLAN_COPY,
                               .buf        = dst,
                               .src        = src,
                               .flags      = flags,
                               .peer       = -1,
                               .dep        = dep,
                               .offset     = dst_off,
                               .src_offset = src_off,
                               .count      = count,
                           });
    if (idx != NULL) {
        *idx = i;
    }
    return i < 0 ? FX_ERR_NO_MEMORY : FX_OK;
}

#endif /* FX_COLL_ALGO_INL_H */
