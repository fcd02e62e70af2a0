/*
 * Ring all-reduce and all-gather plans.
 *
 * All-reduce is a reduce-scatter followed by an all-gather around the ring r -> r + 1. The
 * buffer is cut into nranks segments (the first count % nranks one element longer) and each
 * segment into chunks of at most chunk_bytes. At reduce-scatter step s rank r sends segment
 * r - s and receives segment r - s - 1, reducing it into the receive buffer; after n - 1 steps
 * it holds the final value of segment r + 1, which the all-gather steps pass on.
 *
 * Ops are emitted step by step, and within a step chunk by chunk. The executor posts each
 * lane (sends to the right, receives from the left) in this order as dependencies allow: every
 * step-0 send is ready at once; chunk c of step s + 1 can go as soon as chunk c of step s has
 * been reduced, while chunk c + 1 is still arriving, so chunks pipeline through the steps.
 *
 * Scratch: each reduce-scatter receive lands in slot j % nslots (j counts those receives) and
 * depends on the previous receive that used the slot. Receives complete in order and reduce
 * before completing, so when that one has completed the slot's data has been consumed: one
 * dependency is enough. The send that forwards a reduced chunk depends on its reduction, not
 * on the slot, because it reads the receive buffer.
 *
 * Hazards on the receive buffer: an all-gather receive overwrites a region this rank sent from
 * during reduce-scatter; the data it receives exists only after the ring has received that
 * send, i.e. after the send's bytes left this rank, so no dependency is needed. In place, the
 * step-0 send reads segment r, which no reduction of this rank writes.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "coll_plan.h"

#define DEFAULT_CHUNK_BYTES (1u << 20)

struct ring {
    struct fx_plan *plan;
    int n;
    int r;            /* this rank's position in the ring */
    const int *order; /* order[p]: the rank at ring position p; NULL: rank p */
    size_t chunk;     /* elements per chunk */
    size_t seg_base;  /* count / n */
    size_t seg_rem;   /* count % n */
    size_t nchunks;   /* chunks of the longest segment */
    uint32_t nslots;
    uint32_t nrecv_reduce;
};

static int mod(int a, int n)
{
    return ((a % n) + n) % n;
}

/* The rank at ring position p (taken modulo n). */
static int at(const struct ring *g, int p)
{
    p = mod(p, g->n);
    return g->order != NULL ? g->order[p] : p;
}

/* This rank's ring position, or -1 when order is not a permutation holding it once. */
static int position(const int *order, int n, int rank)
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

static size_t seg_start(const struct ring *g, int k)
{
    return (size_t)k * g->seg_base + ((size_t)k < g->seg_rem ? (size_t)k : g->seg_rem);
}

static size_t seg_len(const struct ring *g, int k)
{
    return g->seg_base + ((size_t)k < g->seg_rem ? 1 : 0);
}

/* Elements of chunk c of a segment of `len` elements (0 when the segment is shorter). */
static size_t chunk_len(const struct ring *g, size_t len, size_t c)
{
    size_t off = c * g->chunk;

    if (off >= len) {
        return 0;
    }
    return len - off < g->chunk ? len - off : g->chunk;
}

static fx_status check_args(struct fx_plan *plan, int nranks, int rank, size_t count,
                            size_t elem_size, size_t factor)
{
    if (plan == NULL || nranks < 1 || rank < 0 || rank >= nranks || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    if (count > SIZE_MAX / elem_size / factor) {
        return FX_ERR_INVALID_ARG;
    }
    return FX_OK;
}

static size_t chunk_elems(size_t chunk_bytes, size_t elem_size)
{
    size_t c = (chunk_bytes ? chunk_bytes : DEFAULT_CHUNK_BYTES) / elem_size;

    return c ? c : 1;
}

static int push(struct fx_plan *plan, struct fx_plan_op op)
{
    return fx_plan_push(plan, &op);
}

/*
 * One all-reduce step (phase 0: reduce-scatter, 1: all-gather) for all chunks. prev_send /
 * prev_recv hold, per chunk, the op index that the next step's send depends on (the chunk's
 * reduction or receive); they are updated in place. slot_user holds per slot the last receive
 * that used it.
 */
static fx_status allreduce_step(struct ring *g, int phase, int s, int32_t *dep_of_chunk,
                                int32_t *slot_user)
{
    int right   = at(g, g->r + 1);
    int left    = at(g, g->r - 1);
    int sendseg = phase == 0 ? mod(g->r - s, g->n) : mod(g->r + 1 - s, g->n);
    int recvseg = phase == 0 ? mod(g->r - s - 1, g->n) : mod(g->r - s, g->n);
    bool final  = phase == 0 && s == g->n - 2;

    for (size_t c = 0; c < g->nchunks; c++) {
        size_t len = chunk_len(g, seg_len(g, sendseg), c);

        if (len == 0) {
            continue;
        }
        if (push(g->plan, (struct fx_plan_op){
                              .kind   = FX_PLAN_SEND,
                              .buf    = (phase == 0 && s == 0) ? FX_BUF_SEND : FX_BUF_RECV,
                              .peer   = right,
                              .dep    = (phase == 0 && s == 0) ? -1 : dep_of_chunk[c],
                              .offset = seg_start(g, sendseg) + c * g->chunk,
                              .count  = len,
                              .step   = (uint32_t)s,
                              .phase  = (uint32_t)phase,
                          }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    for (size_t c = 0; c < g->nchunks; c++) {
        size_t len           = chunk_len(g, seg_len(g, recvseg), c);
        struct fx_plan_op op = {
            .kind       = phase == 0 ? FX_PLAN_RECV_REDUCE : FX_PLAN_RECV,
            .buf        = FX_BUF_RECV,
            .src        = FX_BUF_SEND,
            .flags      = final ? FX_PLAN_FINAL : 0,
            .peer       = left,
            .dep        = -1,
            .offset     = seg_start(g, recvseg) + c * g->chunk,
            .src_offset = seg_start(g, recvseg) + c * g->chunk,
            .count      = len,
            .step       = (uint32_t)s,
            .phase      = (uint32_t)phase,
        };
        int idx;

        if (len == 0) {
            dep_of_chunk[c] = -1;
            continue;
        }
        if (phase == 0) {
            op.slot = g->nrecv_reduce % g->nslots;
            op.dep  = slot_user[op.slot];
        }
        idx = push(g->plan, op);
        if (idx < 0) {
            return FX_ERR_NO_MEMORY;
        }
        if (phase == 0) {
            slot_user[op.slot] = idx;
            g->nrecv_reduce++;
        }
        dep_of_chunk[c] = idx;
    }
    return FX_OK;
}

static fx_status plan_local_copy(struct fx_plan *plan, size_t dst_off, size_t count)
{
    if (count == 0) {
        return FX_OK;
    }
    return push(plan,
                (struct fx_plan_op){
                    .kind   = FX_PLAN_COPY,
                    .buf    = FX_BUF_RECV,
                    .src    = FX_BUF_SEND,
                    .flags  = FX_PLAN_FINAL,
                    .peer   = -1,
                    .dep    = -1,
                    .offset = dst_off,
                    .count  = count,
                }) < 0
               ? FX_ERR_NO_MEMORY
               : FX_OK;
}

fx_status fx_coll_ring_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    return fx_coll_ring_allreduce_ordered(plan, nranks, rank, NULL, count, elem_size, chunk_bytes,
                                          nslots);
}

fx_status fx_coll_ring_allreduce_ordered(struct fx_plan *plan, int nranks, int rank,
                                         const int *order, size_t count, size_t elem_size,
                                         size_t chunk_bytes, uint32_t nslots)
{
    fx_status status = check_args(plan, nranks, rank, count, elem_size, 1);
    struct ring g;
    int32_t *deps;
    int32_t *slot_user;
    int pos;

    if (status != FX_OK) {
        return status;
    }
    pos = position(order, nranks, rank);
    if (pos < 0) {
        return FX_ERR_INVALID_ARG;
    }
    fx_plan_reset(plan);
    plan->nranks    = nranks;
    plan->rank      = rank;
    plan->count     = count;
    plan->elem_size = elem_size;
    if (nranks == 1 || count == 0) {
        return nranks == 1 ? plan_local_copy(plan, 0, count) : FX_OK;
    }
    g = (struct ring){
        .plan = plan, .n = nranks, .r = pos, .order = order, .nslots = nslots ? nslots : 1};
    g.chunk    = chunk_elems(chunk_bytes, elem_size);
    g.seg_base = count / (size_t)nranks;
    g.seg_rem  = count % (size_t)nranks;
    g.nchunks  = (seg_len(&g, 0) + g.chunk - 1) / g.chunk;
    deps       = malloc(sizeof(*deps) * g.nchunks + sizeof(*slot_user) * g.nslots);
    if (deps == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    slot_user = deps + g.nchunks;
    for (uint32_t i = 0; i < g.nslots; i++) {
        slot_user[i] = -1;
    }
    for (int phase = 0; phase < 2 && status == FX_OK; phase++) {
        for (int s = 0; s < nranks - 1 && status == FX_OK; s++) {
            status = allreduce_step(&g, phase, s, deps, slot_user);
        }
    }
    free(deps);
    plan->nslots     = g.nrecv_reduce < g.nslots ? g.nrecv_reduce : g.nslots;
    plan->slot_count = g.chunk < seg_len(&g, 0) ? g.chunk : seg_len(&g, 0);
    return status;
}

/* One all-gather step for every chunk of a block; deps as in allreduce_step. */
static fx_status allgather_step(struct ring *g, size_t count, int s, int32_t *dep_of_chunk)
{
    int right   = at(g, g->r + 1);
    int left    = at(g, g->r - 1);
    int sendblk = at(g, g->r - s); /* blocks are ranks' data: rank k's lands at k * count */
    int recvblk = at(g, g->r - s - 1);

    for (size_t c = 0; c < g->nchunks; c++) {
        bool own = s == 0;

        if (push(g->plan, (struct fx_plan_op){
                              .kind   = FX_PLAN_SEND,
                              .buf    = own ? FX_BUF_SEND : FX_BUF_RECV,
                              .peer   = right,
                              .dep    = own ? -1 : dep_of_chunk[c],
                              .offset = (own ? 0 : (size_t)sendblk * count) + c * g->chunk,
                              .count  = chunk_len(g, count, c),
                              .step   = (uint32_t)s,
                          }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    for (size_t c = 0; c < g->nchunks; c++) {
        int idx = push(g->plan, (struct fx_plan_op){
                                    .kind   = FX_PLAN_RECV,
                                    .buf    = FX_BUF_RECV,
                                    .peer   = left,
                                    .dep    = -1,
                                    .offset = (size_t)recvblk * count + c * g->chunk,
                                    .count  = chunk_len(g, count, c),
                                    .step   = (uint32_t)s,
                                });

        if (idx < 0) {
            return FX_ERR_NO_MEMORY;
        }
        dep_of_chunk[c] = idx;
    }
    return FX_OK;
}

fx_status fx_coll_ring_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes)
{
    return fx_coll_ring_allgather_ordered(plan, nranks, rank, NULL, count, elem_size, chunk_bytes);
}

fx_status fx_coll_ring_allgather_ordered(struct fx_plan *plan, int nranks, int rank,
                                         const int *order, size_t count, size_t elem_size,
                                         size_t chunk_bytes)
{
    fx_status status = check_args(plan, nranks, rank, count, elem_size, (size_t)nranks);
    struct ring g;
    int32_t *deps;
    int pos;

    if (status != FX_OK) {
        return status;
    }
    pos = position(order, nranks, rank);
    if (pos < 0) {
        return FX_ERR_INVALID_ARG;
    }
    fx_plan_reset(plan);
    plan->nranks    = nranks;
    plan->rank      = rank;
    plan->count     = count;
    plan->elem_size = elem_size;
    if (count == 0) {
        return FX_OK;
    }
    status = plan_local_copy(plan, (size_t)rank * count, count);
    if (status != FX_OK || nranks == 1) {
        return status;
    }
    g         = (struct ring){.plan = plan, .n = nranks, .r = pos, .order = order, .nslots = 1};
    g.chunk   = chunk_elems(chunk_bytes, elem_size);
    g.nchunks = (count + g.chunk - 1) / g.chunk;
    deps      = malloc(sizeof(*deps) * g.nchunks);
    if (deps == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    for (int s = 0; s < nranks - 1 && status == FX_OK; s++) {
        status = allgather_step(&g, count, s, deps);
    }
    free(deps);
    return status;
}
