/*
 * In-memory plan simulator: runs every rank's plan of one collective in one process, one
 * thread, no sockets, following the ordering rules of coll_plan.h. Tests use it to check plans
 * for correctness (the data that lands), for protocol errors (length mismatches, deadlocks,
 * leftover messages) and for cost (bytes per link and per rank, critical-path depth).
 *
 * Model: each rank has one lane per peer for sends, one per peer for receives and one for local
 * copies; a lane posts its ops in ops[] order, each once its `dep` has completed. A SEND copies
 * its bytes into a FIFO message queue (src, dst) and completes at once. A receive completes when
 * the head message of the queue (peer, me) exists: its length, step and phase must equal the
 * receive's exactly (the executor checks them in every message header).
 * FX_PLAN_RECV copies it to buf + offset; FX_PLAN_RECV_REDUCE copies it into its scratch slot
 * and calls the reduce callback. A COPY is a memmove, skipped when source and destination are
 * the same memory (in place). An op of count 0 touches no memory, so its buffer may be NULL.
 *
 * Rendezvous mode models transports that complete a send only once the receiver has posted
 * the matching receive (its dependency completed and the receives before it in its lane done):
 * the message still travels as above, but the send waits for that. Plans that complete only
 * because sends are buffered deadlock there, as they would on such a transport.
 */
#ifndef FX_COLL_SIM_H
#define FX_COLL_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "coll_plan.h"

/*
 * dst[i] = local[i] (op) slot[i] for i < count elements; `final` is 1 when the op carries
 * FX_PLAN_FINAL. dst and local may be the same memory (in place).
 */
typedef void (*fx_coll_sim_reduce_fn)(void *ctx, void *dst, const void *local, const void *slot,
                                      size_t count, int final);

/* One rank's plan and buffers. Counts are in elements of the plan's elem_size. */
struct fx_coll_sim_rank {
    const struct fx_plan *plan;
    const void *sendbuf; /* FX_BUF_SEND; never written */
    size_t send_count;   /* elements readable at sendbuf */
    void *recvbuf;       /* FX_BUF_RECV; may equal sendbuf (in place) */
    size_t recv_count;   /* elements writable at recvbuf */
};

struct fx_coll_sim_result {
    fx_status status;
    char error[512]; /* empty on success, else the first error with ranks and op indices */
    int nranks;
    uint64_t *link_bytes;      /* [src * nranks + dst]: bytes sent from src to dst */
    uint64_t *link_msgs;       /* [src * nranks + dst]: messages sent from src to dst */
    uint64_t *rank_bytes_sent; /* [rank]: bytes the rank sent */
    uint64_t total_bytes;
    uint64_t total_msgs;
    uint32_t depth; /* critical path: 1 + max(dep, matching send), maximised over all ops */
    size_t passes;  /* scheduler passes over all ranks */
};

/*
 * Runs the plans of ranks[0..nranks) (ranks[i].plan->rank must be i) with the caller's reduce
 * callback (may be NULL when no plan has FX_PLAN_RECV_REDUCE). seed 0 schedules greedily in
 * rank and lane order; another seed rotates the order and posts one op per lane per visit, to
 * try other interleavings. The simulator allocates each rank's scratch
 * (nslots * slot_count * elem_size bytes).
 * *res is always filled (release it with fx_coll_sim_result_fini) and its status returned:
 * FX_OK; FX_ERR_INVALID_ARG (inconsistent plans, an op out of its buffer's bounds, a bad dep,
 * peer or slot, a write to the send buffer); FX_ERR_MISMATCH (a message whose length differs
 * from its receive, or messages never received); FX_ERR_INTERNAL (deadlock: no op can progress);
 * FX_ERR_NO_MEMORY.
 */
fx_status fx_coll_sim_run(const struct fx_coll_sim_rank *ranks, int nranks,
                          fx_coll_sim_reduce_fn reduce, void *ctx, uint32_t seed,
                          struct fx_coll_sim_result *res);

/* Simulator options: seed as for fx_coll_sim_run; rendezvous non-zero for rendezvous mode. */
struct fx_coll_sim_opts {
    uint32_t seed;
    int rendezvous;
};

/* fx_coll_sim_run with options (NULL: seed 0, eager sends). */
fx_status fx_coll_sim_run_opts(const struct fx_coll_sim_rank *ranks, int nranks,
                               fx_coll_sim_reduce_fn reduce, void *ctx,
                               const struct fx_coll_sim_opts *opts, struct fx_coll_sim_result *res);

/* Frees the result's arrays; safe on a zeroed or already released result. */
void fx_coll_sim_result_fini(struct fx_coll_sim_result *res);

#endif /* FX_COLL_SIM_H */
