/*
 * Point-to-point plans: one message to a peer, one from a peer, or both at once.
 *
 * A message is cut into chunks of at most chunk_bytes (whole elements, at least one); both ends
 * cut alike, so the k-th chunk sent matches the k-th chunk received and each is one plan op,
 * within the executor's chunk limit. Receives land in the receive buffer directly: no scratch.
 *
 * An empty message is still one op, of count 0: its header travels alone, so both ends count
 * the message, and a receive of 0 elements that meets a send of 5 is a mismatch the receiver
 * reports instead of a wait that never ends.
 *
 * No op depends on another. The send lane and the receive lane move independently, so two
 * ranks that send to each other at once never wait on each other, even on a transport whose
 * sends complete only once the peer has read them (coll_plan.h, shared memory).
 */
#include "coll_plan.h"

/* Appends the ops of one message: kind, peer and buffer, count elements in chunks. */
static fx_status push_message(struct fx_plan *plan, uint8_t kind, uint8_t buf, int peer,
                              size_t count, size_t chunk)
{
    size_t offset = 0;
    uint32_t step = 0;

    do {
        size_t n = count - offset < chunk ? count - offset : chunk;

        if (fx_plan_push(plan, &(struct fx_plan_op){.kind   = kind,
                                                    .buf    = buf,
                                                    .peer   = peer,
                                                    .dep    = -1,
                                                    .offset = offset,
                                                    .count  = n,
                                                    .step   = step++}) < 0) {
            return FX_ERR_NO_MEMORY;
        }
        offset += n;
    } while (offset < count);
    return FX_OK;
}

static bool peer_ok(int peer, int nranks, int rank)
{
    return peer == -1 || (peer >= 0 && peer < nranks && peer != rank);
}

fx_status fx_coll_p2p_append(struct fx_plan *plan, int nranks, int rank, int dst, size_t send_count,
                             int src, size_t recv_count, size_t elem_size, size_t chunk_bytes)
{
    size_t chunk = elem_size > 0 ? chunk_bytes / elem_size : 0;
    size_t nops  = plan != NULL ? plan->nops : 0;
    fx_status status;

    if (plan == NULL || nranks < 1 || rank < 0 || rank >= nranks || elem_size == 0 ||
        !peer_ok(dst, nranks, rank) || !peer_ok(src, nranks, rank)) {
        return FX_ERR_INVALID_ARG;
    }
    chunk = chunk > 0 ? chunk : 1;
    status =
        dst >= 0 ? push_message(plan, FX_PLAN_SEND, FX_BUF_SEND, dst, send_count, chunk) : FX_OK;
    if (status == FX_OK && src >= 0) {
        status = push_message(plan, FX_PLAN_RECV, FX_BUF_RECV, src, recv_count, chunk);
    }
    if (status != FX_OK) {
        plan->nops = nops; /* the plan as it was */
    }
    return status;
}

fx_status fx_coll_p2p(struct fx_plan *plan, int nranks, int rank, int dst, size_t send_count,
                      int src, size_t recv_count, size_t elem_size, size_t chunk_bytes)
{
    if (plan == NULL || nranks < 1 || rank < 0 || rank >= nranks || elem_size == 0) {
        return FX_ERR_INVALID_ARG;
    }
    fx_plan_reset(plan);
    plan->nranks    = nranks;
    plan->rank      = rank;
    plan->count     = send_count;
    plan->elem_size = elem_size;
    return fx_coll_p2p_append(plan, nranks, rank, dst, send_count, src, recv_count, elem_size,
                              chunk_bytes);
}
