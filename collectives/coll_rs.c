/*
 * Ring reduce-scatter plan (see coll_set.h).
 *
 * Block k of the send buffers is rank k's result. The block owned by the rank at ring position
 * q starts at position q + 1, which sends its own data of the block; each position after it
 * reduces its data into what arrives and passes the sum on, and position q, n - 1 hops later,
 * reduces the last partial into its receive buffer. At step s the rank at position p sends
 * block at(p - 1 - s) and receives block at(p - 2 - s).
 *
 * Ops are emitted chunk by chunk, and within a chunk step by step. Receive j (counted over the
 * whole plan) lands in slot j % nslots; the partial it leaves there is read by the next step's
 * send, so the next receive into the slot depends on that send (or, after a final step, on the
 * receive itself). Under rendezvous sends, receive j waits for a send that waits for the
 * right neighbour's receive j - nslots + 1: with nslots >= 2 the chain of waits runs to ever
 * smaller j and ends, where nslots 1 would close a cycle around the ring.
 */
#include <stdlib.h>

#include "coll_build_inl.h"
#include "coll_set.h"

struct rs {
    struct fx_plan *plan;
    const int *order;
    int n;
    int p;        /* this rank's ring position */
    size_t count; /* elements per block */
    size_t chunk; /* elements per chunk */
    uint32_t nslots;
    uint32_t nrecv;     /* receives emitted so far */
    int32_t *slot_free; /* per slot: the op after which the slot may be written again */
};

/* Step s of chunk c: the send, then the receive; *last holds the previous receive's index. */
static fx_status rs_step(struct rs *g, int s, size_t c, int32_t *last)
{
    int right         = fx_build_at(g->order, g->n, g->p + 1);
    int left          = fx_build_at(g->order, g->n, g->p - 1);
    size_t sendblk    = (size_t)fx_build_at(g->order, g->n, g->p - 1 - s);
    size_t recvblk    = (size_t)fx_build_at(g->order, g->n, g->p - 2 - s);
    size_t len        = fx_build_chunk_len(g->count, g->chunk, c);
    uint32_t prevslot = (g->nrecv + g->nslots - 1) % g->nslots;
    uint32_t slot     = g->nrecv % g->nslots;
    bool final        = s == g->n - 2;
    int idx;

    idx = fx_build_push(g->plan, (struct fx_plan_op){
                                     .kind   = FX_PLAN_SEND,
                                     .buf    = s == 0 ? FX_BUF_SEND : FX_BUF_SCRATCH,
                                     .peer   = right,
                                     .dep    = s == 0 ? -1 : *last,
                                     .offset = s == 0 ? sendblk * g->count + c * g->chunk
                                                      : prevslot * g->plan->slot_count,
                                     .count  = len,
                                     .step   = (uint32_t)s,
                                 });
    if (idx < 0) {
        return FX_ERR_NO_MEMORY;
    }
    if (s > 0) {
        g->slot_free[prevslot] = idx;
    }
    idx = fx_build_push(g->plan, (struct fx_plan_op){
                                     .kind   = FX_PLAN_RECV_REDUCE,
                                     .buf    = final ? FX_BUF_RECV : FX_BUF_SCRATCH,
                                     .src    = FX_BUF_SEND,
                                     .flags  = final ? FX_PLAN_FINAL : 0,
                                     .peer   = left,
                                     .dep    = g->slot_free[slot],
                                     .slot   = slot,
                                     .offset = final ? c * g->chunk : slot * g->plan->slot_count,
                                     .src_offset = recvblk * g->count + c * g->chunk,
                                     .count      = len,
                                     .step       = (uint32_t)s,
                                 });
    if (idx < 0) {
        return FX_ERR_NO_MEMORY;
    }
    g->slot_free[slot] = idx;
    *last              = idx;
    g->nrecv++;
    return FX_OK;
}

static fx_status rs_build(struct rs *g)
{
    size_t nchunks   = fx_build_nchunks(g->count, g->chunk);
    fx_status status = FX_OK;
    int32_t last     = -1;

    g->slot_free = malloc(sizeof(*g->slot_free) * g->nslots);
    if (g->slot_free == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < g->nslots; i++) {
        g->slot_free[i] = -1;
    }
    for (size_t c = 0; c < nchunks && status == FX_OK; c++) {
        for (int s = 0; s < g->n - 1 && status == FX_OK; s++) {
            status = rs_step(g, s, c, &last);
        }
    }
    free(g->slot_free);
    return status;
}

fx_status fx_coll_ring_reduce_scatter(struct fx_plan *plan, int nranks, int rank, const int *order,
                                      size_t count, size_t elem_size, size_t chunk_bytes,
                                      uint32_t nslots)
{
    fx_status status = fx_build_check(plan, nranks, rank, count, elem_size);
    struct rs g;

    if (status != FX_OK) {
        return status;
    }
    if (!fx_build_order_ok(order, nranks)) {
        return FX_ERR_INVALID_ARG;
    }
    if (nranks > 1 && count > 0 && nslots < (nranks >= 3 ? 2u : 1u)) {
        return FX_ERR_UNSUPPORTED;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    if (nranks == 1 || count == 0) {
        return fx_build_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, nranks == 1 ? count : 0);
    }
    g = (struct rs){
        .plan   = plan,
        .order  = order,
        .n      = nranks,
        .p      = fx_build_position(order, nranks, rank),
        .count  = count,
        .chunk  = fx_build_chunk_elems(chunk_bytes, elem_size),
        .nslots = nslots,
    };
    plan->slot_count = g.chunk < count ? g.chunk : count;
    status           = rs_build(&g);
    plan->nslots     = fx_build_slots_used(plan);
    return status;
}
