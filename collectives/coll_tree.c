/*
 * Double binary tree all-reduce.
 *
 * The tree over positions 0..n-1: take N, the power of two >= n, and the in-order binary tree
 * over 0..N-1 in which position p with lowest set bit b has children p - b/2 and p + b/2 (odd
 * positions are leaves) and 0 is the root with the single child N/2. Positions >= n are cut
 * off: a right child p + b/2 >= n is replaced by the first of p + b/4, p + b/8, ... that is
 * < n, the root of what remains of that subtree. Every even position keeps its left child, so
 * exactly the even positions are interior, and the height is ceil(log2 n).
 * Tree 0 puts rank r at position r. Tree 1 mirrors (n even: position n - 1 - r) or shifts (n
 * odd: position r - 1 mod n) the ranks, turning odd ranks into interior nodes: each rank is
 * interior in one tree and a leaf in the other, but for rank 0 when n is odd.
 *
 * Each tree carries half the buffer, pipelined in chunks. Ops are emitted chunk by chunk, for
 * each chunk first the reductions of both trees, then their broadcasts: on any link the
 * messages follow that one order on both ends, and every op waits only on ops of an earlier
 * chunk or stage, or on the node's children (reduction) or parent (broadcast), so no lane can
 * block a message another lane needs first.
 *
 * Reduction of a chunk at an interior node: the first child's chunk lands in a slot and is
 * reduced with the node's own data from FX_BUF_SEND into FX_BUF_RECV; the second child's lands
 * in the same slot, after the first has completed (its only dependency covers both the slot
 * and its local operand), and is reduced into FX_BUF_RECV. The first depends on the previous
 * user of its slot. The broadcast receive overwrites the chunk the node sent up; the final
 * data exists only once the parent has received that send, so it needs no dependency.
 */
#include <stdlib.h>

#include "coll_algo_inl.h"
#include "coll_algos.h"

static int lowbit(int p)
{
    return p & -p;
}

/* The parent position of p > 0 (see the head comment). */
static int pos_parent(int p, int n)
{
    int big = fx_algo_pow2_floor(n) < n ? 2 * fx_algo_pow2_floor(n) : n;

    do {
        int b = lowbit(p);

        p = (p & 2 * b) ? p - b : p + b;
        p = p == big ? 0 : p;
    } while (p >= n);
    return p;
}

static void pos_children(int p, int n, int kids[2])
{
    int b = lowbit(p);
    int j;

    kids[0] = -1;
    kids[1] = -1;
    if (p == 0) {
        kids[0] =
            n > 1 ? (fx_algo_pow2_floor(n) < n ? fx_algo_pow2_floor(n) : fx_algo_pow2_floor(n) / 2)
                  : -1;
        return;
    }
    if (b == 1) {
        return;
    }
    kids[0] = p - b / 2;
    for (j = b / 2; j >= 1 && p + j >= n; j /= 2) {
    }
    kids[1] = j >= 1 ? p + j : -1;
}

static int to_pos(int n, int tree, int rank)
{
    if (tree == 0) {
        return rank;
    }
    return n % 2 == 0 ? n - 1 - rank : (rank - 1 + n) % n;
}

static int to_rank(int n, int tree, int pos)
{
    if (tree == 0 || pos < 0) {
        return pos;
    }
    return n % 2 == 0 ? n - 1 - pos : (pos + 1) % n;
}

fx_status fx_coll_tree_links(int nranks, int rank, int tree, int *parent, int children[2])
{
    int pos;
    int kids[2];

    if (nranks < 1 || rank < 0 || rank >= nranks || tree < 0 || tree > 1 || parent == NULL ||
        children == NULL) {
        return FX_ERR_INVALID_ARG;
    }
    pos = to_pos(nranks, tree, rank);
    pos_children(pos, nranks, kids);
    *parent     = pos == 0 ? -1 : to_rank(nranks, tree, pos_parent(pos, nranks));
    children[0] = to_rank(nranks, tree, kids[0]);
    children[1] = to_rank(nranks, tree, kids[1]);
    return FX_OK;
}

struct tree {
    struct fx_plan *plan;
    size_t chunk;
    size_t off[2]; /* each tree's half of the buffer */
    size_t len[2];
    int parent[2];  /* per tree, -1 at the root */
    int kids[2][2]; /* per tree, -1 when absent */
    uint32_t nslots;
    uint32_t npairs; /* chunks reduced so far: the next one's slot is npairs % nslots */
    int32_t *slot_user;
    int32_t ready[2]; /* per tree: the op holding the current chunk's final data */
};

static size_t tree_chunk_len(const struct tree *t, int tr, size_t c)
{
    size_t done = c * t->chunk;

    if (done >= t->len[tr]) {
        return 0;
    }
    return t->len[tr] - done < t->chunk ? t->len[tr] - done : t->chunk;
}

/* A leaf sends its chunk up from FX_BUF_SEND. */
static fx_status tree_leaf_up(struct tree *t, int tr, uint64_t off, size_t len)
{
    return fx_build_push(t->plan, (struct fx_plan_op){.kind   = FX_PLAN_SEND,
                                                      .buf    = FX_BUF_SEND,
                                                      .peer   = t->parent[tr],
                                                      .dep    = -1,
                                                      .offset = off,
                                                      .count  = len}) < 0
               ? FX_ERR_NO_MEMORY
               : FX_OK;
}

/* Reduces the children's chunk into FX_BUF_RECV and sends it up (or, at the root, finishes). */
static fx_status tree_up(struct tree *t, int tr, size_t c)
{
    uint64_t off = t->off[tr] + c * t->chunk;
    size_t len   = tree_chunk_len(t, tr, c);
    bool root    = t->parent[tr] < 0;
    uint32_t slot;
    int32_t dep;

    if (t->kids[tr][0] < 0) {
        return tree_leaf_up(t, tr, off, len);
    }
    slot = t->npairs++ % t->nslots;
    dep  = t->slot_user[slot];
    for (int k = 0; k < 2 && t->kids[tr][k] >= 0; k++) {
        bool last = k == 1 || t->kids[tr][1] < 0;

        dep = fx_build_push(t->plan, (struct fx_plan_op){
                                         .kind       = FX_PLAN_RECV_REDUCE,
                                         .buf        = FX_BUF_RECV,
                                         .src        = k == 0 ? FX_BUF_SEND : FX_BUF_RECV,
                                         .flags      = root && last ? FX_PLAN_FINAL : 0,
                                         .peer       = t->kids[tr][k],
                                         .dep        = dep,
                                         .slot       = slot,
                                         .offset     = off,
                                         .src_offset = off,
                                         .count      = len,
                                     });
        if (dep < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    t->slot_user[slot] = dep;
    t->ready[tr]       = dep;
    if (root) {
        return FX_OK;
    }
    return fx_build_push(t->plan, (struct fx_plan_op){.kind   = FX_PLAN_SEND,
                                                      .buf    = FX_BUF_RECV,
                                                      .peer   = t->parent[tr],
                                                      .dep    = dep,
                                                      .offset = off,
                                                      .count  = len}) < 0
               ? FX_ERR_NO_MEMORY
               : FX_OK;
}

/* Receives the final chunk from the parent (but at the root) and sends it to the children. */
static fx_status tree_down(struct tree *t, int tr, size_t c)
{
    uint64_t off = t->off[tr] + c * t->chunk;
    size_t len   = tree_chunk_len(t, tr, c);

    if (t->parent[tr] >= 0) {
        t->ready[tr] = fx_build_push(t->plan, (struct fx_plan_op){.kind   = FX_PLAN_RECV,
                                                                  .buf    = FX_BUF_RECV,
                                                                  .peer   = t->parent[tr],
                                                                  .dep    = -1,
                                                                  .offset = off,
                                                                  .count  = len,
                                                                  .phase  = 1});
        if (t->ready[tr] < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    for (int k = 0; k < 2 && t->kids[tr][k] >= 0; k++) {
        if (fx_build_push(t->plan, (struct fx_plan_op){.kind   = FX_PLAN_SEND,
                                                       .buf    = FX_BUF_RECV,
                                                       .peer   = t->kids[tr][k],
                                                       .dep    = t->ready[tr],
                                                       .offset = off,
                                                       .count  = len,
                                                       .phase  = 1}) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

static fx_status tree_build(struct tree *t, int nranks, int rank)
{
    size_t nchunks   = fx_build_nchunks(t->len[0], t->chunk);
    fx_status status = FX_OK;

    for (int tr = 0; tr < 2; tr++) {
        fx_coll_tree_links(nranks, rank, tr, &t->parent[tr], t->kids[tr]);
    }
    for (size_t c = 0; c < nchunks && status == FX_OK; c++) {
        for (int stage = 0; stage < 2 && status == FX_OK; stage++) {
            for (int tr = 0; tr < 2 && status == FX_OK; tr++) {
                if (tree_chunk_len(t, tr, c) == 0) {
                    continue;
                }
                status = stage == 0 ? tree_up(t, tr, c) : tree_down(t, tr, c);
            }
        }
    }
    return status;
}

fx_status fx_coll_tree_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    fx_status status = fx_algo_check(plan, nranks, rank, count, elem_size, 1);
    struct tree t;

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    if (nranks == 1 || count == 0) {
        return fx_algo_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, nranks == 1 ? count : 0,
                            FX_PLAN_FINAL, -1, NULL);
    }
    t           = (struct tree){.plan = plan, .nslots = nslots ? nslots : 1};
    t.chunk     = fx_build_chunk_elems(chunk_bytes, elem_size);
    t.len[0]    = count - count / 2;
    t.len[1]    = count / 2;
    t.off[1]    = t.len[0];
    t.slot_user = malloc(sizeof(*t.slot_user) * t.nslots);
    if (t.slot_user == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < t.nslots; i++) {
        t.slot_user[i] = -1;
    }
    status           = tree_build(&t, nranks, rank);
    plan->nslots     = t.npairs < t.nslots ? t.npairs : t.nslots;
    plan->slot_count = plan->nslots ? (t.chunk < t.len[0] ? t.chunk : t.len[0]) : 0;
    free(t.slot_user);
    return status;
}
