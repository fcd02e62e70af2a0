/*
 * Rooted plans: chain and binomial-tree broadcast and reduce (see coll_set.h).
 *
 * Chains follow the ring order from the root: a broadcast flows root -> next -> ... and a
 * reduce flows from the rank after the root around to the root. Trees are binomial over
 * v = rank - root (mod n): v's parent is v - lowbit(v), its children v + m for the powers of two
 * m below lowbit(v) (all below n for the root) with v + m < n.
 *
 * Each chunk is forwarded as soon as it is complete at a rank, so chunks pipeline along the
 * chain or down (up) the tree. Broadcasts receive straight into the receive buffer and forward
 * from there. Reduces keep partials in scratch slots on non-roots; a slot holding a partial is
 * reused only after the send forwarding it has completed, so under rendezvous sends a receive
 * waits at most for the parent's receive of an earlier chunk, which ends.
 *
 * The binomial reduce adds a rank's children in a fixed order (v + 1, v + 2, v + 4, ...) into
 * one slot: its receives of a chunk depend on each other in that order, so two reductions never
 * touch the accumulator at once and the operand order is the same on every run. At the root
 * all receives form one chain, which is also what frees its single landing slot.
 */
#include "coll_build_inl.h"
#include "coll_set.h"

/* Ring neighbours and distance from the root along the ring. */
struct chain {
    int next;
    int prev;
    int d; /* 0 at the root, n - 1 at the end of a broadcast chain */
};

static fx_status chain_args(struct fx_plan *plan, int nranks, int rank, const int *order, int root,
                            size_t count, size_t elem_size, struct chain *ch)
{
    fx_status status = fx_build_check(plan, nranks, rank, count, elem_size);
    int pos;

    if (status != FX_OK) {
        return status;
    }
    if (root < 0 || root >= nranks || !fx_build_order_ok(order, nranks)) {
        return FX_ERR_INVALID_ARG;
    }
    pos      = fx_build_position(order, nranks, rank);
    ch->next = fx_build_at(order, nranks, pos + 1);
    ch->prev = fx_build_at(order, nranks, pos - 1);
    ch->d    = fx_build_mod(pos - fx_build_position(order, nranks, root), nranks);
    return FX_OK;
}

static int lowbit(int v)
{
    return v & -v;
}

/* The first power of two at or above n. */
static int pow2_ceil(int n)
{
    int m = 1;

    while (m < n) {
        m <<= 1;
    }
    return m;
}

/* Children of v in a binomial tree of n, smallest subtree first; returns how many. */
static int tree_children(int v, int n, int *child)
{
    int limit = v == 0 ? pow2_ceil(n) : lowbit(v);
    int k     = 0;

    for (int m = 1; m < limit && v + m < n; m <<= 1) {
        child[k++] = v + m;
    }
    return k;
}

static int send_op(struct fx_plan *plan, uint8_t buf, int peer, int32_t dep, size_t offset,
                   size_t len, uint32_t step)
{
    return fx_build_push(plan, (struct fx_plan_op){
                                   .kind   = FX_PLAN_SEND,
                                   .buf    = buf,
                                   .peer   = peer,
                                   .dep    = dep,
                                   .offset = offset,
                                   .count  = len,
                                   .step   = step,
                               });
}

static int recv_op(struct fx_plan *plan, int peer, size_t offset, size_t len, uint32_t step)
{
    return fx_build_push(plan, (struct fx_plan_op){
                                   .kind   = FX_PLAN_RECV,
                                   .buf    = FX_BUF_RECV,
                                   .peer   = peer,
                                   .dep    = -1,
                                   .offset = offset,
                                   .count  = len,
                                   .step   = step,
                               });
}

/*
 * One broadcast chunk at a rank: receive it from `from` (none at the root, which sends from
 * FX_BUF_SEND) and send it to each of to[0..nto), each send after the receive. The receive is
 * labelled `step` and the sends step + send_delta: the label a child's receive carries (the
 * executor checks that both ends agree).
 */
static fx_status bcast_chunk(struct fx_plan *plan, int from, const int *to, int nto, size_t offset,
                             size_t len, uint32_t step, uint32_t send_delta)
{
    int32_t dep = -1;

    if (from >= 0) {
        dep = recv_op(plan, from, offset, len, step);
        if (dep < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    for (int k = 0; k < nto; k++) {
        if (send_op(plan, from >= 0 ? FX_BUF_RECV : FX_BUF_SEND, to[k], dep, offset, len,
                    step + send_delta) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/* The whole broadcast at a rank, chunk by chunk; the root first copies its data. Chunk c is
 * labelled step + c, its sends step + c + send_delta (chain: a rank's distance from the root;
 * binomial: every hop of a chunk alike). */
static fx_status bcast_plan(struct fx_plan *plan, int from, const int *to, int nto, size_t count,
                            size_t chunk_bytes, uint32_t step, uint32_t send_delta)
{
    size_t chunk     = fx_build_chunk_elems(chunk_bytes, plan->elem_size);
    size_t nchunks   = fx_build_nchunks(count, chunk);
    fx_status status = FX_OK;

    if (from < 0) {
        status = fx_build_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, count);
    }
    for (size_t c = 0; c < nchunks && status == FX_OK; c++) {
        status = bcast_chunk(plan, from, to, nto, c * chunk, fx_build_chunk_len(count, chunk, c),
                             step + (uint32_t)c, send_delta);
    }
    return status;
}

fx_status fx_coll_bcast_chain(struct fx_plan *plan, int nranks, int rank, const int *order,
                              int root, size_t count, size_t elem_size, size_t chunk_bytes)
{
    struct chain ch;
    fx_status status = chain_args(plan, nranks, rank, order, root, count, elem_size, &ch);

    if (status != FX_OK) {
        return status;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    return bcast_plan(plan, ch.d == 0 ? -1 : ch.prev, &ch.next, ch.d < nranks - 1 ? 1 : 0, count,
                      chunk_bytes, (uint32_t)ch.d, 1);
}

fx_status fx_coll_bcast_binomial(struct fx_plan *plan, int nranks, int rank, int root, size_t count,
                                 size_t elem_size, size_t chunk_bytes)
{
    fx_status status = fx_build_check(plan, nranks, rank, count, elem_size);
    int child[32];
    int to[32];
    int v;
    int nchild;

    if (status != FX_OK) {
        return status;
    }
    if (root < 0 || root >= nranks) {
        return FX_ERR_INVALID_ARG;
    }
    fx_build_begin(plan, nranks, rank, count, elem_size);
    v      = fx_build_mod(rank - root, nranks);
    nchild = tree_children(v, nranks, child);
    for (int k = 0; k < nchild; k++) {
        /* Largest subtree first: it has the longest way to go. */
        to[k] = (child[nchild - 1 - k] + root) % nranks;
    }
    return bcast_plan(plan, v == 0 ? -1 : (v - lowbit(v) + root) % nranks, to, nchild, count,
                      chunk_bytes, 0, 0);
}

/* A receive that reduces into buf[offset..] with src[src_offset..] as the local operand. */
static int reduce_op(struct fx_plan *plan, int peer, int32_t dep, uint32_t slot, uint8_t buf,
                     size_t offset, uint8_t src, size_t src_offset, size_t len, uint8_t flags)
{
    return fx_build_push(plan, (struct fx_plan_op){
                                   .kind       = FX_PLAN_RECV_REDUCE,
                                   .buf        = buf,
                                   .src        = src,
                                   .flags      = flags,
                                   .peer       = peer,
                                   .dep        = dep,
                                   .slot       = slot,
                                   .offset     = offset,
                                   .src_offset = src_offset,
                                   .count      = len,
                               });
}

/* Everything a reducing rank needs to know about its chunks and slots. */
struct red {
    struct fx_plan *plan;
    size_t count;
    size_t chunk;
    size_t nchunks;
    uint32_t nslots;
};

/* A chain rank between the first and the root: reduce into a slot, forward from it. */
static fx_status chain_middle(const struct red *g, const struct chain *ch)
{
    int32_t slot_free[2] = {-1, -1};
    uint32_t nslots      = g->nslots < 2 ? g->nslots : 2;

    for (size_t c = 0; c < g->nchunks; c++) {
        size_t len    = fx_build_chunk_len(g->count, g->chunk, c);
        uint32_t slot = (uint32_t)(c % nslots);
        size_t sloff  = slot * g->plan->slot_count;
        int r         = reduce_op(g->plan, ch->prev, slot_free[slot], slot, FX_BUF_SCRATCH, sloff,
                                  FX_BUF_SEND, c * g->chunk, len, 0);

        if (r < 0) {
            return FX_ERR_NO_MEMORY;
        }
        slot_free[slot] = send_op(g->plan, FX_BUF_SCRATCH, ch->next, r, sloff, len, 0);
        if (slot_free[slot] < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/*
 * The root's receives, one chain over chunks and then children, all landing in slot 0: each
 * waits for the previous, which also frees the slot. from[0..nfrom) in reduction order.
 */
static fx_status root_reduce(const struct red *g, const int *from, int nfrom)
{
    int32_t last = -1;

    for (size_t c = 0; c < g->nchunks; c++) {
        size_t len = fx_build_chunk_len(g->count, g->chunk, c);
        size_t off = c * g->chunk;

        for (int k = 0; k < nfrom; k++) {
            last = reduce_op(g->plan, from[k], last, 0, FX_BUF_RECV, off,
                             k == 0 ? FX_BUF_SEND : FX_BUF_RECV, off, len,
                             k == nfrom - 1 ? FX_PLAN_FINAL : 0);
            if (last < 0) {
                return FX_ERR_NO_MEMORY;
            }
        }
    }
    return FX_OK;
}

/* A rank with nothing to receive sends its own data, chunk by chunk. */
static fx_status send_all(const struct red *g, int to)
{
    for (size_t c = 0; c < g->nchunks; c++) {
        if (send_op(g->plan, FX_BUF_SEND, to, -1, c * g->chunk,
                    fx_build_chunk_len(g->count, g->chunk, c), 0) < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

/* Common start of both reduces; *done is set when the plan is already complete. */
static fx_status reduce_begin(struct red *g, struct fx_plan *plan, int nranks, int rank,
                              size_t count, size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    fx_build_begin(plan, nranks, rank, count, elem_size);
    *g = (struct red){
        .plan   = plan,
        .count  = count,
        .chunk  = fx_build_chunk_elems(chunk_bytes, elem_size),
        .nslots = nslots,
    };
    g->nchunks       = fx_build_nchunks(count, g->chunk);
    plan->slot_count = g->chunk < count ? g->chunk : count;
    if (nranks == 1) {
        return fx_build_copy(plan, FX_BUF_RECV, 0, FX_BUF_SEND, 0, count);
    }
    return FX_OK;
}

fx_status fx_coll_reduce_chain(struct fx_plan *plan, int nranks, int rank, const int *order,
                               int root, size_t count, size_t elem_size, size_t chunk_bytes,
                               uint32_t nslots)
{
    struct chain ch;
    struct red g;
    fx_status status = chain_args(plan, nranks, rank, order, root, count, elem_size, &ch);

    if (status != FX_OK) {
        return status;
    }
    if (nranks > 1 && count > 0 && nslots < 1) {
        return FX_ERR_UNSUPPORTED;
    }
    status = reduce_begin(&g, plan, nranks, rank, count, elem_size, chunk_bytes, nslots);
    if (status != FX_OK || nranks == 1) {
        return status;
    }
    if (ch.d == 0) {
        status = root_reduce(&g, &ch.prev, 1);
    } else if (ch.d == 1) {
        status = send_all(&g, ch.next);
    } else {
        status = chain_middle(&g, &ch);
    }
    plan->nslots = fx_build_slots_used(plan);
    return status;
}

/*
 * A non-root tree rank with children: chunk c accumulates in slot i = c % npairs (the first
 * child's receive reduces into its own slot, with the rank's data as the local operand), later
 * children's chunks land in slot npairs + i and reduce into slot i, and the sum goes to the
 * parent from slot i. The first receive into slot i waits for the send of the chunk that used
 * it before, which itself followed that chunk's every receive, so slot npairs + i is free too.
 */
static fx_status tree_middle(const struct red *g, const int *from, int nfrom, int parent)
{
    uint32_t npairs = nfrom > 1 ? g->nslots / 2 : g->nslots;
    int32_t acc_free[16];

    npairs = npairs < 16 ? npairs : 16;
    for (uint32_t i = 0; i < npairs; i++) {
        acc_free[i] = -1;
    }
    for (size_t c = 0; c < g->nchunks; c++) {
        size_t len   = fx_build_chunk_len(g->count, g->chunk, c);
        uint32_t acc = (uint32_t)(c % npairs);
        size_t accof = acc * g->plan->slot_count;
        int32_t last = reduce_op(g->plan, from[0], acc_free[acc], acc, FX_BUF_SCRATCH, accof,
                                 FX_BUF_SEND, c * g->chunk, len, 0);

        for (int k = 1; k < nfrom && last >= 0; k++) {
            last = reduce_op(g->plan, from[k], last, npairs + acc, FX_BUF_SCRATCH, accof,
                             FX_BUF_SCRATCH, accof, len, 0);
        }
        if (last < 0) {
            return FX_ERR_NO_MEMORY;
        }
        acc_free[acc] = send_op(g->plan, FX_BUF_SCRATCH, parent, last, accof, len, 0);
        if (acc_free[acc] < 0) {
            return FX_ERR_NO_MEMORY;
        }
    }
    return FX_OK;
}

fx_status fx_coll_reduce_binomial(struct fx_plan *plan, int nranks, int rank, int root,
                                  size_t count, size_t elem_size, size_t chunk_bytes,
                                  uint32_t nslots)
{
    fx_status status = fx_build_check(plan, nranks, rank, count, elem_size);
    struct red g;
    int from[32];
    int nfrom;
    int v;
    int parent;

    if (status != FX_OK) {
        return status;
    }
    if (root < 0 || root >= nranks) {
        return FX_ERR_INVALID_ARG;
    }
    if (nranks > 1 && count > 0 && nslots < (nranks >= 3 ? 2u : 1u)) {
        return FX_ERR_UNSUPPORTED;
    }
    status = reduce_begin(&g, plan, nranks, rank, count, elem_size, chunk_bytes, nslots);
    if (status != FX_OK || nranks == 1) {
        return status;
    }
    v      = fx_build_mod(rank - root, nranks);
    nfrom  = tree_children(v, nranks, from);
    parent = (v - lowbit(v) + root) % nranks;
    for (int k = 0; k < nfrom; k++) {
        from[k] = (from[k] + root) % nranks;
    }
    if (v == 0) {
        status = root_reduce(&g, from, nfrom);
    } else if (nfrom == 0) {
        status = send_all(&g, parent);
    } else {
        status = tree_middle(&g, from, nfrom, parent);
    }
    plan->nslots = fx_build_slots_used(plan);
    return status;
}
