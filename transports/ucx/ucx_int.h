/*
 * The UCX transport's internals, shared by ucx.c (instance and data path) and ucx_conn.c
 * (connection set-up, liveness and close). The design is described at the head of ucx.c.
 */
#ifndef FX_UCX_INT_H
#define FX_UCX_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <ucp/api/ucp.h>

#include "transports/rcache.h"
#include "transports/tp_bytes.h"
#include "transports/transport.h"

#define UCX_MAGIC        0x58435846u /* "FXCX" */
#define UCX_VERSION      1
#define UCX_IDENT_LEN    24 /* boot id and pid namespace: equal for processes of one host */
#define UCX_ADDR_HDR     (12 + UCX_IDENT_LEN)
#define UCX_HOST_LEN     64
#define UCX_HELLO_HDR    (20 + UCX_HOST_LEN + UCX_IDENT_LEN)
#define UCX_HELLO_BUF    4096
#define UCX_ACK_LEN      (16 + UCX_HOST_LEN)
#define UCX_MSG_HDR      12
#define UCX_BOUNCE_HDR   16         /* a bounce buffer's link in the orphan list, before the data */
#define UCX_PROGRESS_MAX 256        /* worker progress calls per progress() */
#define UCX_CLOSE_MS     500        /* fini: how long endpoint closes may take to finish */
#define UCX_QUIESCE_MS   500        /* close: how long a receive being filled is waited for */
#define UCX_PID_CHECK_MS 50         /* how often a local peer's liveness is looked at */
#define UCX_REG_MIN      (64 << 10) /* payloads from this size go with a cached memory handle */

enum { KIND_HELLO = 1, KIND_ACK, KIND_HDR, KIND_DATA, KIND_BYE };

/* One UCP operation: its request while it runs, then its result. */
struct ucx_op {
    void *req;
    bool busy;
    bool recv;
    ucs_status_t status;
    ucp_tag_recv_info_t info;
};

/* One posted send or receive: a header operation and, for a payload, a data operation. */
struct fx_tp_req {
    struct fx_tp_req *next; /* in its queue, then in the free list */
    struct fx_tp_req *all_next;
    struct fx_tp_conn *conn;
    bool send;
    bool hdr_seen; /* receive: the header message was checked */
    fx_status status;
    struct ucx_op hdr;
    struct ucx_op data;
    uint8_t msg[UCX_MSG_HDR + FX_TP_HDR_MAX];
    void *user_hdr;
    size_t hdrlen;
    size_t len;
    uint8_t *bounce; /* mode none: the payload's copy the send reads (fx_ucx_orphan_bounce) */
    struct fx_rcache_entry *reg; /* the payload's registration, held until UCX is done with it */
};

/* A registration held for an operation given up while UCX may still use it, until fini. */
struct ucx_held {
    struct ucx_held *next;
    struct fx_rcache_entry *ent;
};

struct req_queue {
    struct fx_tp_req *head;
    struct fx_tp_req *tail;
};

struct fx_tp_conn {
    struct fx_tp *tp;
    struct fx_tp_conn *next;
    ucp_ep_h ep;
    uint32_t id;      /* messages to us carry it */
    uint32_t peer_id; /* messages to the peer carry it */
    bool established;
    int64_t deadline; /* connect: until the acknowledgement */
    uint8_t *hello_msg;
    struct ucx_op hello_op;
    uint8_t ack[UCX_ACK_LEN];
    struct ucx_op ack_op;
    uint8_t bye_in[8];
    struct ucx_op bye_op;
    uint8_t bye_out[4];
    struct req_queue sendq;
    struct req_queue recvq;
    bool pid_watch; /* error mode none (a local peer, ep_create): liveness through a pidfd */
    int pidfd;      /* local peer: readable once it exited; -1 when not open */
    uint32_t peer_pid;
    int64_t next_check_ms;
    ucs_status_t ep_status; /* set by the endpoint's error handler or the liveness check */
    bool peer_closed;       /* its goodbye arrived */
    fx_status failed;
    char error[200];
    char peer[120];
    void *flush_req; /* closing: the flush after the goodbye, then a forced close */
    void *close_req;
};

struct fx_tp_listener {
    struct fx_tp *tp;
    uint32_t id;
    struct ucx_op op;
    uint8_t buf[UCX_HELLO_BUF];
};

struct fx_tp {
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;
    int timeout_ms;
    uint32_t next_id;
    char host[UCX_HOST_LEN];
    uint8_t ident[UCX_IDENT_LEN];
    bool local_mode_none; /* local peers are unreachable in error mode peer (ep_create) */
    struct fx_tp_conn *conns;
    struct fx_tp_conn *closing; /* closed, waiting for UCX to finish closing the endpoint */
    struct fx_tp_req *free_reqs;
    struct fx_tp_req *all_reqs;
    uint8_t *orphans;         /* bounce buffers of sends given up while UCX may still read them */
    struct fx_rcache *rcache; /* payload registrations (ucp_mem_map), FX_REG_CACHE_MAX */
    struct ucx_held *held;    /* holds of operations given up, released after the worker */
};

/* ------------------------------------------------------------------ helpers */

static inline ucp_tag_t make_tag(uint32_t id, unsigned kind)
{
    return (ucp_tag_t)id << 32 | kind;
}

/* ------------------------------------------------------------------ UCP operations */

/* Takes the result of a *_nbx call: done at once (NULL or an error) or a request to poll. */
static inline void op_started(struct ucx_op *op, ucs_status_ptr_t ret, bool recv)
{
    op->recv = recv;
    op->req  = NULL;
    op->busy = false;
    if (ret == NULL) {
        op->status = UCS_OK;
    } else if (UCS_PTR_IS_ERR(ret)) {
        op->status = UCS_PTR_STATUS(ret);
    } else {
        op->req  = ret;
        op->busy = true;
    }
}

/* The operation's parameters; with a memory handle (ucp_mem_map) when memh is not NULL. */
static inline void op_param(ucp_request_param_t *param, uint32_t flags, ucp_mem_h memh)
{
    memset(param, 0, sizeof(*param));
    param->op_attr_mask = flags;
    if (memh != NULL) {
        param->op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        param->memh = memh;
    }
}

static inline void op_send(struct ucx_op *op, ucp_ep_h ep, ucp_tag_t tag, const void *buf,
                           size_t len, ucp_mem_h memh)
{
    ucp_request_param_t param;

    op_param(&param, 0, memh);
    op_started(op, ucp_tag_send_nbx(ep, buf, len, tag, &param), false);
}

static inline void op_recv(struct ucx_op *op, ucp_worker_h w, ucp_tag_t tag, void *buf, size_t len,
                           ucp_mem_h memh)
{
    ucp_request_param_t param;

    /* Always a request: UCX 1.13 leaves recv_info unset when a receive completes at once
     * from its unexpected queue, and the length is needed. */
    op_param(&param, UCP_OP_ATTR_FLAG_NO_IMM_CMPL, memh);
    memset(&op->info, 0, sizeof(op->info));
    op_started(op, ucp_tag_recv_nbx(w, buf, len, tag, (ucp_tag_t)-1, &param), true);
}

/* Polls a running operation; true once it is done (its status and length are then set). */
static inline bool op_poll(struct ucx_op *op)
{
    ucs_status_t st;

    if (!op->busy) {
        return true;
    }
    st = op->recv ? ucp_tag_recv_request_test(op->req, &op->info)
                  : ucp_request_check_status(op->req);
    if (st == UCS_INPROGRESS) {
        return false;
    }
    op->status = st;
    ucp_request_free(op->req);
    op->req  = NULL;
    op->busy = false;
    return true;
}

/* Cancels a receive not matched yet (UCX then completes it at once); a receive already being
 * filled, and a send, run on and complete in UCX's time. */
static inline void op_cancel(struct ucx_op *op, ucp_worker_h w)
{
    if (op->busy && op->recv) {
        ucp_request_cancel(w, op->req);
    }
}

/*
 * Gives up an operation: a receive not matched yet is cancelled (UCX completes it at once); a
 * send, or a receive already being filled, runs on inside UCX and is released when it ends.
 * Returns true in that last case (UCX may still use its buffer and memory handle).
 */
static inline bool op_abandon(struct ucx_op *op, ucp_worker_h w)
{
    if (!op->busy) {
        return false;
    }
    if (op->recv) {
        ucp_request_cancel(w, op->req);
    }
    if (op_poll(op)) {
        return false;
    }
    ucp_request_free(op->req);
    op->req    = NULL;
    op->busy   = false;
    op->status = UCS_ERR_CANCELED;
    return true;
}

/* ------------------------------------------------------------------ between the two files */

/* ucx.c */
void fx_ucx_conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void fx_ucx_req_put(struct fx_tp_req *r);
void fx_ucx_orphan_bounce(struct fx_tp_req *r);
void fx_ucx_reg_release(struct fx_tp_req *r, bool running);
/* The registration cache's counters (for tests). */
void fx_ucx_rcache_stats(struct fx_tp *tp, struct fx_rcache_stats *st);
void fx_ucx_queue_update(struct req_queue *q);

/* ucx_conn.c */
void fx_ucx_host_ident(uint8_t ident[UCX_IDENT_LEN]);
void fx_ucx_conn_free(struct fx_tp_conn *c);
bool fx_ucx_ep_force_close(struct fx_tp_conn *c);
void fx_ucx_closing_progress(struct fx_tp *tp, bool wait);
void fx_ucx_conn_update(struct fx_tp_conn *c);
fx_status fx_ucx_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out);
void fx_ucx_listen_close(struct fx_tp_listener *l);
fx_status fx_ucx_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                         size_t hello_len, struct fx_tp_conn **conn);
fx_status fx_ucx_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                        size_t *hello_len);
void fx_ucx_close(struct fx_tp_conn *c);
void fx_ucx_conn_error(struct fx_tp_conn *c, char *buf, size_t len);
void fx_ucx_conn_peer(struct fx_tp_conn *c, char *buf, size_t len);

#endif /* FX_UCX_INT_H */
