/*
 * Two-rank exchange all-reduce for small messages: each rank sends its whole buffer to the
 * other, receives the other's into a scratch slot and reduces. One message latency instead of
 * the ring's two (reduce-scatter, then all-gather).
 *
 * Both ranks compute every element, so both must compute it alike: the reduction always takes
 * rank 0's data as the first operand (rank 1 reduces with FX_PLAN_SLOT_FIRST). For a commutative
 * op this changes nothing; it keeps NaN payloads of MIN/MAX and the like bitwise identical.
 *
 * No receive depends on the send: a transport may complete a large send only once the peer has
 * read it (shared memory's single copy), and the peer reads only into a posted receive, so a
 * receive waiting for the send would deadlock both ranks. In place, the reduction must then not
 * overwrite the send buffer the peer may still be reading: the plan first copies the input to
 * scratch slot 0, sends from there and reduces from there, and receives into slot 1.
 */
#include "coll_plan.h"

static int push(struct fx_plan *plan, struct fx_plan_op op)
{
    return fx_plan_push(plan, &op);
}

fx_status fx_coll_pair_allreduce(struct fx_plan *plan, int rank, size_t count, size_t elem_size,
                                 bool in_place)
{
    uint32_t flags = FX_PLAN_FINAL | (rank == 1 ? FX_PLAN_SLOT_FIRST : 0u);
    int copy;

    if (plan == NULL || rank < 0 || rank > 1 || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    fx_plan_reset(plan);
    plan->nranks     = 2;
    plan->rank       = rank;
    plan->count      = count;
    plan->elem_size  = elem_size;
    plan->nslots     = count == 0 ? 0 : in_place ? 2 : 1;
    plan->slot_count = count;
    if (count == 0) {
        return FX_OK;
    }
    if (!in_place) {
        if (push(plan, (struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                           .buf   = FX_BUF_SEND,
                                           .peer  = 1 - rank,
                                           .dep   = -1,
                                           .count = count}) < 0 ||
            push(plan, (struct fx_plan_op){.kind  = FX_PLAN_RECV_REDUCE,
                                           .buf   = FX_BUF_RECV,
                                           .src   = FX_BUF_SEND,
                                           .flags = (uint8_t)flags,
                                           .peer  = 1 - rank,
                                           .dep   = -1,
                                           .slot  = 0,
                                           .count = count}) < 0) {
            return FX_ERR_NO_MEMORY;
        }
        return FX_OK;
    }
    copy = push(plan, (struct fx_plan_op){.kind       = FX_PLAN_COPY,
                                          .buf        = FX_BUF_SCRATCH,
                                          .src        = FX_BUF_SEND,
                                          .peer       = -1,
                                          .dep        = -1,
                                          .src_offset = 0,
                                          .count      = count});
    if (copy < 0 ||
        push(plan, (struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                       .buf   = FX_BUF_SCRATCH,
                                       .peer  = 1 - rank,
                                       .dep   = copy,
                                       .count = count}) < 0 ||
        push(plan, (struct fx_plan_op){.kind  = FX_PLAN_RECV_REDUCE,
                                       .buf   = FX_BUF_RECV,
                                       .src   = FX_BUF_SCRATCH,
                                       .flags = (uint8_t)flags,
                                       .peer  = 1 - rank,
                                       .dep   = copy,
                                       .slot  = 1,
                                       .count = count}) < 0) {
        return FX_ERR_NO_MEMORY;
    }
    return FX_OK;
}
