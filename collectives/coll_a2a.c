/*
 * Dissemination barrier and pairwise all-to-all plans (see coll_set.h).
 *
 * Barrier: after round k a rank has heard, directly or through others, from the 2^(k+1) - 1
 * ranks before it, so after ceil(log2 n) rounds from all. Round k's send waits for round
 * k - 1's receive; receives wait for nothing, so every receive is posted at once and the plan
 * cannot deadlock under rendezvous sends. The 2^k of distinct rounds differ modulo n (all are
 * below n), so each link carries at most one message.
 *
 * All-to-all: no op depends on another, so all are posted at once; the op order is the
 * pairwise schedule (step s: to rank + s, from rank - s), which the executor follows per lane
 * and which spreads the load so that at each step every rank sends to one peer and receives
 * from one.
 */
#include "coll_build_inl.h"
#include "coll_set.h"

fx_status fx_coll_barrier(struct fx_plan *plan, int nranks, int rank)
{
    fx_status status = fx_build_check(plan, nranks, rank, 0, 1);
    int32_t last     = -1;
    uint32_t k       = 0;

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, 0, 1);
    for (int dist = 1; dist < nranks; dist <<= 1, k++) {
        if (fx_build_push(plan, (struct fx_plan_op){.kind = FX_PLAN_SEND,
                                                    .buf  = FX_BUF_SEND,
                                                    .peer = (rank + dist) % nranks,
                                                    .dep  = last,
                                                    .step = k}) < 0) {
            return FX_ERR_NO_MEMORY;
        }
        last = fx_build_push(plan, (struct fx_plan_op){.kind = FX_PLAN_RECV,
                                                       .buf  = FX_BUF_RECV,
                                                       .peer = fx_build_mod(rank - dist, nranks),
                                                       .dep  = -1,
                                                       .step = k});
        if (last < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/* The chunks of one message of count elements at buf[offset..], to or from peer. */
static fx_status a2a_message(struct fx_plan *plan, uint8_t kind, int peer, size_t offset,
                             size_t count, size_t chunk, uint32_t step)
{
    for (size_t c = 0; c < fx_build_nchunks(count, chunk); c++) {
        if (fx_build_push(plan, (struct fx_plan_op){
                                    .kind   = kind,
                                    .buf    = kind == FX_PLAN_SEND ? FX_BUF_SEND : FX_BUF_RECV,
                                    .peer   = peer,
                                    .dep    = -1,
                                    .offset = offset + c * chunk,
                                    .count  = fx_build_chunk_len(count, chunk, c),
                                    .step   = step,
                                }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

fx_status fx_coll_alltoall_pairwise(struct fx_plan *plan, int nranks, int rank, size_t count,
                                    size_t elem_size, size_t chunk_bytes)
{
    fx_status status = fx_build_check(plan, nranks, rank, count, elem_size);
    size_t chunk;

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    chunk  = fx_build_chunk_elems(chunk_bytes, elem_size);
    status = fx_build_copy(plan, FX_BUF_RECV, (size_t)rank * count, FX_BUF_SEND,
                           (size_t)rank * count, count);
    for (int s = 1; s < nranks && status == FX_OK && count > 0; s++) {
        int to   = (rank + s) % nranks;
        int from = fx_build_mod(rank - s, nranks);

        status = a2a_message(plan, FX_PLAN_SEND, to, (size_t)to * count, count, chunk, (uint32_t)s);
        if (status == FX_OK) {
            status = a2a_message(plan, FX_PLAN_RECV, from, (size_t)from * count, count, chunk,
                                 (uint32_t)s);
        }
    }
    return status;
}
