/*
 * Recursive-doubling all-reduce (small messages) and Rabenseifner's all-reduce (recursive
 * halving reduce-scatter, recursive doubling all-gather), both over p = 2^k virtual ranks with
 * the usual fold of the n - p extra ranks (coll_algo_inl.h: fx_algo_vrank).
 *
 * Recursive doubling keeps each intermediate value in slots of its own: value j (j = 0 the
 * input, copied or folded into scratch) lives in slots j * nchunks + c, chunk c. Exchange j
 * sends value j and receives the partner's into the slots of value j + 1, reducing there, so a
 * receive never overwrites what a send of this rank may still be reading, and each op needs a
 * single dependency: the op that produced its chunk of value j. The last exchange reduces
 * into FX_BUF_RECV. A rank's slots: (log2(p) + 1) * nchunks.
 */
#include <stdlib.h>

#include "coll_algo_inl.h"
#include "coll_algos.h"

struct rd {
    struct fx_plan *plan;
    int rank;
    size_t count;
    size_t chunk;   /* elements per chunk */
    size_t nchunks; /* chunks of the whole buffer */
    int32_t *prod;  /* per chunk: the op that produced the current value */
};

static size_t rd_len(const struct rd *d, size_t c)
{
    size_t off = c * d->chunk;

    return d->count - off < d->chunk ? d->count - off : d->chunk;
}

/* Scratch offset of chunk c of value j. */
static uint64_t rd_slot_off(const struct rd *d, size_t j, size_t c)
{
    return (uint64_t)(j * d->nchunks + c) * d->plan->slot_count;
}

/* Value 0: the input copied to scratch, or for a rank standing for an extra one, the
 * partner's input (the lower rank, so first operand) reduced with its own. */
static fx_status rd_start(struct rd *d, bool folds_in)
{
    for (size_t c = 0; c < d->nchunks; c++) {
        int idx;

        if (!folds_in) {
            if (fx_algo_copy(d->plan, FX_BUF_SCRATCH, rd_slot_off(d, 0, c), FX_BUF_SEND,
                             c * d->chunk, rd_len(d, c), 0, -1, &idx) != FX_OK) {
                return FX_ERR_NO_MEMORY;
            }
        } else {
            idx = fx_build_push(d->plan, (struct fx_plan_op){
                                             .kind       = FX_PLAN_RECV_REDUCE,
                                             .buf        = FX_BUF_SCRATCH,
                                             .src        = FX_BUF_SEND,
                                             .flags      = FX_PLAN_SLOT_FIRST,
                                             .peer       = d->rank - 1,
                                             .dep        = -1,
                                             .slot       = (uint32_t)c,
                                             .offset     = rd_slot_off(d, 0, c),
                                             .src_offset = c * d->chunk,
                                             .count      = rd_len(d, c),
                                         });
            if (idx < 0) {
                return FX_ERR_NO_MEMORY;
            }
        }
        d->prod[c] = idx;
    }
    return FX_OK;
}

/* Exchange j with `peer`; `upper`: this rank's value is the second operand. */
static fx_status rd_exchange(struct rd *d, size_t j, int peer, bool upper, bool last)
{
    for (size_t c = 0; c < d->nchunks; c++) {
        if (fx_build_push(d->plan, (struct fx_plan_op){
                                       .kind   = FX_PLAN_SEND,
                                       .buf    = FX_BUF_SCRATCH,
                                       .peer   = peer,
                                       .dep    = d->prod[c],
                                       .offset = rd_slot_off(d, j, c),
                                       .count  = rd_len(d, c),
                                       .step   = (uint32_t)j,
                                   }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    for (size_t c = 0; c < d->nchunks; c++) {
        int idx = fx_build_push(
            d->plan,
            (struct fx_plan_op){
                .kind  = FX_PLAN_RECV_REDUCE,
                .buf   = last ? FX_BUF_RECV : FX_BUF_SCRATCH,
                .src   = FX_BUF_SCRATCH,
                .flags = (uint8_t)((upper ? FX_PLAN_SLOT_FIRST : 0u) | (last ? FX_PLAN_FINAL : 0u)),
                .peer  = peer,
                .dep   = d->prod[c],
                .slot  = (uint32_t)((j + 1) * d->nchunks + c),
                .offset     = last ? c * d->chunk : rd_slot_off(d, j + 1, c),
                .src_offset = rd_slot_off(d, j, c),
                .count      = rd_len(d, c),
                .step       = (uint32_t)j,
            });

        if (idx < 0) {
            return FX_ERR_NO_MEMORY;
        }
        d->prod[c] = idx;
    }
    return FX_OK;
}

/* The extra rank below an odd folding rank: send the input up, receive the result. */
static fx_status rd_extra(struct rd *d)
{
    for (int pass = 0; pass < 2; pass++) {
        for (size_t c = 0; c < d->nchunks; c++) {
            if (fx_build_push(d->plan, (struct fx_plan_op){
                                           .kind   = pass == 0 ? FX_PLAN_SEND : FX_PLAN_RECV,
                                           .buf    = pass == 0 ? FX_BUF_SEND : FX_BUF_RECV,
                                           .peer   = d->rank + 1,
                                           .dep    = -1,
                                           .offset = c * d->chunk,
                                           .count  = rd_len(d, c),
                                       }) < 0) {
                return FX_ERR_NO_MEMORY;
            }
        }
    }
    return FX_OK;
}

/* The folding rank hands the result to the extra rank below it. */
static fx_status rd_hand_back(struct rd *d)
{
    for (size_t c = 0; c < d->nchunks; c++) {
        if (fx_build_push(d->plan, (struct fx_plan_op){
                                       .kind   = FX_PLAN_SEND,
                                       .buf    = FX_BUF_RECV,
                                       .peer   = d->rank - 1,
                                       .dep    = d->prod[c],
                                       .offset = c * d->chunk,
                                       .count  = rd_len(d, c),
                                   }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

static fx_status rd_build(struct rd *d, int nranks)
{
    int p     = fx_algo_pow2_floor(nranks);
    int rem   = nranks - p;
    int steps = fx_algo_log2_ceil(p);
    int vr    = fx_algo_vrank(d->rank, rem);
    fx_status status;

    if (vr < 0) {
        return rd_extra(d);
    }
    status = rd_start(d, d->rank < 2 * rem);
    for (int k = 0; k < steps && status == FX_OK; k++) {
        int pv = vr ^ (1 << k);

        status = rd_exchange(d, (size_t)k, fx_algo_rank_of(pv, rem), pv < vr, k == steps - 1);
    }
    if (status == FX_OK && d->rank < 2 * rem) {
        status = rd_hand_back(d);
    }
    return status;
}

fx_status fx_coll_rd_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                               size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    fx_status status = fx_algo_check(plan, nranks, rank, count, elem_size, 1);
    struct rd d;
    size_t sets;

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    if (nranks == 1 || count == 0) {
        return fx_algo_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, nranks == 1 ? count : 0,
                            FX_PLAN_FINAL, -1, NULL);
    }
    d         = (struct rd){.plan = plan, .rank = rank, .count = count};
    d.chunk   = fx_build_chunk_elems(chunk_bytes, elem_size);
    d.nchunks = fx_build_nchunks(count, d.chunk);
    sets      = (size_t)fx_algo_log2_ceil(fx_algo_pow2_floor(nranks)) + 1;
    if (d.nchunks > (nslots ? nslots : 1) / sets) {
        return FX_ERR_UNSUPPORTED;
    }
    d.prod = malloc(sizeof(*d.prod) * d.nchunks);
    if (d.prod == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    plan->slot_count = d.chunk < count ? d.chunk : count;
    plan->nslots     = fx_algo_vrank(rank, nranks - fx_algo_pow2_floor(nranks)) < 0
                           ? 0
                           : (uint32_t)(sets * d.nchunks);
    status           = rd_build(&d, nranks);
    free(d.prod);
    return status;
}

/*
 * Rabenseifner: the buffer is cut into p blocks. Reduce-scatter step k halves the range of
 * blocks a virtual rank is responsible for: it sends the half its partner (virtual rank ^
 * p / 2^(k+1)) keeps and reduces the partner's copy of its own half into FX_BUF_RECV. The last
 * step's reductions are final. The all-gather then doubles the owned range at each step.
 *
 * A step's sends read what the previous steps produced, so they depend on its last receive,
 * and the step's first nslots receives do too (their slots were used by that step); receive j
 * of a step depends on receive j - nslots of the step, which used its slot. Receives from one
 * peer complete in order, so the last receive of a step stands for all of them. Reductions
 * write only the kept half, which no send of this rank reads; an all-gather receive writes a
 * range this rank sent during the reduce-scatter, and its final data exists only once the
 * partner has received that send.
 */
struct rab {
    struct fx_plan *plan;
    int rank;
    int p; /* virtual ranks */
    size_t count;
    size_t chunk;
    uint32_t nslots;
    int32_t step_dep; /* the last receive of the previous step, -1 for none */
    int32_t *slot_last;
    uint8_t cur; /* where this rank's partial values are: FX_BUF_SEND or FX_BUF_RECV */
};

static uint64_t rab_block(const struct rab *b, int k)
{
    return fx_algo_block_start(b->count, b->p, k);
}

static void rab_new_step(struct rab *b, int32_t last_recv)
{
    b->step_dep = last_recv;
    for (uint32_t i = 0; i < b->nslots; i++) {
        b->slot_last[i] = last_recv;
    }
}

/* Sends [off, end) of buf to peer as chunks of this step and phase (the receiver labels its
 * receives alike: the executor checks both on every message). */
static fx_status rab_send(struct rab *b, int peer, uint64_t off, uint64_t end, uint8_t buf,
                          uint32_t step, uint32_t phase)
{
    for (uint64_t o = off; o < end; o += b->chunk) {
        if (fx_build_push(b->plan, (struct fx_plan_op){
                                       .kind   = FX_PLAN_SEND,
                                       .buf    = buf,
                                       .peer   = peer,
                                       .dep    = buf == FX_BUF_SEND ? -1 : b->step_dep,
                                       .offset = o,
                                       .count  = end - o < b->chunk ? end - o : b->chunk,
                                       .step   = step,
                                       .phase  = phase,
                                   }) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/* Receives [off, end) from peer: reduced with b->cur when `kind` is RECV_REDUCE. Sets *last. */
static fx_status rab_recv(struct rab *b, int peer, uint64_t off, uint64_t end, uint8_t kind,
                          uint8_t flags, uint32_t step, int32_t *last)
{
    uint32_t j = 0;

    for (uint64_t o = off; o < end; o += b->chunk, j++) {
        uint32_t slot        = j % b->nslots;
        struct fx_plan_op op = {
            .kind  = kind,
            .buf   = FX_BUF_RECV,
            .src   = b->cur,
            .flags = kind == FX_PLAN_RECV_REDUCE ? flags : 0,
            .peer  = peer,
            .dep   = kind == FX_PLAN_RECV_REDUCE ? b->slot_last[slot] : (j == 0 ? b->step_dep : -1),
            .slot  = kind == FX_PLAN_RECV_REDUCE ? slot : 0,
            .offset     = o,
            .src_offset = o,
            .count      = end - o < b->chunk ? end - o : b->chunk,
            .step       = step,
            .phase      = kind == FX_PLAN_RECV ? 1 : 0,
        };
        int idx = fx_build_push(b->plan, op);

        if (idx < 0) {
            return FX_ERR_NO_MEMORY;
        }
        b->slot_last[slot] = idx;
        *last              = idx;
    }
    return FX_OK;
}

/* Reduce-scatter by recursive halving; leaves this rank's block v final in FX_BUF_RECV. */
static fx_status rab_reduce_scatter(struct rab *b, int vr, int rem, int32_t *last)
{
    int lo           = 0;
    fx_status status = FX_OK;

    for (int mask = b->p / 2, k = 0; mask >= 1 && status == FX_OK; mask /= 2, k++) {
        int keep = (vr & mask) ? lo + mask : lo;
        int give = (vr & mask) ? lo : lo + mask;
        int peer = fx_algo_rank_of(vr ^ mask, rem);
        uint8_t fl =
            (uint8_t)(((vr & mask) ? FX_PLAN_SLOT_FIRST : 0u) | (mask == 1 ? FX_PLAN_FINAL : 0u));

        rab_new_step(b, *last);
        status = rab_send(b, peer, rab_block(b, give), rab_block(b, give + mask), b->cur,
                          (uint32_t)k, 0);
        if (status == FX_OK) {
            status = rab_recv(b, peer, rab_block(b, keep), rab_block(b, keep + mask),
                              FX_PLAN_RECV_REDUCE, fl, (uint32_t)k, last);
        }
        b->cur = FX_BUF_RECV;
        lo     = keep;
    }
    return status;
}

/* All-gather by recursive doubling of the owned range of blocks. */
static fx_status rab_allgather(struct rab *b, int vr, int rem, int32_t *last)
{
    fx_status status = FX_OK;
    uint32_t step    = (uint32_t)fx_algo_log2_ceil(b->p);

    for (int mask = 1; mask < b->p && status == FX_OK; mask *= 2, step++) {
        int mine = vr & ~(mask - 1);
        int peer = vr ^ mask;
        int his  = peer & ~(mask - 1);

        rab_new_step(b, *last);
        status = rab_send(b, fx_algo_rank_of(peer, rem), rab_block(b, mine),
                          rab_block(b, mine + mask), FX_BUF_RECV, step, 1);
        if (status == FX_OK) {
            status = rab_recv(b, fx_algo_rank_of(peer, rem), rab_block(b, his),
                              rab_block(b, his + mask), FX_PLAN_RECV, 0, step, last);
        }
    }
    return status;
}

static fx_status rab_build(struct rab *b, int nranks)
{
    int rem          = nranks - b->p;
    int vr           = fx_algo_vrank(b->rank, rem);
    int32_t last     = -1;
    fx_status status = FX_OK;

    if (vr < 0) {
        struct rd d = {.plan    = b->plan,
                       .rank    = b->rank,
                       .count   = b->count,
                       .chunk   = b->chunk,
                       .nchunks = fx_build_nchunks(b->count, b->chunk)};

        return rd_extra(&d);
    }
    rab_new_step(b, -1);
    if (b->rank < 2 * rem) {
        status = rab_recv(b, b->rank - 1, 0, b->count, FX_PLAN_RECV_REDUCE, FX_PLAN_SLOT_FIRST, 0,
                          &last);
        b->cur = FX_BUF_RECV;
    }
    if (status == FX_OK) {
        status = rab_reduce_scatter(b, vr, rem, &last);
    }
    if (status == FX_OK) {
        status = rab_allgather(b, vr, rem, &last);
    }
    if (status == FX_OK && b->rank < 2 * rem) {
        rab_new_step(b, last);
        status = rab_send(b, b->rank - 1, 0, b->count, FX_BUF_RECV, 0, 0);
    }
    return status;
}

fx_status fx_coll_rabenseifner_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                         size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    fx_status status = fx_algo_check(plan, nranks, rank, count, elem_size, 1);
    struct rab b;

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    if (nranks == 1 || count == 0) {
        return fx_algo_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, nranks == 1 ? count : 0,
                            FX_PLAN_FINAL, -1, NULL);
    }
    b           = (struct rab){.plan   = plan,
                               .rank   = rank,
                               .p      = fx_algo_pow2_floor(nranks),
                               .count  = count,
                               .chunk  = fx_build_chunk_elems(chunk_bytes, elem_size),
                               .nslots = nslots ? nslots : 1,
                               .cur    = FX_BUF_SEND};
    b.slot_last = malloc(sizeof(*b.slot_last) * b.nslots);
    if (b.slot_last == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    status = rab_build(&b, nranks);
    free(b.slot_last);
    plan->slot_count = b.chunk < count ? b.chunk : count;
    plan->nslots     = b.nslots < fx_build_nchunks(count, b.chunk)
                           ? b.nslots
                           : (uint32_t)fx_build_nchunks(count, b.chunk);
    return status;
}
