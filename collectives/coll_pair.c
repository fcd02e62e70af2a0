/*
 * Two-rank exchange all-reduce for small messages: each rank sends its whole buffer to the
 * other, receives the other's into a scratch slot and reduces. One message latency instead of
 * the ring's two (reduce-scatter, then all-gather).
 *
 * Both ranks compute every element, so both must compute it alike: the reduction always takes
 * rank 0's data as the first operand (rank 1 reduces with FX_PLAN_SLOT_FIRST). For a commutative
 * op this changes nothing; it keeps NaN payloads of MIN/MAX and the like bitwise identical.
 *
 * In place, the receive may only overwrite the buffer once the send has read it: the reduce
 * depends on the send.
 */
#include "coll_plan.h"

fx_status fx_coll_pair_allreduce(struct fx_plan *plan, int rank, size_t count, size_t elem_size)
{
    int send_idx;

    if (plan == NULL || rank < 0 || rank > 1 || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    fx_plan_reset(plan);
    plan->nranks     = 2;
    plan->rank       = rank;
    plan->count      = count;
    plan->elem_size  = elem_size;
    plan->nslots     = count > 0 ? 1 : 0;
    plan->slot_count = count;
    if (count == 0) {
        return FX_OK;
    }
    send_idx = fx_plan_push(plan, &(struct fx_plan_op){
                                      .kind  = FX_PLAN_SEND,
                                      .buf   = FX_BUF_SEND,
                                      .peer  = 1 - rank,
                                      .dep   = -1,
                                      .count = count,
                                  });
    if (send_idx < 0 ||
        fx_plan_push(plan, &(struct fx_plan_op){
                               .kind  = FX_PLAN_RECV_REDUCE,
                               .buf   = FX_BUF_RECV,
                               .src   = FX_BUF_SEND,
                               .flags = FX_PLAN_FINAL | (rank == 1 ? FX_PLAN_SLOT_FIRST : 0u),
                               .peer  = 1 - rank,
                               .dep   = send_idx,
                               .count = count,
                           }) < 0) {
        return FX_ERR_NO_MEMORY;
    }
    return FX_OK;
}
