/*
 * More all-reduce and all-gather algorithms, as plans (coll_plan.h): a double binary tree
 * (coll_tree.c), recursive doubling and Rabenseifner's reduce-scatter + all-gather (coll_rd.c),
 * and recursive-doubling and Bruck all-gathers (coll_gather.c). Each is a pure function of
 * (nranks, rank, count, elem_size, chunking) and gives one rank's plan; all ranks' plans of one
 * call run together.
 *
 * Common contract, as for the ring plans:
 *  - nranks >= 1 and count >= 0: count 0 gives an empty plan, nranks 1 a local COPY (with
 *    FX_PLAN_FINAL for all-reduce);
 *  - messages are cut into chunks of at most chunk_bytes (whole elements, at least one; 0 means
 *    1 MiB), and plan->slot_count * elem_size <= chunk_bytes;
 *  - all-reduce plans are valid in place (FX_BUF_SEND aliased to FX_BUF_RECV) and out of place;
 *    all-gather plans in place when FX_BUF_SEND is the rank's own block of FX_BUF_RECV;
 *  - no receive depends on a send of the same exchange, so the plans also run where a send
 *    completes only once its receiver has posted the receive;
 *  - every element's FX_PLAN_FINAL reduction happens once per element on each rank that
 *    computes it, and every rank ends with bitwise identical results.
 * Returns FX_OK, FX_ERR_INVALID_ARG (plan NULL, nranks < 1, rank out of range, elem_size 0,
 * a byte size that overflows), FX_ERR_UNSUPPORTED (see each function) or FX_ERR_NO_MEMORY.
 */
#ifndef FX_COLL_ALGOS_H
#define FX_COLL_ALGOS_H

#include <stddef.h>
#include <stdint.h>

#include "coll_plan.h"

/*
 * Double binary tree all-reduce. Tree 1 is an in-order binary tree over the ranks whose odd
 * ranks are leaves; tree 2 is the same tree over ranks mirrored (n even: rank n - 1 - p at
 * position p) or shifted by one (n odd: rank p + 1), so that a rank interior in one tree is a
 * leaf in the other (for odd n, rank 0 may be interior in both). The first ceil(count / 2)
 * elements are reduced up tree 1 to its root and broadcast back down, the rest over tree 2,
 * each half pipelined in chunks. Interior nodes reduce their children's chunks into FX_BUF_RECV
 * (their own data read from FX_BUF_SEND) and send the partial up; the root's last reduction
 * carries FX_PLAN_FINAL; everyone receives the final chunks into FX_BUF_RECV. nslots (0 taken
 * as 1) bounds the chunks being reduced at once; both children of a chunk share its slot.
 */
fx_status fx_coll_tree_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes, uint32_t nslots);

/*
 * The binary tree of fx_coll_tree_allreduce: tree 0 or 1, for `rank` of `nranks`. Writes its
 * parent (-1 at the root) and its children, left then right in the tree's in-order (-1 when
 * absent; a node with one child has it in children[0]).
 * Returns FX_ERR_INVALID_ARG for a bad tree, nranks or rank.
 */
fx_status fx_coll_tree_links(int nranks, int rank, int tree, int *parent, int children[2]);

/*
 * Recursive-doubling all-reduce for small messages: log2(p) exchanges of the whole buffer
 * between ranks whose virtual ranks differ in one bit, p the largest power of two <= nranks.
 * The first 2 * (nranks - p) ranks pair up first: each even one sends its input to the odd one
 * above it, which takes part in its place and sends it the result at the end. At each exchange
 * both partners compute (lower virtual rank's value) (op) (upper's), so every rank ends bitwise
 * identical; only the last exchange's reductions carry FX_PLAN_FINAL.
 * Every intermediate value gets its own scratch slots (the input is first copied to scratch),
 * so nothing a pending send reads is ever overwritten: a rank needs (log2(p) + 1) * nchunks
 * slots, nchunks = ceil(count / chunk elements). Returns FX_ERR_UNSUPPORTED, on every rank
 * alike, when that exceeds nslots (0 taken as 1; for nranks >= 2 and count > 0), so the
 * caller can fall back to another algorithm.
 */
fx_status fx_coll_rd_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                               size_t elem_size, size_t chunk_bytes, uint32_t nslots);

/*
 * Rabenseifner all-reduce: a reduce-scatter by recursive halving over p = 2^k virtual ranks
 * (the buffer cut into p blocks, as the ring cuts it into segments) leaves virtual rank v with
 * block v reduced (FX_PLAN_FINAL), and an all-gather by recursive doubling copies every block
 * to all. Extra ranks fold in and get the result as in fx_coll_rd_allreduce. Each element's
 * final value is computed once and copied, so every rank ends bitwise identical. nslots (0
 * taken as 1) bounds the receives being reduced at once.
 */
fx_status fx_coll_rabenseifner_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                         size_t elem_size, size_t chunk_bytes, uint32_t nslots);

/*
 * Recursive-doubling all-gather: at step k each rank exchanges the 2^k blocks it holds with
 * the rank that differs in bit k; blocks land at their final offsets (rank r's at r * count).
 * Returns FX_ERR_UNSUPPORTED when nranks is not a power of two.
 */
fx_status fx_coll_rd_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                               size_t elem_size, size_t chunk_bytes);

/*
 * Bruck all-gather, any nranks: at step k rank r sends the min(2^k, n - 2^k) blocks of ranks
 * r, r + 1, ... (mod n) it holds to rank r - 2^k and receives those of ranks r + 2^k, ... from
 * rank r + 2^k, ceil(log2 n) steps. Blocks go straight to their final offsets, so no rotation
 * is needed at the end: a message whose blocks wrap past rank n - 1 is sent as two ranges.
 */
fx_status fx_coll_bruck_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                                  size_t elem_size, size_t chunk_bytes);

#endif /* FX_COLL_ALGOS_H */
