/*
 * Recursive-doubling and Bruck all-gathers. Rank r's count elements (FX_BUF_SEND) end at
 * offset r * count of every rank's FX_BUF_RECV; every block is received straight into that
 * place, so neither needs a final shuffle.
 *
 * Each step sends blocks that earlier steps received, from FX_BUF_RECV. The first receive of a
 * step depends on the last receive of the step before (the first of step 0 on the copy of the
 * rank's own block), and a step's sends on that same last receive: receives from one peer
 * complete in order, so it stands for all blocks this rank holds. No receive depends on a
 * send. A receive writes only a block this rank has not had before, which no send reads.
 */
#include "coll_algo_inl.h"
#include "coll_algos.h"

struct gather {
    struct fx_plan *plan;
    int n;
    size_t count;      /* elements per block */
    size_t chunk;      /* elements per chunk */
    int32_t last_recv; /* the last receive emitted (or the own block's copy), -1 for none */
    int32_t recv_dep;  /* the dependency of the step's next receive: only the first waits */
};

/* Emits one range [off, off + len) of FX_BUF_RECV (send or receive), chunked. */
static fx_status gather_range(struct gather *g, bool send, int peer, uint64_t off, size_t len,
                              int32_t dep, uint32_t step)
{
    for (size_t done = 0; done < len; done += g->chunk) {
        int idx = fx_build_push(g->plan, (struct fx_plan_op){
                                             .kind   = send ? FX_PLAN_SEND : FX_PLAN_RECV,
                                             .buf    = FX_BUF_RECV,
                                             .peer   = peer,
                                             .dep    = send ? dep : g->recv_dep,
                                             .offset = off + done,
                                             .count = len - done < g->chunk ? len - done : g->chunk,
                                             .step  = step,
                                         });

        if (idx < 0) {
            return FX_ERR_NO_MEMORY;
        }
        if (!send) {
            g->last_recv = idx;
            g->recv_dep  = -1;
        }
    }
    return FX_OK;
}

/*
 * Blocks first, first + 1, ... (nblocks of them, wrapping past n - 1) as one message: one
 * range, or two when they wrap. dep: the sends' dependency.
 */
static fx_status gather_blocks(struct gather *g, bool send, int peer, int first, int nblocks,
                               int32_t dep, uint32_t step)
{
    int head = first + nblocks <= g->n ? nblocks : g->n - first;
    fx_status status =
        gather_range(g, send, peer, (uint64_t)first * g->count, (size_t)head * g->count, dep, step);

    if (status == FX_OK && head < nblocks) {
        status = gather_range(g, send, peer, 0, (size_t)(nblocks - head) * g->count, dep, step);
    }
    return status;
}

/* Step 0 sends the own block from FX_BUF_SEND (in place, that is the same memory). */
static fx_status gather_own(struct gather *g, int peer)
{
    for (size_t done = 0; done < g->count; done += g->chunk) {
        if (fx_build_push(g->plan,
                          (struct fx_plan_op){
                              .kind   = FX_PLAN_SEND,
                              .buf    = FX_BUF_SEND,
                              .peer   = peer,
                              .dep    = -1,
                              .offset = done,
                              .count  = g->count - done < g->chunk ? g->count - done : g->chunk,
                          }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/* Checks, the plan header and the copy of the own block; *done when nothing more is needed. */
static fx_status gather_begin(struct gather *g, struct fx_plan *plan, int nranks, int rank,
                              size_t count, size_t elem_size, size_t chunk_bytes, bool *done)
{
    fx_status status = fx_algo_check(plan, nranks, rank, count, elem_size, (size_t)nranks);
    int idx;

    *done = true;
    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    if (count == 0) {
        return FX_OK;
    }
    status = fx_algo_copy(plan, FX_BUF_RECV, (uint64_t)rank * count, FX_BUF_SEND, 0, count,
                          FX_PLAN_FINAL, -1, &idx);
    *g     = (struct gather){.plan      = plan,
                             .n         = nranks,
                             .count     = count,
                             .chunk     = fx_build_chunk_elems(chunk_bytes, elem_size),
                             .last_recv = idx};
    *done  = status != FX_OK || nranks == 1;
    return status;
}

fx_status fx_coll_rd_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                               size_t elem_size, size_t chunk_bytes)
{
    struct gather g;
    fx_status status;
    bool done;
    uint32_t step = 0;

    status = fx_algo_check(plan, nranks, rank, count, elem_size, (size_t)nranks);
    if (status != FX_OK) {
        return status;
    }
    if ((nranks & (nranks - 1)) != 0) {
        return FX_ERR_UNSUPPORTED;
    }
    status = gather_begin(&g, plan, nranks, rank, count, elem_size, chunk_bytes, &done);
    for (int bit = 1; !done && status == FX_OK && bit < nranks; bit *= 2, step++) {
        int peer      = rank ^ bit;
        int32_t ready = g.last_recv;

        g.recv_dep = ready;
        if (bit == 1) {
            status = gather_own(&g, peer);
        } else {
            status = gather_blocks(&g, true, peer, rank & ~(bit - 1), bit, ready, step);
        }
        if (status == FX_OK) {
            status = gather_blocks(&g, false, peer, peer & ~(bit - 1), bit, -1, step);
        }
    }
    return status;
}

fx_status fx_coll_bruck_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                                  size_t elem_size, size_t chunk_bytes)
{
    struct gather g;
    fx_status status;
    bool done;
    uint32_t step = 0;

    status = gather_begin(&g, plan, nranks, rank, count, elem_size, chunk_bytes, &done);
    for (int dist = 1; !done && status == FX_OK && dist < nranks; dist *= 2, step++) {
        int to        = (rank - dist + nranks) % nranks;
        int from      = (rank + dist) % nranks;
        int nblocks   = dist < nranks - dist ? dist : nranks - dist;
        int32_t ready = g.last_recv;

        g.recv_dep = ready;
        if (dist == 1) {
            status = gather_own(&g, to);
        } else {
            status = gather_blocks(&g, true, to, rank, nblocks, ready, step);
        }
        if (status == FX_OK) {
            status = gather_blocks(&g, false, from, from, nblocks, -1, step);
        }
    }
    return status;
}
