/*
 * Plans for the rest of the collective set: reduce-scatter, broadcast, reduce, barrier and
 * all-to-all, in the plan model of coll_plan.h.
 *
 * Common rules. Counts are elements of elem_size bytes; chunk_bytes cuts every message into
 * chunks of at most that many bytes (whole elements, at least one; 0: 1 MiB), and a plan's
 * scratch slots hold one chunk (slot_count = min(chunk, count) elements), as the ring plans do.
 * Every builder returns FX_OK, FX_ERR_INVALID_ARG (plan NULL, nranks < 1, rank or root out of
 * range, elem_size 0, order not a permutation, count * nranks * elem_size beyond SIZE_MAX) or
 * FX_ERR_NO_MEMORY; the reducing ones also FX_ERR_UNSUPPORTED when nslots is below the
 * minimum they document, which depends on nranks only, so every rank refuses alike and the
 * executor can fall back to another algorithm. Count 0 gives a plan with no ops (the barrier
 * excepted); nranks 1 a plan with at most one local COPY.
 *
 * Reductions: dst = local (op) received unless stated otherwise; the operand order of each
 * element follows the algorithm's fixed shape, never the schedule, so repeated runs agree
 * bit for bit. The final reduction of each element carries FX_PLAN_FINAL.
 *
 * Every plan here is free of deadlock also on transports whose sends complete only once the
 * receiver has posted the receive (coll_sim's rendezvous mode checks this).
 */
#ifndef FX_COLL_SET_H
#define FX_COLL_SET_H

#include <stddef.h>
#include <stdint.h>

#include "coll_plan.h"

/*
 * Ring reduce-scatter (coll_rs.c). FX_BUF_SEND holds nranks * count elements; block k
 * (offset k * count) of the reduction of all send buffers ends in rank k's FX_BUF_RECV,
 * offsets 0..count. order: ring order as for fx_coll_ring_allreduce_ordered (NULL: rank
 * order); rank order[p] sends to order[p + 1]. Each block is cut into chunks; the ops are
 * emitted chunk by chunk (all n - 1 steps of chunk c, then chunk c + 1), which costs no
 * bandwidth since all n blocks move at once and every link is busy at every step.
 * Partial sums live in scratch slots (a receive reduces into its own slot, the next step sends
 * from it); only the last hop reduces into FX_BUF_RECV, with FX_PLAN_FINAL. A slot is reused
 * once the send forwarding its partial has completed.
 * nslots: at least 1 for nranks 2 and 2 for nranks >= 3, else FX_ERR_UNSUPPORTED. With one slot
 * a rank could only take the next partial once its neighbour had taken the previous one, and
 * around the ring that waits on itself under rendezvous sends.
 * In place: the executor may alias FX_BUF_RECV to the rank's own block of the send buffer
 * (recvbuf == sendbuf + rank * count * elem_size). The plan writes FX_BUF_RECV only in the
 * final reductions of the own block, whose local operand is the very element written, and no
 * other op reads the own block of FX_BUF_SEND, so the plan is valid aliased or not.
 */
fx_status fx_coll_ring_reduce_scatter(struct fx_plan *plan, int nranks, int rank, const int *order,
                                      size_t count, size_t elem_size, size_t chunk_bytes,
                                      uint32_t nslots);

/*
 * Chain broadcast (coll_rooted.c): root sends count elements of FX_BUF_SEND to the next rank
 * in ring order (NULL order: rank order), which receives them into FX_BUF_RECV and forwards
 * them from there, chunk by chunk, so chunks pipeline down the chain. The root also copies
 * FX_BUF_SEND to its FX_BUF_RECV; the executor passes one buffer for both on the root, and
 * skips a copy onto itself.
 */
fx_status fx_coll_bcast_chain(struct fx_plan *plan, int nranks, int rank, const int *order,
                              int root, size_t count, size_t elem_size, size_t chunk_bytes);

/*
 * Binomial-tree broadcast (coll_rooted.c), buffers as for fx_coll_bcast_chain. With v = rank -
 * root (mod nranks), v receives from v - lowbit(v) and sends to v + m for each power of two
 * m < lowbit(v) (the root: m < nranks), largest subtree first. Each chunk is forwarded as soon
 * as it has arrived, so chunks pipeline down the tree: ceil(log2 nranks) levels.
 */
fx_status fx_coll_bcast_binomial(struct fx_plan *plan, int nranks, int rank, int root, size_t count,
                                 size_t elem_size, size_t chunk_bytes);

/*
 * Chain reduce (coll_rooted.c): the rank after root in ring order sends its FX_BUF_SEND, each
 * next rank reduces its own data with what arrived (in a scratch slot) and forwards it, and
 * root reduces the last partial into its FX_BUF_RECV with FX_PLAN_FINAL. Non-roots never touch
 * FX_BUF_RECV (it may be NULL there). In place (root's send and receive buffers the same) the
 * root's reductions read each element just before writing it, so the plan is valid for both.
 * nslots: at least 1 for nranks >= 2, else FX_ERR_UNSUPPORTED.
 */
fx_status fx_coll_reduce_chain(struct fx_plan *plan, int nranks, int rank, const int *order,
                               int root, size_t count, size_t elem_size, size_t chunk_bytes,
                               uint32_t nslots);

/*
 * Binomial-tree reduce (coll_rooted.c), the tree of fx_coll_bcast_binomial run backwards: a rank
 * reduces its children's partials into its own data in child order (v + 1, v + 2, v + 4, ...)
 * and sends the sum to its parent; the root reduces into FX_BUF_RECV (FX_PLAN_FINAL on the last
 * child). Non-roots keep partials in scratch: one slot accumulates a chunk, a second takes the
 * later children's chunks, so nslots >= 2 for nranks >= 3 (1 for nranks 2), else
 * FX_ERR_UNSUPPORTED. In place at the root as for fx_coll_reduce_chain.
 */
fx_status fx_coll_reduce_binomial(struct fx_plan *plan, int nranks, int rank, int root,
                                  size_t count, size_t elem_size, size_t chunk_bytes,
                                  uint32_t nslots);

/*
 * Dissemination barrier (coll_a2a.c): ceil(log2 nranks) rounds; in round k the rank sends an
 * empty message to rank + 2^k and receives one from rank - 2^k, and round k's send waits for
 * round k - 1's receive. Buffers are never touched (they may be NULL); elem_size 1, count 0.
 */
fx_status fx_coll_barrier(struct fx_plan *plan, int nranks, int rank);

/*
 * Pairwise all-to-all (coll_a2a.c): block d (count elements at d * count) of FX_BUF_SEND goes
 * to block rank (at rank * count) of rank d's FX_BUF_RECV; the own block by a COPY. Step s
 * (1..nranks-1) sends to rank + s and receives from rank - s, each cut into chunks. No op
 * depends on another. Not in place: the send and receive buffers must not overlap.
 */
fx_status fx_coll_alltoall_pairwise(struct fx_plan *plan, int nranks, int rank, size_t count,
                                    size_t elem_size, size_t chunk_bytes);

#endif /* FX_COLL_SET_H */
