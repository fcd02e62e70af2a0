/*
 * The executor: runs plans over transport connections.
 *
 * The operation at the head of the queue runs (a collective alone; consecutive point-to-point
 * calls together, as one plan that calls made meanwhile join, so that a rank's send and receive
 * of separate calls move at once); the plan's send and receive ops are grouped in lanes, one per
 * (peer, direction), each posted in plan order as soon as its dependency has completed. A
 * request completes once all its ops have, and after the requests before it. A connection completes
 * requests in order, so only the oldest posted request of a lane is tested. Received chunks are
 * checked against the header this rank expects, then reduced out of the scratch slot; later chunks
 * keep arriving in the socket buffers meanwhile, so the reduction of one chunk overlaps the
 * transfer of the next.
 *
 * Waiting (fx_exec_wait.c): a thread blocked in fx_wait drives progress itself (one thread does
 * the I/O, the reductions and the sleeping, as fast as a single-threaded loop); the progress
 * thread drives operations nobody waits for and listens to the control plane while the rank is
 * idle.
 */
#include "fx_exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "collectives/coll_kernels.h"
#include "collectives/coll_algos.h"
#include "collectives/coll_set.h"
#include "collectives/coll_tune.h"
#include "fx_conn.h"
#include "fx_log.h"
#include "fx_route.h"
#include "fx_sock.h"

#define AUTO_CHUNK_MAX   (512u << 10)
#define PEER_GRACE_MS    200
#define TICK_POLLS       64  /* polls between two looks at the clock for the statistics tick */
#define IDLE_CLOCK_EVERY 32u /* rounds without progress between two looks at the timeout */

/* The payload pointer of empty messages: transports never see NULL, even from a NULL buffer. */
static uint8_t no_payload[1];

/* ------------------------------------------------------------------ plan start */

/* Header blocks for ops [0, nops): added, never moved (transports write into them). */
static fx_status grow_hdr_blocks(struct fx_exec *ex, size_t nops)
{
    size_t need = (nops + FX_HDR_BLOCK - 1) / FX_HDR_BLOCK;
    void *p;

    if (need <= ex->nhdr_blocks) {
        return FX_OK;
    }
    if ((p = realloc(ex->hdr_blocks, need * sizeof(*ex->hdr_blocks))) == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    ex->hdr_blocks = p;
    while (ex->nhdr_blocks < need) {
        ex->hdr_blocks[ex->nhdr_blocks] = malloc(FX_HDR_BLOCK * sizeof(**ex->hdr_blocks));
        if (ex->hdr_blocks[ex->nhdr_blocks] == NULL) {
            return FX_ERR_NO_MEMORY;
        }
        ex->nhdr_blocks++;
    }
    return FX_OK;
}

static fx_status grow_arrays(struct fx_exec *ex, size_t nops)
{
    size_t cap = ex->cap ? ex->cap : 64;
    void *p;

    if (nops <= ex->cap) {
        return FX_OK;
    }
    if (nops >= FX_NO_OP) {
        return FX_ERR_NO_MEMORY; /* op numbers are 32-bit */
    }
    while (cap < nops) {
        cap *= 2;
    }
    if ((p = realloc(ex->op_done, cap)) == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    ex->op_done = p;
    if ((p = realloc(ex->tp_reqs, cap * sizeof(*ex->tp_reqs))) == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    ex->tp_reqs = p;
    if ((p = realloc(ex->op_req, cap * sizeof(*ex->op_req))) == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    ex->op_req = p;
    if ((p = realloc(ex->op_next, cap * sizeof(*ex->op_next))) == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    ex->op_next = p;
    if (grow_hdr_blocks(ex, cap) != FX_OK) {
        return FX_ERR_NO_MEMORY;
    }
    ex->cap = cap;
    return FX_OK;
}

/* Op i's wire header: the one it sends, or the one its receive gets. */
static uint8_t *hdr_ptr(struct fx_exec *ex, uint32_t i)
{
    return ex->hdr_blocks[i / FX_HDR_BLOCK][i % FX_HDR_BLOCK];
}

/* Bytes per element of op i (a point-to-point batch mixes datatypes). */
static size_t op_elem_size(const struct fx_exec *ex, uint32_t i)
{
    return fx_datatype_size(ex->op_req[i]->dtype);
}

/* Lane of an op: (peer, direction) for network ops, the local lane for copies. */
static int lane_key(const struct fx_comm *comm, const struct fx_plan_op *op)
{
    if (op->kind == FX_PLAN_COPY) {
        return 2 * comm->nranks;
    }
    return 2 * op->peer + (op->kind == FX_PLAN_SEND ? 1 : 0);
}

/* Puts the plan's ops [from, nops) at the ends of their lanes, making the lanes they open. */
static void add_ops(struct fx_comm *comm, size_t from)
{
    struct fx_exec *ex = &comm->exec;

    for (size_t i = from; i < ex->plan.nops; i++) {
        const struct fx_plan_op *op = &ex->plan.ops[i];
        int key                     = lane_key(comm, op);
        struct fx_lane *l;

        if (ex->lane_index[key] < 0) {
            l = &ex->lanes[ex->nlanes];
            memset(l, 0, sizeof(*l));
            l->first = FX_NO_OP;
            l->post  = FX_NO_OP;
            l->last  = FX_NO_OP;
            l->peer  = op->kind == FX_PLAN_COPY ? -1 : op->peer;
            l->send  = op->kind == FX_PLAN_SEND;
            if (l->peer >= 0) {
                l->ops  = fx_comm_peer_ops(comm, l->peer);
                l->conn = l->send ? comm->send_conns[l->peer] : comm->recv_conns[l->peer];
                /* No statistics yet while init measures the cost model (fx_tune.h). */
                l->stats = comm->links.dir != NULL
                               ? &comm->links.dir[l->peer][l->send ? FX_LINK_SEND : FX_LINK_RECV]
                               : NULL;
                ex->unconnected += l->conn == NULL;
            }
            ex->lane_index[key] = ex->nlanes++;
        }
        l              = &ex->lanes[ex->lane_index[key]];
        ex->op_next[i] = FX_NO_OP;
        if (l->last != FX_NO_OP) {
            ex->op_next[l->last] = (uint32_t)i;
        }
        l->last = (uint32_t)i;
        if (l->post == FX_NO_OP) {
            l->post = (uint32_t)i;
        }
        if (l->first == FX_NO_OP) {
            l->first = (uint32_t)i;
        }
    }
}

/* Makes the ops [from, nops) part of the running plan, as ops of req. */
static void adopt_ops(struct fx_comm *comm, struct fx_request *req, size_t from)
{
    struct fx_exec *ex = &comm->exec;

    for (size_t i = from; i < ex->plan.nops; i++) {
        ex->op_req[i]  = req;
        ex->op_done[i] = 0;
    }
    req->ops_left = ex->plan.nops - from;
    add_ops(comm, from);
}

/* Chooses the operation's algorithm and chunk (the same on every rank: the inputs are the
 * call's arguments and job-wide settings) and logs the choice at INFO when it changes for its
 * collective. */
/* memo_choose compares every input: a field added to the case must be compared there too. */
_Static_assert(sizeof(struct fx_tune_case) == 9 * sizeof(uint64_t),
               "struct fx_tune_case changed: update memo_choose");

/* fx_coll_choose through the memo: a case seen before (every input alike, the model's
 * parameters included) gets the answer it got then, without running the model again. */
static void memo_choose(struct fx_exec *ex, const struct fx_tune_case *tc,
                        struct fx_tune_choice *ch)
{
    uint64_t h = (uint64_t)tc->count * 0x9e3779b97f4a7c15ull ^
                 ((uint64_t)tc->coll << 8 | (uint64_t)tc->elem_size);
    struct fx_tune_memo *m = &ex->memo[(h ^ h >> 29) % FX_TUNE_MEMO];

    if (m->valid && m->tc.coll == tc->coll && m->tc.nranks == tc->nranks &&
        m->tc.count == tc->count && m->tc.elem_size == tc->elem_size &&
        m->tc.nslots == tc->nslots && m->tc.slot_bytes == tc->slot_bytes &&
        m->tc.chunk_bytes == tc->chunk_bytes && m->tc.forced == tc->forced &&
        m->tc.spans_hosts == tc->spans_hosts &&
        memcmp(&m->params, tc->params, sizeof(m->params)) == 0) {
        *ch = m->ch;
        return;
    }
    fx_coll_choose(tc, ch);
    m->tc        = *tc;
    m->tc.params = NULL;
    m->params    = *tc->params;
    m->ch        = *ch;
    m->valid     = true;
}

static void choose_algo(struct fx_comm *comm, const struct fx_request *req,
                        struct fx_tune_choice *ch)
{
    struct fx_exec *ex     = &comm->exec;
    struct fx_tune_case tc = {.coll        = (int)req->coll,
                              .nranks      = comm->nranks,
                              .count       = req->count,
                              .elem_size   = fx_datatype_size(req->dtype),
                              .nslots      = ex->nslots,
                              .slot_bytes  = ex->max_chunk,
                              .chunk_bytes = comm->boot.info.chunk_bytes,
                              .forced      = comm->boot.info.algos,
                              .params      = &comm->tune,
                              .spans_hosts = comm->nhosts > 1};

    if (req->coll == FX_COLL_SENDRECV) {
        *ch = (struct fx_tune_choice){.algo = FX_ALGO_P2P, .chunk_bytes = ex->max_chunk};
        return;
    }
    memo_choose(ex, &tc, ch);
    ex->last_coll = (int)req->coll;
    if (ch->algo != ex->last_algo[req->coll]) {
        fx_info(FX_SUB_COLL, "%s of count %zu on %d ranks: %s, chunk %zu (%s; model %.1f us)",
                fx_coll_name(req->coll), req->count, comm->nranks, fx_coll_algo_name(ch->algo),
                ch->chunk_bytes, ch->why, ch->predicted_s * 1e6);
        ex->last_algo[req->coll] = ch->algo;
    }
}

/* The plan of `algo` for the request; FX_ERR_UNSUPPORTED when the builder cannot run it with
 * this scratch. */
static fx_status build_algo(struct fx_comm *comm, const struct fx_request *req, int algo,
                            size_t chunk)
{
    struct fx_exec *ex = &comm->exec;
    struct fx_plan *pl = &ex->plan;
    size_t es          = fx_datatype_size(req->dtype);
    size_t cnt         = req->count;
    int n              = comm->nranks;
    int me             = comm->rank;
    const int *order   = comm->ring_order;
    enum fx_coll coll  = req->coll;
    uint32_t ns        = ex->nslots;

    switch (algo) {
    case FX_ALGO_P2P:
        return fx_coll_p2p(pl, n, me, req->send_peer, cnt, req->recv_peer, req->recv_count, es,
                           chunk);
    case FX_ALGO_PAIR:
        return fx_coll_pair_allreduce(pl, me, cnt, es, req->sendbuf == req->recvbuf);
    case FX_ALGO_RING:
        if (coll == FX_COLL_ALLREDUCE) {
            return fx_coll_ring_allreduce_ordered(pl, n, me, order, cnt, es, chunk, ns);
        }
        if (coll == FX_COLL_REDUCESCATTER) {
            return fx_coll_ring_reduce_scatter(pl, n, me, order, cnt, es, chunk, ns);
        }
        return fx_coll_ring_allgather_ordered(pl, n, me, order, cnt, es, chunk);
    case FX_ALGO_TREE:
        return fx_coll_tree_allreduce(pl, n, me, cnt, es, chunk, ns);
    case FX_ALGO_RD:
        if (coll == FX_COLL_ALLREDUCE) {
            return fx_coll_rd_allreduce(pl, n, me, cnt, es, chunk, ns);
        }
        return fx_coll_rd_allgather(pl, n, me, cnt, es, chunk);
    case FX_ALGO_RABENSEIFNER:
        return fx_coll_rabenseifner_allreduce(pl, n, me, cnt, es, chunk, ns);
    case FX_ALGO_BRUCK:
        return fx_coll_bruck_allgather(pl, n, me, cnt, es, chunk);
    case FX_ALGO_CHAIN:
        if (coll == FX_COLL_BROADCAST) {
            return fx_coll_bcast_chain(pl, n, me, order, req->root, cnt, es, chunk);
        }
        return fx_coll_reduce_chain(pl, n, me, order, req->root, cnt, es, chunk, ns);
    case FX_ALGO_BINOMIAL:
        if (coll == FX_COLL_BROADCAST) {
            return fx_coll_bcast_binomial(pl, n, me, req->root, cnt, es, chunk);
        }
        return fx_coll_reduce_binomial(pl, n, me, req->root, cnt, es, chunk, ns);
    case FX_ALGO_PAIRWISE:
        return fx_coll_alltoall_pairwise(pl, n, me, cnt, es, chunk);
    case FX_ALGO_DISSEMINATION:
        return fx_coll_barrier(pl, n, me);
    default:
        return FX_ERR_INTERNAL;
    }
}

/* What a collective falls back to when its chosen algorithm cannot run (every builder's limit
 * depends only on inputs all ranks share, so they all fall back alike). */
static int fallback_algo(enum fx_coll coll)
{
    switch (coll) {
    case FX_COLL_BROADCAST:
    case FX_COLL_REDUCE:
        return FX_ALGO_CHAIN;
    default:
        return FX_ALGO_RING;
    }
}

static fx_status build_plan(struct fx_comm *comm, struct fx_request *req)
{
    struct fx_tune_choice ch;
    fx_status status;
    int fb = fallback_algo(req->coll);

    choose_algo(comm, req, &ch);
    req->algo = ch.algo;
    status    = build_algo(comm, req, ch.algo, ch.chunk_bytes);
    if (status == FX_ERR_UNSUPPORTED && ch.algo != fb) {
        fx_info(FX_SUB_COLL, "%s: %s cannot run count %zu with %u scratch slots; %s instead",
                fx_coll_name(req->coll), fx_coll_algo_name(ch.algo), req->count, comm->exec.nslots,
                fx_coll_algo_name(fb));
        req->algo = fb;
        status    = build_algo(comm, req, fb, ch.chunk_bytes);
    }
    return status;
}

/* An operation as messages name it: "allreduce #6", "send #2 to rank 3", "recv #1 from rank 0",
 * "sendrecv #2 to rank 3, #1 from rank 0". */
static void op_name(const struct fx_request *req, char *buf, size_t len)
{
    unsigned long long sent = req->send_seq;
    unsigned long long got  = req->recv_seq;

    if (req->coll != FX_COLL_SENDRECV) {
        snprintf(buf, len, "%s #%llu", fx_coll_name(req->coll), (unsigned long long)req->seq);
    } else if (req->recv_peer < 0) {
        snprintf(buf, len, "send #%llu to rank %d", sent, req->send_peer);
    } else if (req->send_peer < 0) {
        snprintf(buf, len, "recv #%llu from rank %d", got, req->recv_peer);
    } else {
        snprintf(buf, len, "sendrecv #%llu to rank %d, #%llu from rank %d", sent, req->send_peer,
                 got, req->recv_peer);
    }
}

/* Most ops a point-to-point batch gathers; later calls wait for the next batch. */
#define BATCH_MAX_OPS (1u << 24)

/*
 * Appends a point-to-point call to the running plan. Messages match in order per pair and per
 * direction, and a lane posts its ops in plan order, so the call's messages to a peer leave
 * after those of earlier calls, and its receives meet the peer's messages in order.
 */
static fx_status append_p2p(struct fx_comm *comm, struct fx_request *req)
{
    struct fx_exec *ex = &comm->exec;
    size_t from        = ex->plan.nops;
    fx_status status;

    if (from >= BATCH_MAX_OPS) {
        return FX_ERR_NO_MEMORY;
    }
    status = fx_coll_p2p_append(&ex->plan, comm->nranks, comm->rank, req->send_peer, req->count,
                                req->recv_peer, req->recv_count, fx_datatype_size(req->dtype),
                                ex->max_chunk);
    if (status == FX_OK) {
        status = grow_arrays(ex, ex->plan.nops);
        if (status != FX_OK) {
            ex->plan.nops = from;
        }
    }
    if (status != FX_OK) {
        return status;
    }
    req->algo = FX_ALGO_P2P;
    adopt_ops(comm, req, from);
    ex->batch_last = req;
    return FX_OK;
}

static void log_start(struct fx_comm *comm, const struct fx_request *req, size_t from)
{
    char name[96];

    if (fx_log_enabled(FX_LOG_TRACE, FX_SUB_COLL)) {
        op_name(req, name, sizeof(name));
        fx_trace(FX_SUB_COLL, "%s: count %zu, %zu plan ops, %d lanes (%d to connect)", name,
                 req->count, comm->exec.plan.nops - from, comm->exec.nlanes,
                 comm->exec.unconnected);
    }
}

/*
 * Starts the request at the head of the queue: a collective alone; a point-to-point call
 * together with the calls queued behind it up to the next collective, as one plan (calls made
 * while it runs join it: submit_locked), so that a rank's isend and irecv move at once.
 */
static fx_status exec_start(struct fx_comm *comm, struct fx_request *req)
{
    struct fx_exec *ex   = &comm->exec;
    fx_status status     = build_plan(comm, req);
    struct fx_request *r = req->next;

    if (status == FX_OK) {
        status = grow_arrays(ex, ex->plan.nops);
    }
    if (status != FX_OK) {
        return status;
    }
    FX_ASSERT(ex->plan.nslots <= ex->nslots &&
              ex->plan.slot_count * fx_datatype_size(req->dtype) <= ex->max_chunk);
    ex->nlanes      = 0;
    ex->unconnected = 0;
    for (int k = 0; k <= 2 * comm->nranks; k++) {
        ex->lane_index[k] = -1;
    }
    adopt_ops(comm, req, 0);
    ex->batch_last = req;
    ex->running    = true;
    ex->progressed = true; /* the timeout counts from here (fx_exec_idle_ms) */
    log_start(comm, req, 0);
    /* A collective ends the batch; a call that did not fit runs in the next. */
    while (req->coll == FX_COLL_SENDRECV && r != NULL && r->coll == FX_COLL_SENDRECV) {
        size_t from = ex->plan.nops;

        if (append_p2p(comm, r) != FX_OK) {
            break;
        }
        log_start(comm, r, from);
        r = r->next;
    }
    return FX_OK;
}

/* ------------------------------------------------------------------ ops */

static uint8_t *buf_ptr(const struct fx_comm *comm, const struct fx_request *req, int which)
{
    switch (which) {
    case FX_BUF_SEND:
        return (uint8_t *)(uintptr_t)req->sendbuf;
    case FX_BUF_RECV:
        return req->recvbuf;
    default:
        return comm->exec.scratch;
    }
}

static void op_header(const struct fx_comm *comm, const struct fx_request *req,
                      const struct fx_plan_op *op, int src_rank, struct fx_wire_hdr *h)
{
    bool p2p   = req->coll == FX_COLL_SENDRECV;
    bool sends = op->kind == FX_PLAN_SEND;

    memset(h, 0, sizeof(*h));
    h->coll     = (uint8_t)req->coll;
    h->dtype    = (uint8_t)req->dtype;
    h->op       = (uint8_t)req->op; /* FX_NUM_OPS for collectives without a reduction */
    h->phase    = (uint8_t)op->phase;
    h->algo     = (uint8_t)req->algo;
    h->root     = req->root;
    h->src_rank = src_rank;
    h->comm_id  = comm->boot.info.comm_id;
    h->op_seq   = !p2p ? req->seq : sends ? req->send_seq : req->recv_seq;
    h->count    = p2p && !sends ? req->recv_count : req->count;
    h->offset   = op->offset;
    h->length   = op->count;
    h->step     = op->step;
}

/* Scratch slot k of the running plan: slots are plan.slot_count elements apart. */
static uint8_t *slot_ptr(struct fx_exec *ex, uint32_t k)
{
    return ex->scratch + (size_t)k * ex->plan.slot_count * ex->plan.elem_size;
}

static fx_status post_op(struct fx_comm *comm, struct fx_lane *lane, uint32_t i)
{
    struct fx_exec *ex          = &comm->exec;
    const struct fx_request *rq = ex->op_req[i];
    const struct fx_plan_op *op = &ex->plan.ops[i];
    size_t es                   = op_elem_size(ex, i);
    size_t bytes                = op->count * es;
    uint8_t *data = bytes > 0 ? buf_ptr(comm, rq, op->buf) + op->offset * es : no_payload;
    uint8_t *hdr  = hdr_ptr(ex, i);
    struct fx_wire_hdr h;

    if (op->kind == FX_PLAN_SEND) {
        op_header(comm, rq, op, comm->rank, &h);
        fx_wire_encode(&h, hdr);
        return lane->ops->isend(lane->conn, hdr, FX_WIRE_HDR_SIZE, data, bytes, &ex->tp_reqs[i]);
    }
    if (op->kind == FX_PLAN_RECV) {
        return lane->ops->irecv(lane->conn, hdr, FX_WIRE_HDR_SIZE, data, bytes, &ex->tp_reqs[i]);
    }
    return lane->ops->irecv(lane->conn, hdr, FX_WIRE_HDR_SIZE, slot_ptr(ex, op->slot), bytes,
                            &ex->tp_reqs[i]);
}

static void run_copy(struct fx_comm *comm, uint32_t i)
{
    const struct fx_plan_op *op = &comm->exec.plan.ops[i];
    const struct fx_request *rq = comm->exec.op_req[i];
    size_t es                   = op_elem_size(&comm->exec, i);
    uint8_t *dst                = buf_ptr(comm, rq, op->buf) + op->offset * es;
    const uint8_t *src          = buf_ptr(comm, rq, op->src) + op->src_offset * es;

    if (dst != src) {
        memcpy(dst, src, op->count * es);
    }
}

/* Checks a received header; on a mismatch breaks the communicator and returns false. */
static bool check_header(struct fx_comm *comm, const struct fx_lane *lane, uint32_t i)
{
    struct fx_exec *ex = &comm->exec;
    struct fx_wire_hdr got;
    struct fx_wire_hdr want;
    uint8_t expect[FX_WIRE_HDR_SIZE];
    char err[400];

    /* The usual case first: the header is byte for byte the one this rank would send. */
    op_header(comm, ex->op_req[i], &ex->plan.ops[i], lane->peer, &want);
    fx_wire_encode(&want, expect);
    if (memcmp(expect, hdr_ptr(ex, i), FX_WIRE_HDR_SIZE) == 0) {
        return true;
    }
    if (fx_wire_decode(hdr_ptr(ex, i), &got, err, sizeof(err)) == FX_OK &&
        fx_wire_check(&got, &want, comm->rank, err, sizeof(err)) == FX_OK) {
        return true;
    }
    fx_comm_fail(comm, FX_ERR_MISMATCH, -1, true, "%s", err);
    return false;
}

static void reduce_op(struct fx_comm *comm, uint32_t i)
{
    struct fx_exec *ex          = &comm->exec;
    const struct fx_plan_op *op = &ex->plan.ops[i];
    const struct fx_request *rq = ex->op_req[i];
    size_t es                   = ex->plan.elem_size;
    void *dst                   = buf_ptr(comm, rq, op->buf) + op->offset * es;
    const void *local           = buf_ptr(comm, rq, op->src) + op->src_offset * es;
    const void *remote          = slot_ptr(ex, op->slot);

    if (op->flags & FX_PLAN_SLOT_FIRST) {
        const void *t = local;

        local  = remote;
        remote = t;
    }

    if (op->flags & FX_PLAN_FINAL) {
        fx_coll_reduce_final(dst, local, remote, op->count, rq->dtype, rq->op, comm->nranks);
    } else {
        fx_coll_reduce(dst, local, remote, op->count, rq->dtype, rq->op);
    }
}

/* ------------------------------------------------------------------ failures */

/* After a connection failure, gives the control plane a moment to deliver the job's original
 * error (a mismatch or a crash seen first elsewhere), so every rank reports the same cause. */
static bool adopt_relayed_error(struct fx_comm *comm)
{
    int64_t deadline = fx_now_ms() + PEER_GRACE_MS;

    while (fx_now_ms() < deadline && comm->boot.fds != NULL) {
        fx_exec_drain_control(comm);
        if (comm->error != FX_OK) {
            return true;
        }
        usleep(5000);
    }
    return false;
}

static void lane_failed(struct fx_comm *comm, struct fx_lane *lane, uint32_t i, fx_status status)
{
    char detail[256];
    char who[160];
    char name[96];

    if (status == FX_ERR_CONNECTION && !lane->send) {
        /* A transport that finds a mismatch fails the connection's other requests as a broken
         * connection, so the cause may be any request of this lane posted and not complete: a
         * later one whose frame arrived first on another socket, or, when a post failed, the
         * oldest (the failing op itself, if it was posted, was tested and left the table). */
        for (uint32_t j = lane->first; j != lane->post && j != FX_NO_OP;
             j          = comm->exec.op_next[j]) {
            fx_status st = comm->exec.tp_reqs[j] != NULL ? lane->ops->test(comm->exec.tp_reqs[j])
                                                         : FX_INPROGRESS;

            if (st != FX_INPROGRESS) {
                comm->exec.tp_reqs[j] = NULL; /* complete: freed by the transport */
            }
            if (st == FX_ERR_MISMATCH) {
                status = FX_ERR_MISMATCH;
                i      = j;
                break;
            }
        }
    }
    if (status == FX_ERR_MISMATCH) {
        if (check_header(comm, lane, i)) {
            fx_comm_fail(comm, FX_ERR_MISMATCH, -1, true,
                         "%s: message from rank %d has a different length than expected",
                         fx_coll_name(comm->exec.op_req[i]->coll), lane->peer);
        }
        return;
    }
    if (adopt_relayed_error(comm)) {
        return;
    }
    lane->ops->conn_error(lane->conn, detail, sizeof(detail));
    fx_boot_rank_str(&comm->boot, lane->peer, who, sizeof(who));
    op_name(comm->exec.op_req[i], name, sizeof(name));
    fx_comm_fail(comm, status == FX_ERR_PEER_FAILED ? FX_ERR_PEER_FAILED : FX_ERR_CONNECTION,
                 lane->peer, true, "%s failed during %s: %s", who, name, detail);
}

/* Rank 0: names the rank at the end of the job's chain of waits once it is due. */
static void stall_verdict(struct fx_comm *comm)
{
    struct fx_boot_event ev;

    if (comm->rank != 0 || comm->error != FX_OK) {
        return;
    }
    fx_boot_stall_verdict(&comm->boot, comm->cfg.timeout_ms / 2, &ev);
    if (ev.kind == FX_BOOT_EV_ABORT) {
        fx_comm_fail(comm, ev.status, ev.failed_rank, false, "%s", ev.text);
    }
}

/*
 * No progress for half the timeout: report the stall to rank 0, which names the rank the job
 * waits for at the timeout. Without its verdict (rank 0 itself stuck), fail alone a little
 * later, naming the peer this rank waits for.
 */
static void check_timeout(struct fx_comm *comm)
{
    struct fx_exec *ex = &comm->exec;
    int64_t idle;

    int64_t limit    = comm->cfg.timeout_ms;
    char who[160]    = "no peer";
    const char *what = "";
    char op[96];
    int peer                      = -1;
    const struct fx_request *late = ex->head;

    /* Rounds without progress come every few hundred nanoseconds while a waiter spins; the
     * bound is in milliseconds: the clock is read every IDLE_CLOCK_EVERY of them. */
    if (++ex->idle_rounds % IDLE_CLOCK_EVERY != 0) {
        return;
    }
    idle = fx_exec_idle_ms(comm, fx_now_ms());
    if (idle < limit / 2) {
        return;
    }
    /* The peer of the earliest unfinished op in plan order: plans are emitted step by step,
     * so later ops wait, directly or not, for that one (a rank of a tree or of recursive
     * doubling has unfinished receives from several peers; only the earliest is the cause). */
    for (uint32_t l = 0, first = FX_NO_OP; l < (uint32_t)ex->nlanes; l++) {
        const struct fx_lane *lane = &ex->lanes[l];

        if (lane->peer >= 0 && lane->first < first) {
            first = lane->first;
            late  = ex->op_req[first];
            peer  = lane->peer;
            if (lane->conn == NULL) {
                what = lane->send ? "waiting to connect to" : "waiting for a connection from";
            } else {
                what = lane->send ? "waiting to send to" : "waiting for data from";
            }
        }
    }
    op_name(late, op, sizeof(op));
    if (!ex->stall_reported) {
        fx_boot_ctrl_stall(&comm->boot, peer, idle, op);
        ex->stall_reported = true;
    }
    stall_verdict(comm);
    if (comm->error != FX_OK || idle < limit + (limit / 2 < 5000 ? limit / 2 : 5000)) {
        return;
    }
    if (peer >= 0) {
        fx_boot_rank_str(&comm->boot, peer, who, sizeof(who));
    }
    fx_comm_fail(comm, FX_ERR_TIMEOUT, peer, true,
                 "%s made no progress for %lld ms: %s %s (rank 0 named no other cause)", op,
                 (long long)idle, what, who);
}

/* ------------------------------------------------------------------ progress */

/* Milliseconds since an op last moved. Rounds that move something only raise a flag (a clock
 * read on each would cost more than the round); the first clock read after it dates the
 * progress, so the idle time counted is at most the gap between two reads short. */
int64_t fx_exec_idle_ms(struct fx_comm *comm, int64_t now_ms)
{
    struct fx_exec *ex = &comm->exec;

    if (ex->progressed) {
        ex->progressed       = false;
        ex->last_progress_ms = now_ms;
    }
    return now_ms - ex->last_progress_ms;
}

static void op_finished(struct fx_exec *ex, uint32_t i)
{
    ex->op_done[i] = 1;
    ex->op_req[i]->ops_left--;
}

/* Completes what finished at the front of a lane. Returns true if anything did. */
static bool lane_complete(struct fx_comm *comm, struct fx_lane *lane)
{
    struct fx_exec *ex = &comm->exec;
    bool changed       = false;

    while (lane->first != lane->post && lane->first != FX_NO_OP && comm->error == FX_OK) {
        uint32_t i                  = lane->first;
        const struct fx_plan_op *op = &ex->plan.ops[i];
        fx_status status            = lane->ops->test(ex->tp_reqs[i]);

        if (status == FX_INPROGRESS) {
            break;
        }
        ex->tp_reqs[i] = NULL;
        if (status != FX_OK) {
            lane_failed(comm, lane, i, status);
            return true;
        }
        if (comm->links.on) {
            fx_link_completed(lane->stats, op->count * op_elem_size(ex, i), &ex->clk);
        }
        if (op->kind != FX_PLAN_SEND && !check_header(comm, lane, i)) {
            return true;
        }
        if (op->kind == FX_PLAN_RECV_REDUCE) {
            reduce_op(comm, i);
        }
        op_finished(ex, i);
        lane->first = ex->op_next[i];
        changed     = true;
    }
    return changed;
}

/* A connect failed: the peer's listener is gone (it died or left) or unreachable. */
static void connect_failed(struct fx_comm *comm, const struct fx_lane *lane, fx_status status)
{
    char who[160];
    char name[96];

    if (adopt_relayed_error(comm)) {
        return;
    }
    fx_boot_rank_str(&comm->boot, lane->peer, who, sizeof(who));
    op_name(comm->exec.op_req[lane->first], name, sizeof(name));
    fx_comm_fail(comm, status, lane->peer, true, "cannot connect to %s during %s: %s", who, name,
                 fx_strerror(status));
}

/*
 * Gives a lane the connection it lacks, if it exists by now: a send lane advances its connect,
 * a receive lane looks for the peer's connection among those accepted (run_head accepts). A
 * lane without its connection posts nothing yet. Returns true once the lane has it.
 */
static bool lane_connect(struct fx_comm *comm, struct fx_lane *lane)
{
    fx_status status = FX_INPROGRESS;

    if (lane->send) {
        status     = fx_conn_open(comm, lane->peer);
        lane->conn = comm->send_conns[lane->peer];
    } else {
        lane->conn = comm->recv_conns[lane->peer];
    }
    if (lane->conn != NULL) {
        comm->exec.unconnected--;
        fx_trace(FX_SUB_NET, "connection %s rank %d ready", lane->send ? "to" : "from", lane->peer);
        return true;
    }
    if (status != FX_INPROGRESS) {
        connect_failed(comm, lane, status);
    }
    return false;
}

/* Posts the lane's next ops whose dependencies have completed. */
static bool lane_post(struct fx_comm *comm, struct fx_lane *lane)
{
    struct fx_exec *ex = &comm->exec;
    bool changed       = false;

    if (lane->peer >= 0 && lane->conn == NULL) {
        if (!lane_connect(comm, lane)) {
            return false;
        }
        changed = true;
    }

    while (lane->post != FX_NO_OP && comm->error == FX_OK) {
        uint32_t i                  = lane->post;
        const struct fx_plan_op *op = &ex->plan.ops[i];
        fx_status status;

        if (op->dep >= 0 && !ex->op_done[op->dep]) {
            break;
        }
        if (lane->peer < 0) {
            run_copy(comm, i);
            op_finished(ex, i);
            lane->post  = ex->op_next[i];
            lane->first = lane->post;
            changed     = true;
            continue;
        }
        status = post_op(comm, lane, i);
        if (status != FX_OK) {
            lane_failed(comm, lane, i, status);
            return true;
        }
        if (comm->links.on) {
            fx_link_posted(lane->stats, op->count * op_elem_size(ex, i), &ex->clk);
        }
        lane->post = ex->op_next[i];
        changed    = true;
    }
    return changed;
}

static void complete_head(struct fx_comm *comm, fx_status status)
{
    struct fx_exec *ex     = &comm->exec;
    struct fx_request *req = ex->head;

    if (req == ex->batch_last) {
        ex->running    = false;
        ex->batch_last = NULL;
    }
    ex->head = req->next;
    if (ex->head == NULL) {
        ex->tail = NULL;
    }
    req->next   = NULL;
    req->status = status;
    req->done   = true;
}

/* Completes the requests of the running plan whose ops are all done, in queue order. Returns
 * true when the plan is over. */
static bool complete_finished(struct fx_comm *comm)
{
    struct fx_exec *ex = &comm->exec;

    while (ex->running && ex->head->ops_left == 0) {
        complete_head(comm, FX_OK);
    }
    return !ex->running;
}

void fx_exec_fail_all(struct fx_comm *comm, fx_status status)
{
    while (comm->exec.head != NULL) {
        complete_head(comm, status);
    }
    comm->exec.running = false;
    if (comm->links.on) {
        fx_links_stop(&comm->links);
    }
}

void fx_exec_drain_control(struct fx_comm *comm)
{
    int fds[256];
    int n = fx_boot_ctrl_fds(&comm->boot, fds, 256);

    for (int i = 0; i < n; i++) {
        struct fx_boot_event ev;

        fx_boot_ctrl_read(&comm->boot, fds[i], &ev);
        if (ev.kind == FX_BOOT_EV_ABORT) {
            fx_comm_fail(comm, ev.status, ev.failed_rank, false, "%s", ev.text);
        }
    }
    stall_verdict(comm);
}

/* Runs the head operation as far as it goes; starts the next one when it completes. */
static void run_head(struct fx_comm *comm)
{
    struct fx_exec *ex = &comm->exec;

    for (int rounds = 0; rounds < 1000 && comm->error == FX_OK; rounds++) {
        bool changed = false;

        ex->clk.fine   = 0;
        ex->clk.coarse = 0;
        if (!ex->running) {
            if (ex->head == NULL) {
                return;
            }
            fx_status status = exec_start(comm, ex->head);

            if (status != FX_OK) {
                char name[96];

                /* Nothing was sent yet; the other ranks learn of it through rank 0. */
                op_name(ex->head, name, sizeof(name));
                fx_comm_fail(comm, status, -1, true, "%s of count %zu: no plan: %s", name,
                             ex->head->count, fx_strerror(status));
                return;
            }
        }
        if (ex->unconnected > 0) {
            changed |= fx_conn_accept(comm);
        }
        for (int l = 0; l < ex->nlanes && comm->error == FX_OK; l++) {
            changed |= lane_complete(comm, &ex->lanes[l]);
            changed |= lane_post(comm, &ex->lanes[l]);
        }
        if (comm->error != FX_OK) {
            return;
        }
        if (changed) {
            ex->progressed = true;
            ex->moves++;
            if (ex->stall_reported) {
                fx_boot_ctrl_stall(&comm->boot, -1, 0, "");
                ex->stall_reported = false;
            }
        }
        if (complete_finished(comm)) {
            continue;
        }
        if (!changed) {
            check_timeout(comm);
            return;
        }
    }
}

/* The peer's address without the port ("10.0.0.2"): the port of an accepted connection is
 * the peer's ephemeral one and names nothing. */
static void peer_host_addr(const struct fx_transport_ops *ops, struct fx_tp_conn *conn, char *out)
{
    char text[FX_LINK_ADDR_LEN];
    const char *colon;
    const char *end;

    ops->conn_peer(conn, text, sizeof(text));
    text[sizeof(text) - 1] = '\0';
    if (text[0] == '[' && (end = strchr(text, ']')) != NULL) { /* "[v6]:port" */
        snprintf(out, FX_LINK_ADDR_LEN, "%.*s", (int)(end - text - 1), text + 1);
    } else if ((colon = strchr(text, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
        snprintf(out, FX_LINK_ADDR_LEN, "%.*s", (int)(colon - text), text);
    } else {
        snprintf(out, FX_LINK_ADDR_LEN, "%s", text);
    }
}

/*
 * Once a second: closes the link-rate windows and sends the current rates to rank 0. Rank 0
 * judges the rates when the other ranks' reports of a round are in (on_link_report,
 * fx_comm.c); at its own tick it first reads the control plane (it may be too busy to sleep
 * on it) and judges what arrived if no round completed for 1.5 ticks (fx_links_eval_due).
 */
void fx_exec_links_tick(struct fx_comm *comm)
{
    uint8_t report[FX_LINK_REPORT_SIZE];
    int64_t now = fx_now_ms();
    size_t len;
    bool due;

    if (now < comm->links.next_tick_ms) {
        return;
    }
    for (int p = 0; p < comm->nranks; p++) {
        const struct fx_transport_ops *ops;
        struct fx_tp_conn_stats st;

        if (comm->peer_tp[p] < 0) {
            continue;
        }
        ops = fx_comm_peer_ops(comm, p);
        if (comm->send_conns[p] != NULL && comm->links.dir[p][FX_LINK_SEND].msgs > 0) {
            if (comm->links.addr[p][0] == '\0') {
                peer_host_addr(ops, comm->send_conns[p], comm->links.addr[p]);
            }
            if (ops->conn_stats != NULL && ops->conn_stats(comm->send_conns[p], &st)) {
                fx_link_wire(&comm->links, p, FX_LINK_SEND, st.bytes_acked, st.busy_ns);
            }
        }
        if (comm->recv_conns[p] != NULL) { /* idle ones too: fx_link_wire's base */
            if (comm->links.addr[p][0] == '\0') {
                peer_host_addr(ops, comm->recv_conns[p], comm->links.addr[p]);
            }
            if (ops->conn_stats != NULL && ops->conn_stats(comm->recv_conns[p], &st)) {
                fx_link_wire(&comm->links, p, FX_LINK_RECV, st.recv_bytes, st.recv_ns);
            }
        }
    }
    len = fx_links_tick(&comm->links, now, report, &due);
    if (len > 0) {
        fx_boot_ctrl_report(&comm->boot, report, len);
    }
    if (due && comm->rank == 0 && comm->boot.fds != NULL) {
        fx_exec_drain_control(comm);
        if (fx_links_eval_due(&comm->links, now, true)) {
            fx_links_evaluate(&comm->links, &comm->boot, now);
        }
    }
}

/* Whether the once-a-second statistics tick may be due, without reading the clock on every
 * poll of a spinning wait: the last round's clock when an op moved in it (the coarse one lags
 * by under a tick), else every TICK_POLLS polls (microseconds apart while spinning; a sleeping
 * wait polls when woken). */
static bool links_tick_due(struct fx_comm *comm)
{
    const struct fx_link_clock *clk = &comm->exec.clk;
    int64_t now                     = clk->fine != 0 ? clk->fine : clk->coarse;

    if (now != 0) {
        return now / 1000000 >= comm->links.next_tick_ms;
    }
    return ++comm->links.polls % TICK_POLLS == 0;
}

void fx_exec_progress(struct fx_comm *comm)
{
    if (comm->error != FX_OK) {
        fx_exec_fail_all(comm, comm->error);
        return;
    }
    stall_verdict(comm);
    if (comm->exec.head == NULL || comm->error != FX_OK) {
        /* Idle: the tick reads the clock every TICK_POLLS calls (the progress thread ticks
         * on its own while nobody calls). */
        if (comm->links.on && comm->error == FX_OK && ++comm->links.polls % TICK_POLLS == 0) {
            fx_exec_links_tick(comm);
        }
        return;
    }
    if (!comm->exec.running) {
        run_head(comm); /* a new operation's first sends go out before anything is polled */
        if (comm->error != FX_OK) {
            return;
        }
    }
    for (int t = 0; t < comm->ntps; t++) {
        comm->tps[t].ops->progress(comm->tps[t].tp);
    }
    run_head(comm);
    if (comm->links.on && links_tick_due(comm)) {
        fx_exec_links_tick(comm);
    }
}

/* ------------------------------------------------------------------ queue */

/* A request object from the free list (or malloc); NULL when out of memory. Lock held. */
static struct fx_request *req_take(struct fx_comm *comm)
{
    struct fx_request *req = comm->exec.free_reqs;

    if (req != NULL) {
        comm->exec.free_reqs = req->next;
    } else {
        req = calloc(1, sizeof(*req));
        if (req == NULL) {
            return NULL;
        }
        req->all_next       = comm->exec.all_reqs;
        comm->exec.all_reqs = req;
    }
    req->next = NULL;
    req->comm = comm;
    req->done = false;
    return req;
}

/* Numbers the request and queues it; `background`: nobody is about to wait for it, so the
 * progress thread starts it. Lock held. */
static void submit_locked(struct fx_comm *comm, struct fx_request *req, bool background)
{
    struct fx_exec *ex = &comm->exec;
    bool joins;

    if (req->coll == FX_COLL_SENDRECV) {
        /* Messages match in order per pair: the n-th send from a to b meets b's n-th receive
         * from a; the numbers are the pair's, so collectives keep theirs in step on all ranks. */
        req->seq      = 0;
        req->send_seq = req->send_peer >= 0 ? ++comm->p2p_sent[req->send_peer] : 0;
        req->recv_seq = req->recv_peer >= 0 ? ++comm->p2p_recvd[req->recv_peer] : 0;
    } else {
        req->seq = ++comm->op_seq;
    }
    req->next = NULL;
    /* A point-to-point call joins a running batch of them that ends the queue (exec_start). */
    joins = ex->running && comm->error == FX_OK && req->coll == FX_COLL_SENDRECV &&
            ex->head->coll == FX_COLL_SENDRECV && ex->batch_last == ex->tail;
    if (ex->tail != NULL) {
        ex->tail->next = req;
    } else {
        ex->head = req;
    }
    ex->tail = req;
    if (joins && append_p2p(comm, req) == FX_OK) {
        char name[96];

        op_name(req, name, sizeof(name));
        fx_trace(FX_SUB_COLL, "%s joins the running batch", name);
    }
    if (comm->error != FX_OK) {
        fx_exec_fail_all(comm, comm->error);
    } else if (background && comm->drivers == 0) {
        pthread_cond_signal(&comm->cond);
    }
}

fx_status fx_exec_call(struct fx_comm *comm, const struct fx_request *args, bool blocking,
                       struct fx_request **out)
{
    struct fx_request *req;
    fx_status status = FX_OK;

    pthread_mutex_lock(&comm->lock);
    req = req_take(comm);
    if (req == NULL) {
        pthread_mutex_unlock(&comm->lock);
        return FX_ERR_NO_MEMORY;
    }
    req->coll       = args->coll;
    req->sendbuf    = args->sendbuf;
    req->recvbuf    = args->recvbuf;
    req->count      = args->count;
    req->dtype      = args->dtype;
    req->op         = args->op;
    req->root       = args->root;
    req->algo       = FX_ALGO_AUTO;
    req->send_peer  = args->send_peer;
    req->recv_peer  = args->recv_peer;
    req->recv_count = args->recv_count;
    submit_locked(comm, req, !blocking);
    if (blocking) {
        status = fx_exec_wait_locked(req, -1);
    } else {
        *out = req;
    }
    pthread_mutex_unlock(&comm->lock);
    return status;
}

/* ------------------------------------------------------------------ init / fini */

/* FX_SPIN_US; when this host runs more ranks than it has cores, a rank that merely spun would
 * take the core of the rank it waits for, so waiters yield while they poll (spin_progress). */
static int spin_budget(struct fx_comm *comm)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int local  = 0;

    for (int r = 0; r < comm->nranks; r++) {
        local += fx_route_same_host(&comm->boot.table[r], &comm->boot.table[comm->rank]);
    }
    if (cores > 0 && local > cores) {
        fx_info(FX_SUB_INIT,
                "%d ranks on this host's %ld cores: waiting threads yield the core while they "
                "poll",
                local, cores);
        comm->exec.spin_yield = true;
    }
    return comm->cfg.spin_us;
}

fx_status fx_exec_init(struct fx_comm *comm, char *err, size_t errlen)
{
    struct fx_exec *ex = &comm->exec;

    fx_plan_init(&ex->plan);
    ex->spin_us   = spin_budget(comm);
    ex->nslots    = (uint32_t)comm->cfg.scratch_slots;
    ex->max_chunk = comm->boot.info.chunk_bytes != 0 ? comm->boot.info.chunk_bytes : AUTO_CHUNK_MAX;
    ex->lanes     = calloc((size_t)(2 * comm->nranks + 1), sizeof(*ex->lanes));
    ex->lane_index = calloc((size_t)(2 * comm->nranks + 1), sizeof(int));
    if (ex->lanes == NULL || ex->lane_index == NULL ||
        posix_memalign((void **)&ex->scratch, 4096, ex->nslots * ex->max_chunk) != 0) {
        snprintf(err, errlen, "out of memory for %u scratch slots of %zu bytes", ex->nslots,
                 ex->max_chunk);
        return FX_ERR_NO_MEMORY;
    }
    /* Touch the scratch now: page faults never happen on the data path. */
    memset(ex->scratch, 0, ex->nslots * ex->max_chunk);
    return fx_exec_wait_start(comm, err, errlen);
}

void fx_exec_fini(struct fx_comm *comm)
{
    struct fx_exec *ex = &comm->exec;

    fx_exec_wait_stop(comm);
    while (ex->all_reqs != NULL) {
        struct fx_request *req = ex->all_reqs;

        ex->all_reqs = req->all_next;
        free(req);
    }
    fx_plan_fini(&ex->plan);
    free(ex->op_done);
    free(ex->tp_reqs);
    free(ex->op_req);
    free(ex->op_next);
    for (size_t b = 0; b < ex->nhdr_blocks; b++) {
        free(ex->hdr_blocks[b]);
    }
    free(ex->hdr_blocks);
    free(ex->lanes);
    free(ex->lane_index);
    free(ex->scratch);
    memset(ex, 0, sizeof(*ex));
}
