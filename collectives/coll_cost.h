/*
 * Alpha-beta-gamma cost model of the collective algorithms, for a tuner choosing among them.
 * alpha: seconds per message on the critical path (latency), beta: seconds per byte a rank
 * sends (link occupancy), gamma: seconds per byte a rank reduces.
 *
 * For nranks, count elements of elem_size bytes and chunk_bytes (0: 1 MiB, at least one
 * element, as the plans cut messages), each function writes:
 *  - steps: messages on the critical path, the latency terms. The simulator's depth counts a
 *    send and its receive as two levels, so a plan's depth is 2 * steps (plus 1 where a copy
 *    to scratch comes first), or a little less where a fold overlaps other ranks' first steps
 *    or empty blocks send nothing, or a little more for the tree, whose nodes take their two
 *    children's chunks one after the other (tests/unit/collectives/test_cost.c);
 *  - bytes: bytes sent by the busiest rank (the simulator's largest rank_bytes_sent);
 *  - reduced_bytes: bytes the busiest rank reduces;
 *  - time_s: steps * alpha + bytes * beta + reduced_bytes * gamma for the algorithms that
 *    move whole buffers step by step or stream at link rate (ring, exchange, recursive
 *    doubling and halving, Bruck, binomial, pairwise, dissemination); for the pipelined ones
 *    (chain, tree), with S = steps stages and k chunks of c bytes, the pipeline's fill and
 *    drain on top of the busiest rank's streaming:
 *    (S + k - 1) * alpha + (bytes + (S - 1) * c) * beta + (reduced_bytes + (S - 1) * c) * gamma
 *    (the gamma term only where the algorithm reduces).
 * Counts: all-reduce, broadcast, reduce: elements of the whole buffer; all-gather: elements
 * each rank contributes; reduce-scatter: elements each rank ends with (n * count in); alltoall:
 * elements each rank sends to each other rank; barrier: count is ignored.
 * nranks 1 and count 0 cost nothing (barrier: nothing for nranks 1).
 * Returns FX_OK; FX_ERR_INVALID_ARG (p or out NULL, a negative or non-finite parameter,
 * nranks < 1, elem_size 0, a byte size that overflows); FX_ERR_UNSUPPORTED where the
 * algorithm does not apply (pair: nranks != 2; rd_allgather: nranks not a power of two).
 * *out is written only on success.
 */
#ifndef FX_COLL_COST_H
#define FX_COLL_COST_H

#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

struct fx_cost_params {
    double alpha_s;          /* seconds per message on the critical path */
    double beta_s_per_byte;  /* seconds per byte sent */
    double gamma_s_per_byte; /* seconds per byte reduced */
};

struct fx_cost {
    uint32_t steps;         /* messages on the critical path */
    uint64_t bytes;         /* bytes sent by the busiest rank */
    uint64_t reduced_bytes; /* bytes reduced by the busiest rank */
    double time_s;          /* predicted time */
};

fx_status fx_cost_ring_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_pair_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_tree_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_rd_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_rabenseifner_allreduce(const struct fx_cost_params *p, int nranks, size_t count,
                                         size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_ring_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                                 size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_rd_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_bruck_allgather(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_ring_reduce_scatter(const struct fx_cost_params *p, int nranks, size_t count,
                                      size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_chain_broadcast(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_binomial_broadcast(const struct fx_cost_params *p, int nranks, size_t count,
                                     size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_chain_reduce(const struct fx_cost_params *p, int nranks, size_t count,
                               size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_binomial_reduce(const struct fx_cost_params *p, int nranks, size_t count,
                                  size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_pairwise_alltoall(const struct fx_cost_params *p, int nranks, size_t count,
                                    size_t elem_size, size_t chunk_bytes, struct fx_cost *out);
fx_status fx_cost_dissemination_barrier(const struct fx_cost_params *p, int nranks, size_t count,
                                        size_t elem_size, size_t chunk_bytes, struct fx_cost *out);

#endif /* FX_COLL_COST_H */
