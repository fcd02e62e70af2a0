/*
 * In-memory plan simulator (see coll_sim.h). Each rank's ops are grouped into lanes (sends to
 * peer p: lane p; receives from p: lane nranks + p; copies: lane 2 * nranks) with a cursor per
 * lane. Passes visit every rank and lane until all ops have completed, an error occurs, or a
 * whole pass makes no progress (deadlock).
 */
#include "coll_sim.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many stuck ops a deadlock report lists before "...". */
#define MAX_STUCK_REPORTED 8

struct sim_msg {
    struct sim_msg *next;
    size_t len;
    uint32_t depth; /* the send's depth */
    uint32_t step;  /* the send's step and phase: the receive must carry the same (the */
    uint32_t phase; /* executor's wire check compares them) */
    unsigned char data[];
};

struct sim_queue {
    struct sim_msg *head;
    struct sim_msg *tail;
};

struct sim_rank {
    const struct fx_plan *plan;
    const unsigned char *send;
    unsigned char *recv;
    unsigned char *scratch;
    size_t send_count;
    size_t recv_count;
    size_t scratch_count;
    size_t *lane_start; /* nlanes + 1 entries into lane_ops */
    size_t *lane_ops;   /* op indices grouped by lane, in ops[] order */
    size_t *cursor;     /* per lane: ops of the lane already completed */
    uint32_t *depth;    /* per op: 0 while pending, else its critical-path depth */
    size_t ndone;
};

struct sim {
    int n;
    size_t nlanes;
    struct sim_rank *r;
    struct sim_queue *q; /* [src * n + dst] */
    fx_coll_sim_reduce_fn reduce;
    void *ctx;
    bool shuffle;    /* rotate the visiting order and post one op per lane per visit */
    bool rendezvous; /* a send completes only once its receive has been posted */
    uint32_t rng;
    struct fx_coll_sim_result *res;
};

static fx_status fail(struct sim *s, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error's text and returns its status. */
static fx_status fail(struct sim *s, fx_status status, const char *fmt, ...)
{
    va_list ap;

    if (s->res->status == FX_OK) {
        va_start(ap, fmt);
        vsnprintf(s->res->error, sizeof(s->res->error), fmt, ap);
        va_end(ap);
        s->res->status = status;
    }
    return status;
}

static const char *kind_name(uint8_t kind)
{
    switch (kind) {
    case FX_PLAN_SEND:
        return "send";
    case FX_PLAN_RECV:
        return "recv";
    case FX_PLAN_RECV_REDUCE:
        return "recv_reduce";
    case FX_PLAN_COPY:
        return "copy";
    default:
        return "unknown";
    }
}

/* Lane of an op, or SIZE_MAX when the op is malformed (bad kind or peer). */
static size_t lane_of(const struct sim *s, int rank, const struct fx_plan_op *op)
{
    if (op->kind == FX_PLAN_COPY) {
        return 2 * (size_t)s->n;
    }
    if (op->kind > FX_PLAN_COPY || op->peer < 0 || op->peer >= s->n || op->peer == rank) {
        return SIZE_MAX;
    }
    return (op->kind == FX_PLAN_SEND ? 0 : (size_t)s->n) + (size_t)op->peer;
}

/* Checks an op's fields that do not depend on buffers, and assigns it to its lane. */
static fx_status check_op(struct sim *s, int rank, size_t i)
{
    const struct fx_plan *plan  = s->r[rank].plan;
    const struct fx_plan_op *op = &plan->ops[i];

    if (lane_of(s, rank, op) == SIZE_MAX) {
        return fail(s, FX_ERR_INVALID_ARG, "rank %d op %zu: bad kind %u or peer %d", rank, i,
                    op->kind, (int)op->peer);
    }
    if (op->dep < -1 || (op->dep >= 0 && (size_t)op->dep >= plan->nops)) {
        return fail(s, FX_ERR_INVALID_ARG, "rank %d op %zu (%s): dep %d out of range (%zu ops)",
                    rank, i, kind_name(op->kind), (int)op->dep, plan->nops);
    }
    if (op->count == 0 && op->kind != FX_PLAN_SEND && op->kind != FX_PLAN_RECV) {
        return fail(s, FX_ERR_INVALID_ARG, "rank %d op %zu (%s): count 0", rank, i,
                    kind_name(op->kind));
    }
    if (op->kind == FX_PLAN_RECV_REDUCE &&
        (op->slot >= plan->nslots || op->count > plan->slot_count || s->reduce == NULL)) {
        return fail(s, FX_ERR_INVALID_ARG,
                    "rank %d op %zu (recv_reduce): slot %u of %u, count %llu of slot %zu%s", rank,
                    i, (unsigned)op->slot, (unsigned)plan->nslots, (unsigned long long)op->count,
                    plan->slot_count, s->reduce == NULL ? ", no reduce callback" : "");
    }
    return FX_OK;
}

/* Groups one rank's ops by lane (a stable counting sort) and allocates its scratch. */
static fx_status setup_lanes(struct sim *s, int rank)
{
    struct sim_rank *sr        = &s->r[rank];
    const struct fx_plan *plan = sr->plan;
    size_t *fill;

    sr->lane_start    = calloc(s->nlanes + 1, sizeof(size_t));
    sr->cursor        = calloc(s->nlanes, sizeof(size_t));
    sr->lane_ops      = calloc(plan->nops + 1, sizeof(size_t));
    sr->depth         = calloc(plan->nops + 1, sizeof(uint32_t));
    sr->scratch_count = (size_t)plan->nslots * plan->slot_count;
    sr->scratch       = calloc(sr->scratch_count * plan->elem_size + 1, 1);
    fill              = calloc(s->nlanes, sizeof(size_t));
    if (!sr->lane_start || !sr->cursor || !sr->lane_ops || !sr->depth || !sr->scratch || !fill) {
        free(fill);
        return fail(s, FX_ERR_NO_MEMORY, "rank %d: out of memory for %zu ops", rank, plan->nops);
    }
    for (size_t i = 0; i < plan->nops; i++) {
        if (check_op(s, rank, i) != FX_OK) {
            free(fill);
            return s->res->status;
        }
        sr->lane_start[lane_of(s, rank, &plan->ops[i]) + 1]++;
    }
    for (size_t l = 0; l < s->nlanes; l++) {
        sr->lane_start[l + 1] += sr->lane_start[l];
    }
    for (size_t i = 0; i < plan->nops; i++) {
        size_t l = lane_of(s, rank, &plan->ops[i]);

        sr->lane_ops[sr->lane_start[l] + fill[l]++] = i;
    }
    free(fill);
    return FX_OK;
}

/* Checks that every plan belongs to this run and sets up the ranks. */
static fx_status setup(struct sim *s, const struct fx_coll_sim_rank *ranks)
{
    for (int i = 0; i < s->n; i++) {
        const struct fx_plan *p = ranks[i].plan;

        if (p == NULL || p->nranks != s->n || p->rank != i || p->elem_size == 0 ||
            p->elem_size != ranks[0].plan->elem_size || (p->nops > 0 && p->ops == NULL)) {
            return fail(s, FX_ERR_INVALID_ARG,
                        "rank %d: plan missing or for rank %d of %d (elem size %zu), expected "
                        "rank %d of %d",
                        i, p ? p->rank : -1, p ? p->nranks : 0, p ? p->elem_size : 0, i, s->n);
        }
        s->r[i].plan       = p;
        s->r[i].send       = ranks[i].sendbuf;
        s->r[i].recv       = ranks[i].recvbuf;
        s->r[i].send_count = ranks[i].sendbuf ? ranks[i].send_count : 0;
        s->r[i].recv_count = ranks[i].recvbuf ? ranks[i].recv_count : 0;
        if (setup_lanes(s, i) != FX_OK) {
            return s->res->status;
        }
    }
    return FX_OK;
}

/* What an op of count 0 points at: never read or written, only distinct from NULL. */
static const unsigned char empty_target;

/* The address of [offset, offset + count) of a rank's buffer `which`, or NULL (error set). */
static unsigned char *buf_at(struct sim *s, int rank, size_t i, uint8_t which, uint64_t offset,
                             bool write)
{
    struct sim_rank *sr         = &s->r[rank];
    const struct fx_plan_op *op = &sr->plan->ops[i];
    unsigned char *base         = NULL;
    size_t len                  = 0;

    if (which == FX_BUF_SEND && !write) {
        base = (unsigned char *)(uintptr_t)sr->send;
        len  = sr->send_count;
    } else if (which == FX_BUF_RECV) {
        base = sr->recv;
        len  = sr->recv_count;
    } else if (which == FX_BUF_SCRATCH) {
        base = sr->scratch;
        len  = sr->scratch_count;
    }
    if (which == FX_BUF_SEND && write) {
        fail(s, FX_ERR_INVALID_ARG, "rank %d op %zu (%s): writes to the send buffer", rank, i,
             kind_name(op->kind));
        return NULL;
    }
    if (offset > len || op->count > len - offset) {
        fail(s, FX_ERR_INVALID_ARG,
             "rank %d op %zu (%s): %s [%llu, +%llu) outside buffer %u of %zu elements", rank, i,
             kind_name(op->kind), write ? "writes" : "reads", (unsigned long long)offset,
             (unsigned long long)op->count, (unsigned)which, len);
        return NULL;
    }
    if (op->count == 0) {
        /* An empty message touches no memory; its buffer may be absent (NULL). */
        return (unsigned char *)(uintptr_t)&empty_target;
    }
    return base + offset * sr->plan->elem_size;
}

static uint32_t max_u32(uint32_t a, uint32_t b)
{
    return a > b ? a : b;
}

static fx_status do_send(struct sim *s, int rank, size_t i, uint32_t depth)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    size_t len                  = op->count * s->r[rank].plan->elem_size;
    const unsigned char *src    = buf_at(s, rank, i, op->buf, op->offset, false);
    struct sim_queue *q         = &s->q[(size_t)rank * (size_t)s->n + (size_t)op->peer];
    size_t link                 = (size_t)rank * (size_t)s->n + (size_t)op->peer;
    struct sim_msg *m;

    if (src == NULL) {
        return s->res->status;
    }
    m = malloc(sizeof(*m) + len);
    if (m == NULL) {
        return fail(s, FX_ERR_NO_MEMORY, "rank %d op %zu: out of memory for a %zu-byte message",
                    rank, i, len);
    }
    memcpy(m->data, src, len);
    m->len   = len;
    m->depth = depth;
    m->step  = op->step;
    m->phase = op->phase;
    m->next  = NULL;
    if (q->tail) {
        q->tail->next = m;
    } else {
        q->head = m;
    }
    q->tail = m;
    s->res->link_bytes[link] += len;
    s->res->link_msgs[link]++;
    s->res->rank_bytes_sent[rank] += len;
    s->res->total_bytes += len;
    s->res->total_msgs++;
    s->r[rank].depth[i] = depth;
    return FX_OK;
}

/* Lands the message m (already checked for length) of receive op i. */
static fx_status land(struct sim *s, int rank, size_t i, const struct sim_msg *m)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    size_t es                   = s->r[rank].plan->elem_size;
    unsigned char *dst          = buf_at(s, rank, i, op->buf, op->offset, true);
    const unsigned char *local;
    unsigned char *slot;

    if (dst == NULL) {
        return s->res->status;
    }
    if (op->kind == FX_PLAN_RECV) {
        memcpy(dst, m->data, m->len);
        return FX_OK;
    }
    local = buf_at(s, rank, i, op->src, op->src_offset, false);
    if (local == NULL) {
        return s->res->status;
    }
    slot = s->r[rank].scratch + (size_t)op->slot * s->r[rank].plan->slot_count * es;
    memcpy(slot, m->data, m->len);
    if (op->flags & FX_PLAN_SLOT_FIRST) {
        s->reduce(s->ctx, dst, slot, local, op->count, (op->flags & FX_PLAN_FINAL) ? 1 : 0);
    } else {
        s->reduce(s->ctx, dst, local, slot, op->count, (op->flags & FX_PLAN_FINAL) ? 1 : 0);
    }
    return FX_OK;
}

/* Completes receive op i if its message has arrived: 1 done, 0 waiting, < 0 error. */
static int do_recv(struct sim *s, int rank, size_t i, uint32_t depth)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    struct sim_queue *q         = &s->q[(size_t)op->peer * (size_t)s->n + (size_t)rank];
    struct sim_msg *m           = q->head;
    size_t want                 = op->count * s->r[rank].plan->elem_size;

    if (m == NULL) {
        return 0;
    }
    if (m->len != want) {
        return fail(s, FX_ERR_MISMATCH,
                    "rank %d op %zu (%s from %d): message of %zu bytes from rank %d, expected "
                    "%zu bytes",
                    rank, i, kind_name(op->kind), (int)op->peer, m->len, (int)op->peer, want);
    }
    if (m->step != op->step || m->phase != op->phase) {
        return fail(s, FX_ERR_MISMATCH,
                    "rank %d op %zu (%s from %d): message of step %u phase %u, the receive has "
                    "step %u phase %u",
                    rank, i, kind_name(op->kind), (int)op->peer, m->step, m->phase, op->step,
                    op->phase);
    }
    if (land(s, rank, i, m) != FX_OK) {
        return s->res->status;
    }
    q->head = m->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    s->r[rank].depth[i] = 1 + max_u32(depth, m->depth);
    free(m);
    return 1;
}

static fx_status do_copy(struct sim *s, int rank, size_t i, uint32_t depth)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    unsigned char *dst          = buf_at(s, rank, i, op->buf, op->offset, true);
    const unsigned char *src    = buf_at(s, rank, i, op->src, op->src_offset, false);

    if (dst == NULL || src == NULL) {
        return s->res->status;
    }
    if (dst != src) {
        memmove(dst, src, op->count * s->r[rank].plan->elem_size);
    }
    s->r[rank].depth[i] = depth;
    return FX_OK;
}

/*
 * Rendezvous: whether the receive matching send op i of a rank has been posted. The k-th send
 * on a link matches the k-th receive of the peer's lane from this rank; it is posted when the
 * receives before it in that lane have completed (they complete in order, and their messages
 * were sent) and its dependency has completed. A send with no matching receive goes ahead, so
 * that the leftover check reports it.
 */
static bool recv_posted(const struct sim *s, int rank, size_t i)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    const struct sim_rank *peer = &s->r[op->peer];
    size_t lane                 = (size_t)s->n + (size_t)rank;
    size_t k                    = s->res->link_msgs[(size_t)rank * (size_t)s->n + (size_t)op->peer];
    const struct fx_plan_op *match;

    if (k >= peer->lane_start[lane + 1] - peer->lane_start[lane]) {
        return true;
    }
    if (peer->cursor[lane] != k) {
        return false;
    }
    match = &peer->plan->ops[peer->lane_ops[peer->lane_start[lane] + k]];
    return match->dep < 0 || peer->depth[match->dep] != 0;
}

/* Tries to complete op i of a rank: 1 done, 0 blocked, < 0 error status. */
static int try_op(struct sim *s, int rank, size_t i)
{
    struct sim_rank *sr         = &s->r[rank];
    const struct fx_plan_op *op = &sr->plan->ops[i];
    uint32_t dep_depth          = op->dep >= 0 ? sr->depth[op->dep] : 0;
    int ret;

    if (op->dep >= 0 && dep_depth == 0) {
        return 0;
    }
    switch (op->kind) {
    case FX_PLAN_SEND:
        if (s->rendezvous && !recv_posted(s, rank, i)) {
            return 0;
        }
        ret = do_send(s, rank, i, dep_depth + 1);
        break;
    case FX_PLAN_COPY:
        ret = do_copy(s, rank, i, dep_depth + 1);
        break;
    default:
        return do_recv(s, rank, i, dep_depth);
    }
    return ret == FX_OK ? 1 : ret;
}

/* Advances one lane of a rank by up to `limit` ops; returns ops completed or < 0 on error. */
static int run_lane(struct sim *s, int rank, size_t lane, size_t limit)
{
    struct sim_rank *sr = &s->r[rank];
    size_t len          = sr->lane_start[lane + 1] - sr->lane_start[lane];
    int done            = 0;

    while (sr->cursor[lane] < len && (size_t)done < limit) {
        int ret = try_op(s, rank, sr->lane_ops[sr->lane_start[lane] + sr->cursor[lane]]);

        if (ret <= 0) {
            return ret < 0 ? ret : done;
        }
        sr->cursor[lane]++;
        sr->ndone++;
        done++;
    }
    return done;
}

/* Appends one stuck op's description to the deadlock report. */
static void describe_stuck(struct sim *s, char *buf, size_t len, int rank, size_t i)
{
    const struct fx_plan_op *op = &s->r[rank].plan->ops[i];
    size_t used                 = strlen(buf);
    bool dep_pending            = op->dep >= 0 && s->r[rank].depth[op->dep] == 0;

    const char *why = "waiting for a message";

    if (dep_pending) {
        why = "waiting for its dep";
    } else if (op->kind == FX_PLAN_SEND) {
        why = "waiting for its receive to be posted";
    }
    snprintf(buf + used, len - used, "%srank %d op %zu (%s peer %d: %s)", used ? "; " : "", rank, i,
             kind_name(op->kind), (int)op->peer, why);
}

static fx_status report_deadlock(struct sim *s)
{
    char buf[400] = "";
    size_t listed = 0;
    size_t left   = 0;

    for (int rank = 0; rank < s->n; rank++) {
        struct sim_rank *sr = &s->r[rank];

        for (size_t l = 0; l < s->nlanes; l++) {
            size_t pos = sr->lane_start[l] + sr->cursor[l];

            if (pos >= sr->lane_start[l + 1]) {
                continue;
            }
            if (listed < MAX_STUCK_REPORTED) {
                describe_stuck(s, buf, sizeof(buf), rank, sr->lane_ops[pos]);
                listed++;
            } else {
                left++;
            }
        }
    }
    return fail(s, FX_ERR_INTERNAL, "deadlock after %zu passes: %s%s", s->res->passes, buf,
                left ? "; ..." : "");
}

/* Fails when messages were sent that no receive consumed. */
static fx_status check_leftovers(struct sim *s)
{
    for (int src = 0; src < s->n; src++) {
        for (int dst = 0; dst < s->n; dst++) {
            const struct sim_msg *m = s->q[(size_t)src * (size_t)s->n + (size_t)dst].head;

            if (m != NULL) {
                return fail(s, FX_ERR_MISMATCH,
                            "message of %zu bytes from rank %d to rank %d never received", m->len,
                            src, dst);
            }
        }
    }
    return FX_OK;
}

static uint32_t next_rand(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* One pass over all ranks and lanes; returns ops completed or < 0 on error. */
static long run_pass(struct sim *s)
{
    size_t r0     = s->shuffle ? next_rand(&s->rng) % (size_t)s->n : 0;
    size_t l0     = s->shuffle ? next_rand(&s->rng) % s->nlanes : 0;
    size_t limit  = s->shuffle ? 1 : SIZE_MAX;
    long progress = 0;

    for (size_t k = 0; k < (size_t)s->n; k++) {
        int rank = (int)((r0 + k) % (size_t)s->n);

        for (size_t j = 0; j < s->nlanes; j++) {
            int ret = run_lane(s, rank, (l0 + j) % s->nlanes, limit);

            if (ret < 0) {
                return ret;
            }
            progress += ret;
        }
    }
    return progress;
}

static fx_status schedule(struct sim *s)
{
    size_t total = 0;
    size_t done;

    for (int i = 0; i < s->n; i++) {
        total += s->r[i].plan->nops;
    }
    for (;;) {
        long ret;

        done = 0;
        for (int i = 0; i < s->n; i++) {
            done += s->r[i].ndone;
        }
        if (done == total) {
            return check_leftovers(s);
        }
        ret = run_pass(s);
        s->res->passes++;
        if (ret < 0) {
            return (fx_status)ret;
        }
        if (ret == 0) {
            return report_deadlock(s);
        }
    }
}

static uint32_t max_depth(const struct sim *s)
{
    uint32_t d = 0;

    for (int i = 0; i < s->n; i++) {
        for (size_t k = 0; k < s->r[i].plan->nops; k++) {
            d = max_u32(d, s->r[i].depth[k]);
        }
    }
    return d;
}

static void sim_free(struct sim *s)
{
    for (size_t k = 0; s->q && k < (size_t)s->n * (size_t)s->n; k++) {
        while (s->q[k].head) {
            struct sim_msg *m = s->q[k].head;

            s->q[k].head = m->next;
            free(m);
        }
    }
    for (int i = 0; s->r && i < s->n; i++) {
        free(s->r[i].lane_start);
        free(s->r[i].lane_ops);
        free(s->r[i].cursor);
        free(s->r[i].depth);
        free(s->r[i].scratch);
    }
    free(s->q);
    free(s->r);
}

static fx_status init_result(struct fx_coll_sim_result *res, int nranks)
{
    size_t nn = (size_t)nranks * (size_t)nranks;

    memset(res, 0, sizeof(*res));
    res->nranks          = nranks;
    res->link_bytes      = calloc(nn, sizeof(uint64_t));
    res->link_msgs       = calloc(nn, sizeof(uint64_t));
    res->rank_bytes_sent = calloc((size_t)nranks, sizeof(uint64_t));
    if (!res->link_bytes || !res->link_msgs || !res->rank_bytes_sent) {
        res->status = FX_ERR_NO_MEMORY;
        snprintf(res->error, sizeof(res->error), "out of memory for %d ranks", nranks);
    }
    return res->status;
}

fx_status fx_coll_sim_run(const struct fx_coll_sim_rank *ranks, int nranks,
                          fx_coll_sim_reduce_fn reduce, void *ctx, uint32_t seed,
                          struct fx_coll_sim_result *res)
{
    struct fx_coll_sim_opts opts = {.seed = seed, .rendezvous = 0};

    return fx_coll_sim_run_opts(ranks, nranks, reduce, ctx, &opts, res);
}

fx_status fx_coll_sim_run_opts(const struct fx_coll_sim_rank *ranks, int nranks,
                               fx_coll_sim_reduce_fn reduce, void *ctx,
                               const struct fx_coll_sim_opts *opts, struct fx_coll_sim_result *res)
{
    uint32_t seed = opts != NULL ? opts->seed : 0;
    struct sim s  = {.n          = nranks,
                     .reduce     = reduce,
                     .ctx        = ctx,
                     .shuffle    = seed != 0,
                     .rendezvous = opts != NULL && opts->rendezvous != 0,
                     .rng        = seed,
                     .res        = res};

    if (ranks == NULL || nranks < 1) {
        memset(res, 0, sizeof(*res));
        res->status = FX_ERR_INVALID_ARG;
        snprintf(res->error, sizeof(res->error), "simulator given %d ranks", nranks);
        return res->status;
    }
    if (init_result(res, nranks) != FX_OK) {
        return res->status;
    }
    s.nlanes = 2 * (size_t)nranks + 1;
    s.r      = calloc((size_t)nranks, sizeof(*s.r));
    s.q      = calloc((size_t)nranks * (size_t)nranks, sizeof(*s.q));
    if (s.r == NULL || s.q == NULL) {
        fail(&s, FX_ERR_NO_MEMORY, "out of memory for %d ranks", nranks);
    } else if (setup(&s, ranks) == FX_OK && schedule(&s) == FX_OK) {
        res->depth = max_depth(&s);
    }
    sim_free(&s);
    return res->status;
}

void fx_coll_sim_result_fini(struct fx_coll_sim_result *res)
{
    free(res->link_bytes);
    free(res->link_msgs);
    free(res->rank_bytes_sent);
    res->link_bytes      = NULL;
    res->link_msgs       = NULL;
    res->rank_bytes_sent = NULL;
}
