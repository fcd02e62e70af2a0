/*
 * Helpers shared by the plan builders of coll_tree.c, coll_rd.c and coll_gather.c on top of
 * coll_build_inl.h's (plan header, chunks, op emission): argument checks with a buffer factor,
 * rank arithmetic for powers of two, blocks, and copies with a dependency.
 */
#ifndef FX_COLL_ALGO_INL_H
#define FX_COLL_ALGO_INL_H

#include <stddef.h>
#include <stdint.h>

#include "coll_build_inl.h"
#include "coll_plan.h"

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
    i = fx_build_push(plan, (struct fx_plan_op){
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
