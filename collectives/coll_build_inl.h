/*
 * Helpers shared by the plan builders of coll_set.h: argument checks, plan headers, ring
 * positions and chunking. Pure arithmetic on plans, inlined into each builder.
 */
#ifndef FX_COLL_BUILD_INL_H
#define FX_COLL_BUILD_INL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coll_plan.h"

/* Chunk size when the caller passes chunk_bytes 0, as for the ring plans. */
#define FX_BUILD_DEFAULT_CHUNK_BYTES (1u << 20)

/* Appends an op; its index, or -1 when out of memory. */
static inline int fx_build_push(struct fx_plan *plan, struct fx_plan_op op)
{
    return fx_plan_push(plan, &op);
}

/*
 * Checks what every builder takes: a plan, 1 <= nranks, rank in range, elem_size > 0, and
 * count * nranks * elem_size representable in a size_t.
 */
static inline fx_status fx_build_check(const struct fx_plan *plan, int nranks, int rank,
                                       size_t count, size_t elem_size)
{
    if (plan == NULL || nranks < 1 || rank < 0 || rank >= nranks || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (count > SIZE_MAX / elem_size / (size_t)nranks) {
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}

/* Empties the plan and fills its header. */
static inline void fx_build_begin(struct fx_plan *plan, int nranks, int rank, size_t count,
                                  size_t elem_size)
{
    fx_plan_reset(plan);
    plan->nranks    = nranks;
    plan->rank      = rank;
    plan->count     = count;
    plan->elem_size = elem_size;
}

/* Elements per chunk: chunk_bytes (0: the default) in whole elements, at least one. */
static inline size_t fx_build_chunk_elems(size_t chunk_bytes, size_t elem_size)
{
    size_t c = (chunk_bytes ? chunk_bytes : FX_BUILD_DEFAULT_CHUNK_BYTES) / elem_size;

    return c ? c : 1;
}

/* Chunks of `chunk` elements that cover `count` elements. */
static inline size_t fx_build_nchunks(size_t count, size_t chunk)
{
    return (count + chunk - 1) / chunk;
}

/* Elements of chunk c of `count` elements cut into chunks of `chunk`. */
static inline size_t fx_build_chunk_len(size_t count, size_t chunk, size_t c)
{
    size_t off = c * chunk;

    return count - off < chunk ? count - off : chunk;
}

static inline int fx_build_mod(int a, int n)
{
    return ((a % n) + n) % n;
}

/* The rank at ring position p (modulo n); order NULL means rank order. */
static inline int fx_build_at(const int *order, int n, int p)
{
    p = fx_build_mod(p, n);
    return order != NULL ? order[p] : p;
}

/* The ring position of rank, or -1 when order is not a permutation holding it once. */
static inline int fx_build_position(const int *order, int n, int rank)
{
    int pos   = -1;
    int found = 0;

    if (order == NULL) {
        return rank;
    }
    for (int p = 0; p < n; p++) {
        if (order[p] < 0 || order[p] >= n) {
            return -1;
        }
        if (order[p] == rank) {
            pos = p;
            found++;
        }
    }
    return found == 1 ? pos : -1;
}

/* Whether order is a permutation of 0..n-1 (NULL counts as one). */
static inline bool fx_build_order_ok(const int *order, int n)
{
    for (int r = 0; order != NULL && r < n; r++) {
        if (fx_build_position(order, n, r) < 0) {
            return false;
        }
    }
    return true;
}

/* A local copy of count elements, src[src_off..] to buf[off..], or FX_OK when count is 0. */
static inline fx_status fx_build_copy(struct fx_plan *plan, uint8_t buf, size_t off, uint8_t src,
                                      size_t src_off, size_t count)
{
    if (count == 0) {
        return FX_OK;
    }
    return fx_build_push(plan,
                         (struct fx_plan_op){
                             .kind       = FX_PLAN_COPY,
                             .buf        = buf,
                             .src        = src,
                             .flags      = FX_PLAN_FINAL,
                             .peer       = -1,
                             .dep        = -1,
                             .offset     = off,
                             .src_offset = src_off,
                             .count      = count,
                         }) < 0
               ? FX_ERR_NO_MEMORY
               : FX_OK;
}

/* Scratch slots the plan's receives use: one more than the highest slot index, or 0. */
static inline uint32_t fx_build_slots_used(const struct fx_plan *plan)
{
    uint32_t used = 0;

    for (size_t i = 0; i < plan->nops; i++) {
        if (plan->ops[i].kind == FX_PLAN_RECV_REDUCE && plan->ops[i].slot + 1 > used) {
            used = plan->ops[i].slot + 1;
        }
    }
    return used;
}

#endif /* FX_COLL_BUILD_INL_H */
