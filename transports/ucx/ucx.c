/*
 * The UCX transport: messages over UCP's tag-matching API, so that a cluster's UCX tuning
 * (UCX_TLS, UCX_NET_DEVICES, rendezvous thresholds) applies to libfabricx as it does to MPI.
 *
 * Why tags (and not active messages): the contract wants whole messages matched with the
 * peer's receives in post order, into the caller's buffers. UCP tag matching does exactly
 * that, in order per tag and sender, with zero-copy rendezvous into the posted buffer and
 * truncation detection (a longer message never writes past it); active messages would need a
 * matching queue and a rendezvous of our own.
 *
 * One UCP context and one worker per instance (the core makes one instance per communicator),
 * thread mode single: the core serialises calls. The worker's event fd is wait_fd();
 * prepare_wait() arms it, so an idle rank sleeps.
 *
 * Tags: bits 63..32 name the receiving side's connection (or listener) id, bits 31..0 the kind
 * of message. Each side picks the ids of what it receives, so ids never collide on a worker:
 *   KIND_HELLO (listener id)  connector -> listener, little-endian, UCX_HELLO_HDR bytes:
 *       u32 magic "FXCX", u16 version, u16 hello length, u32 connector's connection id, u32 pid,
 *       u32 worker address length, char host[64]; then the worker address and the hello bytes
 *   KIND_ACK (connector's id)  acceptor -> connector, UCX_ACK_LEN bytes: u32 magic, u16
 *       version, u16 zero, u32 acceptor's connection id, u32 pid, char host[64]
 *   KIND_HDR, KIND_DATA (receiver's id)  a message: first a header message (u64 payload
 *       length, u32 header length, the caller's header), then the payload as its own message
 *       straight from and into the caller's buffers, only when the length is not zero. The
 *       receiver posts both receives at once; a header that disagrees with the posted lengths
 *       (or a truncated payload) completes the receive with FX_ERR_MISMATCH and fails the
 *       connection.
 *   KIND_BYE (receiver's id)  the peer closes: u32 magic. What it sent before is still received.
 * The acceptor creates its own endpoint to the connector's worker address (from the hello), so
 * both sides hold an endpoint in UCP_ERR_HANDLING_MODE_PEER: a dead peer fails them (UCX's
 * keep-alive; its interval is set to 1 s unless UCX_KEEPALIVE_INTERVAL is set).
 *
 * Published address: u32 magic, u32 listener id, then the worker address. UCX's full address
 * (every transport and device: tcp, posix, sysv, cma, self, InfiniBand) is 145 to 215 bytes on a
 * host with one network interface; FX_TP_ADDR_MAX leaves room for more. A larger one is
 * replaced by the network-only address (no shared memory between local ranks), and listen
 * fails only when that does not fit either (then narrow UCX_TLS or UCX_NET_DEVICES).
 *
 * Memory registration: no ucp_mem_map here. The tag API registers contiguous host buffers
 * itself for zero-copy and rendezvous, through UCX's registration cache (UCX_RCACHE_ENABLE,
 * on by default), which also watches munmap and brk through its memory hooks so a freed and
 * reused range is never served a stale registration. A cache of our own keyed on addresses
 * could not see free() and would risk exactly that on RDMA devices (docs/ucx.md).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include "fx_log.h"
#include "fx_sock.h"
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
#define UCX_BOUNCE_HDR   16  /* a bounce buffer's link in the orphan list, before the data */
#define UCX_PROGRESS_MAX 256 /* worker progress calls per progress() */
#define UCX_CLOSE_MS     500 /* fini: how long endpoint closes may take to finish */
#define UCX_QUIESCE_MS   500 /* close: how long a receive being filled is waited for */
#define UCX_PID_CHECK_MS 50  /* how often a local peer's liveness is looked at */

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
    uint8_t *bounce; /* mode none: the payload's copy the send reads (orphan_bounce) */
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
    uint8_t *orphans; /* bounce buffers of sends given up while UCX may still read them */
};

/* ------------------------------------------------------------------ helpers */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static ucp_tag_t make_tag(uint32_t id, unsigned kind)
{
    return (ucp_tag_t)id << 32 | kind;
}

/*
 * What makes two processes local to each other: the kernel's boot id and the pid namespace (so
 * a pid names the same process on both sides). All zero when unknown: then never local.
 */
static void host_ident(uint8_t ident[UCX_IDENT_LEN])
{
    char text[64] = "";
    FILE *f       = fopen("/proc/sys/kernel/random/boot_id", "r");
    struct stat st;
    size_t n = 0;

    memset(ident, 0, UCX_IDENT_LEN);
    if (f == NULL || fgets(text, sizeof(text), f) == NULL || stat("/proc/self/ns/pid", &st) != 0) {
        if (f != NULL) {
            fclose(f);
        }
        return;
    }
    fclose(f);
    for (const char *p = text; *p != '\0' && n < 32; p++) {
        unsigned v = *p >= '0' && *p <= '9'   ? (unsigned)(*p - '0')
                     : *p >= 'a' && *p <= 'f' ? (unsigned)(*p - 'a' + 10)
                                              : 16;

        if (v < 16) {
            ident[n / 2] = (uint8_t)(ident[n / 2] << 4 | v);
            n++;
        }
    }
    put64(ident + 16, (uint64_t)st.st_ino);
}

static bool ident_local(const struct fx_tp *tp, const uint8_t *ident)
{
    static const uint8_t zero[UCX_IDENT_LEN];

    return memcmp(tp->ident, zero, UCX_IDENT_LEN) != 0 &&
           memcmp(tp->ident, ident, UCX_IDENT_LEN) == 0;
}

/* Takes the result of a *_nbx call: done at once (NULL or an error) or a request to poll. */
static void op_started(struct ucx_op *op, ucs_status_ptr_t ret, bool recv)
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

static void op_send(struct ucx_op *op, ucp_ep_h ep, ucp_tag_t tag, const void *buf, size_t len)
{
    ucp_request_param_t param = {.op_attr_mask = 0};

    op_started(op, ucp_tag_send_nbx(ep, buf, len, tag, &param), false);
}

static void op_recv(struct ucx_op *op, ucp_worker_h w, ucp_tag_t tag, void *buf, size_t len)
{
    /* Always a request: UCX 1.13 leaves recv_info unset when a receive completes at once
     * from its unexpected queue, and the length is needed. */
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL};

    memset(&op->info, 0, sizeof(op->info));
    op_started(op, ucp_tag_recv_nbx(w, buf, len, tag, (ucp_tag_t)-1, &param), true);
}

/* Polls a running operation; true once it is done (its status and length are then set). */
static bool op_poll(struct ucx_op *op)
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
static void op_cancel(struct ucx_op *op, ucp_worker_h w)
{
    if (op->busy && op->recv) {
        ucp_request_cancel(w, op->req);
    }
}

/*
 * Gives up an operation: a receive not matched yet is cancelled (UCX completes it at once); a
 * send, or a receive already being filled, runs on inside UCX and is released when it ends.
 */
static void op_abandon(struct ucx_op *op, ucp_worker_h w)
{
    if (!op->busy) {
        return;
    }
    if (op->recv) {
        ucp_request_cancel(w, op->req);
    }
    if (!op_poll(op)) {
        ucp_request_free(op->req);
        op->req    = NULL;
        op->busy   = false;
        op->status = UCS_ERR_CANCELED;
    }
}

static void queue_push(struct req_queue *q, struct fx_tp_req *r)
{
    r->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = r;
    } else {
        q->head = r;
    }
    q->tail = r;
}

static void conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Fails the connection: its running requests complete with the status (after a mismatch: the
 * mismatched one keeps FX_ERR_MISMATCH, the others get FX_ERR_CONNECTION). Receives not matched
 * yet are cancelled; a request completes only once UCX no longer uses its buffers.
 */
static void conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};
    va_list ap;

    if (c->failed != FX_OK) {
        return;
    }
    if (status == FX_ERR_MISMATCH) {
        status = FX_ERR_CONNECTION;
    }
    c->failed = status;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    fx_info(FX_SUB_NET, "ucx connection to %s failed: %s", c->peer, c->error);
    for (int d = 0; d < 2; d++) {
        for (struct fx_tp_req *r = qs[d]->head; r != NULL; r = r->next) {
            if (r->status == FX_INPROGRESS) {
                r->status = status;
            }
            op_cancel(&r->hdr, c->tp->worker);
            op_cancel(&r->data, c->tp->worker);
        }
    }
}

/* ------------------------------------------------------------------ requests */

static struct fx_tp_req *req_get(struct fx_tp_conn *c)
{
    struct fx_tp *tp    = c->tp;
    struct fx_tp_req *r = tp->free_reqs;

    if (r != NULL) {
        tp->free_reqs = r->next;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL) {
            return NULL;
        }
        r->all_next  = tp->all_reqs;
        tp->all_reqs = r;
    }
    r->next     = NULL;
    r->bounce   = NULL;
    r->conn     = c;
    r->status   = FX_INPROGRESS;
    r->hdr_seen = false;
    r->hdr.busy = r->data.busy = false;
    r->hdr.status = r->data.status = UCS_OK;
    return r;
}

static void req_put(struct fx_tp_req *r)
{
    struct fx_tp *tp = r->conn->tp;

    r->conn       = NULL;
    r->next       = tp->free_reqs;
    tp->free_reqs = r;
}

/*
 * Gives up a send's bounce buffer to the instance's orphans, freed once the worker is gone: a
 * send let go (its peer closed or died, or its connection closed) may still be read by UCX.
 */
static void orphan_bounce(struct fx_tp_req *r)
{
    if (r->bounce != NULL) {
        memcpy(r->bounce, &r->conn->tp->orphans, sizeof(uint8_t *));
        r->conn->tp->orphans = r->bounce;
        r->bounce            = NULL;
    }
}

/* Checks a received header message against the posted lengths; copies out the sender's header. */
static void check_header(struct fx_tp_req *r)
{
    struct fx_tp_conn *c = r->conn;
    size_t got           = r->hdr.info.length;
    uint64_t len;
    size_t hlen;

    r->hdr_seen = true;
    if (r->hdr.status != UCS_OK || got < UCX_MSG_HDR || get32(r->msg + 8) != got - UCX_MSG_HDR) {
        if (r->hdr.status != UCS_ERR_CANCELED && c->failed == FX_OK) {
            r->status = FX_ERR_CONNECTION;
            conn_fail(c, FX_ERR_CONNECTION, "malformed message header from %s (%zu bytes): %s",
                      c->peer, got, ucs_status_string(r->hdr.status));
        }
        return;
    }
    len  = get64(r->msg);
    hlen = got - UCX_MSG_HDR;
    if (hlen > 0 && r->hdrlen > 0) {
        memcpy(r->user_hdr, r->msg + UCX_MSG_HDR, hlen < r->hdrlen ? hlen : r->hdrlen);
    }
    if (len != r->len || hlen != r->hdrlen) {
        r->status = FX_ERR_MISMATCH;
        conn_fail(c, FX_ERR_MISMATCH,
                  "message of %zu header and %llu payload bytes from %s, %zu and %zu posted", hlen,
                  (unsigned long long)len, c->peer, r->hdrlen, r->len);
    }
}

/* Moves a request on from its operations' states; true once UCX is done with it. */
static bool req_update(struct fx_tp_req *r)
{
    struct fx_tp_conn *c = r->conn;
    bool hdr_done        = op_poll(&r->hdr);
    bool data_done       = op_poll(&r->data);

    if (!r->send && hdr_done && !r->hdr_seen) {
        check_header(r);
    }
    if (!hdr_done || !data_done || r->status != FX_INPROGRESS) {
        return hdr_done && data_done;
    }
    if (r->hdr.status != UCS_OK || r->data.status != UCS_OK) {
        ucs_status_t st = r->hdr.status != UCS_OK ? r->hdr.status : r->data.status;

        if (st == UCS_ERR_MESSAGE_TRUNCATED) {
            r->status = FX_ERR_MISMATCH;
            conn_fail(c, FX_ERR_MISMATCH, "payload from %s longer than the %zu bytes posted",
                      c->peer, r->len);
        } else {
            r->status = c->ep_status != UCS_OK ? FX_ERR_PEER_FAILED : FX_ERR_CONNECTION;
            conn_fail(c, r->status, "%s to %s failed: %s", r->send ? "send" : "receive", c->peer,
                      ucs_status_string(st));
        }
    } else if (!r->send && r->len > 0 && r->data.info.length != r->len) {
        r->status = FX_ERR_MISMATCH;
        conn_fail(c, FX_ERR_MISMATCH, "payload of %zu bytes from %s, %zu posted",
                  r->data.info.length, c->peer, r->len);
    } else {
        r->status = FX_OK;
    }
    return true;
}

static fx_status post(struct fx_tp_conn *c, bool send, const void *hdr, size_t hdrlen,
                      const void *buf, size_t len, struct fx_tp_req **out)
{
    ucp_worker_h w = c->tp->worker;
    struct fx_tp_req *r;

    if (c->failed != FX_OK) {
        return c->failed;
    }
    if (hdrlen > FX_TP_HDR_MAX || (send && (c->peer_closed || c->ep_status != UCS_OK))) {
        return hdrlen > FX_TP_HDR_MAX ? FX_ERR_INVALID_ARG : FX_ERR_PEER_FAILED;
    }
    r = req_get(c);
    if (r == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    r->send     = send;
    r->user_hdr = send ? NULL : (void *)hdr;
    r->hdrlen   = hdrlen;
    r->len      = len;
    if (send && len > 0 && c->pid_watch) {
        /*
         * Mode none: a forced close does not stop a send UCX 1.13 has queued on shared memory,
         * and after close() the caller may free its buffer, so the payload goes from a copy
         * (UCX copies it into the queue anyway: rendezvous is off then, context_create).
         */
        r->bounce = malloc(UCX_BOUNCE_HDR + len);
        if (r->bounce == NULL) {
            req_put(r);
            return FX_ERR_NO_MEMORY;
        }
        memcpy(r->bounce + UCX_BOUNCE_HDR, buf, len);
        buf = r->bounce + UCX_BOUNCE_HDR;
    }
    if (send) {
        put64(r->msg, len);
        put32(r->msg + 8, (uint32_t)hdrlen);
        if (hdrlen > 0) {
            memcpy(r->msg + UCX_MSG_HDR, hdr, hdrlen);
        }
        op_send(&r->hdr, c->ep, make_tag(c->peer_id, KIND_HDR), r->msg, UCX_MSG_HDR + hdrlen);
        if (len > 0) {
            op_send(&r->data, c->ep, make_tag(c->peer_id, KIND_DATA), buf, len);
        }
    } else {
        op_recv(&r->hdr, w, make_tag(c->id, KIND_HDR), r->msg, sizeof(r->msg));
        if (len > 0) {
            op_recv(&r->data, w, make_tag(c->id, KIND_DATA), (void *)buf, len);
        }
    }
    queue_push(send ? &c->sendq : &c->recvq, r);
    *out = r;
    return FX_OK;
}

static fx_status ucx_isend(struct fx_tp_conn *c, const void *hdr, size_t hdrlen, const void *buf,
                           size_t len, struct fx_tp_req **req)
{
    return post(c, true, hdr, hdrlen, buf, len, req);
}

static fx_status ucx_irecv(struct fx_tp_conn *c, void *hdr, size_t hdrlen, void *buf, size_t len,
                           struct fx_tp_req **req)
{
    return post(c, false, hdr, hdrlen, buf, len, req);
}

/*
 * Updates a queue in post order and takes its completed head off: a request is reported
 * complete only after every earlier one on its queue (the contract's order).
 */
static void queue_update(struct req_queue *q)
{
    bool prefix = true;

    for (struct fx_tp_req *r = q->head, *next; r != NULL; r = next) {
        bool done = req_update(r);

        next = r->next;
        if (prefix && done) {
            q->head = next;
            r->next = r; /* marks it complete: out of the queue */
        }
        prefix = prefix && done;
    }
    if (q->head == NULL) {
        q->tail = NULL;
    }
}

static fx_status ucx_test(struct fx_tp_req *r)
{
    struct fx_tp_conn *c = r->conn;
    fx_status status;

    if (r->next != r) {
        queue_update(r->send ? &c->sendq : &c->recvq);
        if (r->next != r) {
            return FX_INPROGRESS;
        }
    }
    status = r->status;
    free(r->bounce);
    r->bounce = NULL;
    req_put(r);
    return status;
}

/* ------------------------------------------------------------------ instance */

/* Whether a UCX transport reaches only processes of this host, without peer failure handling. */
static bool shm_only_tl(const char *tl)
{
    static const char *const names[] = {"self/", "posix/", "sysv/", "cma/", "knem/", "xpmem/"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strncmp(tl, names[i], strlen(names[i])) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Reads the transports the context found (UCP's own listing, "tl/device" each) and, with log,
 * logs them at INFO with the UCX version and settings. When they are all shared-memory ones,
 * local peers are unreachable in error mode peer (ep_create), known here without a refused
 * attempt. Returns whether cma is among them.
 */
static bool read_resources(struct fx_tp *tp, bool log)
{
    const char *tls  = getenv("UCX_TLS");
    const char *devs = getenv("UCX_NET_DEVICES");
    char list[400]   = "";
    char *text       = NULL;
    size_t size      = 0;
    bool network     = false;
    bool cma         = false;
    FILE *f          = open_memstream(&text, &size);

    if (f != NULL) {
        ucp_context_print_info(tp->ctx, f);
        fclose(f);
    }
    for (char *line = text; line != NULL && *line != '\0';) {
        char *end = strchr(line, '\n');
        char *tl  = strstr(line, "flags -- ");

        if (end != NULL) {
            *end = '\0';
        }
        if (strstr(line, "resource") != NULL && tl != NULL) {
            network = network || !shm_only_tl(tl + 9);
            cma     = cma || strncmp(tl + 9, "cma/", 4) == 0;
            if (strlen(list) + strlen(tl + 9) + 2 < sizeof(list)) {
                strcat(list, list[0] ? " " : "");
                strcat(list, tl + 9);
            }
        }
        line = end != NULL ? end + 1 : NULL;
    }
    free(text);
    tp->local_mode_none = list[0] != '\0' && !network;
    if (log) {
        fx_info(FX_SUB_NET, "ucx %s: UCX_TLS=%s UCX_NET_DEVICES=%s, resources: %s",
                ucp_get_version_string(), tls != NULL ? tls : "(default: all)",
                devs != NULL ? devs : "(default: all)", list[0] ? list : "unknown");
    }
    return cma;
}

/* Reads UCX's configuration from its UCX_* variables and creates the context. */
static fx_status context_create(struct fx_tp *tp)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                           .features   = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP};
    ucp_config_t *config;
    ucs_status_t st = ucp_config_read(NULL, NULL, &config);

    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: cannot read its configuration: %s", ucs_status_string(st));
        return FX_ERR_SYSTEM;
    }
    /* UCX's default (20 s) would notice a hung peer far beyond the core's time bounds. */
    if (getenv("UCX_KEEPALIVE_INTERVAL") == NULL) {
        ucp_config_modify(config, "KEEPALIVE_INTERVAL", "1s");
    }
    st = ucp_init(&params, config, &tp->ctx);
    /*
     * Only shared-memory transports: endpoints in error mode none (ep_create), where UCX 1.13
     * aborts the process when a cma transfer finds its peer dead. Rendezvous (cma's only use)
     * is turned off then, unless UCX_RNDV_THRESH says otherwise: messages go through the
     * posix or sysv queues, and a peer's death is survived.
     */
    if (st == UCS_OK && read_resources(tp, false) && tp->local_mode_none &&
        getenv("UCX_RNDV_THRESH") == NULL) {
        ucp_cleanup(tp->ctx);
        ucp_config_modify(config, "RNDV_THRESH", "inf");
        st = ucp_init(&params, config, &tp->ctx);
        fx_info(FX_SUB_NET, "ucx: shared memory only, rendezvous off (UCX_RNDV_THRESH=inf): a "
                            "cma transfer from a dead peer would abort this process");
    }
    ucp_config_release(config);
    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: ucp_init failed: %s", ucs_status_string(st));
        return FX_ERR_SYSTEM;
    }
    read_resources(tp, true);
    return FX_OK;
}

static fx_status ucx_init(const struct fx_tp_config *cfg, struct fx_tp **out)
{
    ucp_worker_params_t wp = {.field_mask  = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    struct fx_tp *tp       = calloc(1, sizeof(*tp));
    fx_status status;
    ucs_status_t st;

    if (tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    tp->next_id    = 1;
    if (gethostname(tp->host, sizeof(tp->host)) != 0) {
        snprintf(tp->host, sizeof(tp->host), "unknown");
    }
    tp->host[sizeof(tp->host) - 1] = '\0';
    host_ident(tp->ident);
    status = context_create(tp);
    if (status != FX_OK) {
        goto err_free;
    }
    st = ucp_worker_create(tp->ctx, &wp, &tp->worker);
    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: ucp_worker_create failed: %s", ucs_status_string(st));
        status = FX_ERR_SYSTEM;
        goto err_cleanup;
    }
    st = ucp_worker_get_efd(tp->worker, &tp->efd);
    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: the worker has no event fd: %s", ucs_status_string(st));
        status = FX_ERR_SYSTEM;
        goto err_worker;
    }
    *out = tp;
    return FX_OK;

err_worker:
    ucp_worker_destroy(tp->worker);
err_cleanup:
    ucp_cleanup(tp->ctx);
err_free:
    free(tp);
    return status;
}

static void conn_free(struct fx_tp_conn *c)
{
    if (c->pidfd >= 0) {
        close(c->pidfd);
    }
    free(c->hello_msg);
    free(c);
}

/* Starts the endpoint's forced close (UCX cancels what still runs on it); false when it
 * finished at once. */
static bool ep_force_close(struct fx_tp_conn *c)
{
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags        = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t ret      = ucp_ep_close_nbx(c->ep, &param);

    c->ep        = NULL;
    c->close_req = UCS_PTR_IS_PTR(ret) ? ret : NULL;
    return c->close_req != NULL;
}

/* Moves a closing connection on (its flush done: the forced close); true once it is closed. */
static bool closing_step(struct fx_tp_conn *c)
{
    if (c->flush_req != NULL) {
        if (ucp_request_check_status(c->flush_req) == UCS_INPROGRESS) {
            return false;
        }
        ucp_request_free(c->flush_req);
        c->flush_req = NULL;
        return !ep_force_close(c);
    }
    if (c->close_req != NULL) {
        if (ucp_request_check_status(c->close_req) == UCS_INPROGRESS) {
            return false;
        }
        ucp_request_free(c->close_req);
        c->close_req = NULL;
    }
    return true;
}

/* Finishes endpoint closes; with wait, for up to UCX_CLOSE_MS. */
static void closing_progress(struct fx_tp *tp, bool wait)
{
    int64_t deadline = fx_now_ms() + UCX_CLOSE_MS;

    do {
        struct fx_tp_conn **pp = &tp->closing;

        while (*pp != NULL) {
            struct fx_tp_conn *c = *pp;

            if (!closing_step(c)) {
                pp = &c->next;
                continue;
            }
            *pp = c->next;
            conn_free(c);
        }
        if (wait && tp->closing != NULL) {
            ucp_worker_progress(tp->worker);
        }
    } while (wait && tp->closing != NULL && fx_now_ms() < deadline);
}

/*
 * Receives and drops what nobody will receive any more (goodbyes and messages to connections
 * already closed), which UCX would otherwise report as unmatched when the worker goes.
 */
static void drain_unexpected(struct fx_tp *tp)
{
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL};
    ucp_tag_recv_info_t info;
    ucp_tag_message_h msg;

    for (int n = 0; n < 4096; n++) {
        void *buf;
        ucs_status_ptr_t req;

        msg = ucp_tag_probe_nb(tp->worker, 0, 0, 1, &info);
        if (msg == NULL) {
            return;
        }
        buf = malloc(info.length > 0 ? info.length : 1);
        if (buf == NULL) {
            return;
        }
        req = ucp_tag_msg_recv_nbx(tp->worker, buf, info.length, msg, &param);
        while (UCS_PTR_IS_PTR(req) && ucp_request_check_status(req) == UCS_INPROGRESS) {
            ucp_worker_progress(tp->worker);
        }
        if (UCS_PTR_IS_PTR(req)) {
            ucp_request_free(req);
        }
        free(buf);
    }
}

static void ucx_fini(struct fx_tp *tp)
{
    closing_progress(tp, true);
    /* Flushes that did not finish (a peer that stopped): forced, so that no request is left on
     * an endpoint when the worker goes. */
    for (struct fx_tp_conn *c = tp->closing; c != NULL; c = c->next) {
        if (c->flush_req != NULL) {
            ucp_request_free(c->flush_req);
            c->flush_req = NULL;
            ep_force_close(c);
        }
    }
    closing_progress(tp, true);
    drain_unexpected(tp);
    for (struct fx_tp_conn *c = tp->closing; c != NULL; c = c->next) {
        if (c->close_req != NULL) {
            ucp_request_free(c->close_req);
        }
    }
    ucp_worker_destroy(tp->worker);
    ucp_cleanup(tp->ctx);
    while (tp->closing != NULL) {
        struct fx_tp_conn *c = tp->closing;

        tp->closing = c->next;
        conn_free(c);
    }
    while (tp->all_reqs != NULL) {
        struct fx_tp_req *r = tp->all_reqs;

        tp->all_reqs = r->all_next;
        free(r->bounce);
        free(r);
    }
    while (tp->orphans != NULL) {
        uint8_t *b = tp->orphans;

        memcpy(&tp->orphans, b, sizeof(uint8_t *));
        free(b);
    }
    free(tp);
}

static int ucx_wait_fd(struct fx_tp *tp)
{
    return tp->efd;
}

static void names_peer(struct fx_tp_conn *c, const uint8_t *host, uint32_t pid)
{
    snprintf(c->peer, sizeof(c->peer), "pid %u on %.*s (ucx connection %u)", (unsigned)pid,
             UCX_HOST_LEN, (const char *)host, (unsigned)c->id);
}

/* The connecting side: the acceptor's acknowledgement makes the connection usable. */
static void ack_check(struct fx_tp_conn *c)
{
    if (!op_poll(&c->ack_op)) {
        if (fx_now_ms() > c->deadline) {
            conn_fail(c, FX_ERR_CONNECTION, "no answer from the ucx listener of %s in %d ms",
                      c->peer, c->tp->timeout_ms);
        }
        return;
    }
    if (c->ack_op.status != UCS_OK || c->ack_op.info.length != UCX_ACK_LEN ||
        get32(c->ack) != UCX_MAGIC || get16(c->ack + 4) != UCX_VERSION) {
        conn_fail(c, FX_ERR_CONNECTION, "bad acknowledgement from %s (%zu bytes): %s", c->peer,
                  c->ack_op.info.length, ucs_status_string(c->ack_op.status));
        return;
    }
    c->ack[UCX_ACK_LEN - 1] = '\0';
    c->peer_id              = get32(c->ack + 8);
    names_peer(c, c->ack + 16, get32(c->ack + 12));
    c->established = true;
}

/*
 * The peer closed (its goodbye came after everything it sent) or died (the endpoint failed, or
 * a local peer exited): what already arrived is still received, but a request still waiting for
 * its header, or a send, can no longer complete. Sends are let go (the peer reads no more of
 * them); receives are cancelled, and UCX fails those it was filling from a failed endpoint. A
 * local peer that exited sends nothing more once what it left in our queues is processed, so
 * after that its receives are let go as well.
 */
static void peer_gone(struct fx_tp_conn *c)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};
    bool exited             = c->pid_watch && c->ep_status != UCS_OK;

    if (c->error[0] == '\0') {
        if (c->ep_status != UCS_OK && c->pid_watch) {
            snprintf(c->error, sizeof(c->error), "%s exited", c->peer);
        } else if (c->ep_status != UCS_OK) {
            snprintf(c->error, sizeof(c->error), "%s died or became unreachable: %s", c->peer,
                     ucs_status_string(c->ep_status));
        } else {
            snprintf(c->error, sizeof(c->error), "%s closed its connection", c->peer);
        }
        fx_info(FX_SUB_NET, "ucx: %s", c->error);
        for (int n = 0; exited && n < UCX_PROGRESS_MAX; n++) {
            if (ucp_worker_progress(c->tp->worker) == 0) {
                break;
            }
        }
    }
    for (int d = 0; d < 2; d++) {
        for (struct fx_tp_req *r = qs[d]->head; r != NULL; r = r->next) {
            if (r->status != FX_INPROGRESS || !(r->send || r->hdr.busy || c->ep_status != UCS_OK)) {
                continue;
            }
            r->status = FX_ERR_PEER_FAILED;
            if (r->send || exited) {
                op_abandon(&r->hdr, c->tp->worker);
                op_abandon(&r->data, c->tp->worker);
                orphan_bounce(r);
            } else {
                op_cancel(&r->hdr, c->tp->worker);
                op_cancel(&r->data, c->tp->worker);
            }
        }
    }
}

/* A local peer's liveness, looked at every UCX_PID_CHECK_MS: its pidfd polls readable once it
 * exited (a killed process counts before it is reaped); without a pidfd, kill(pid, 0). */
static void check_local_peer(struct fx_tp_conn *c)
{
    struct pollfd pfd = {.fd = c->pidfd, .events = POLLIN};
    int64_t now       = fx_now_ms();
    bool gone;

    if (now < c->next_check_ms || c->ep_status != UCS_OK) {
        return;
    }
    c->next_check_ms = now + UCX_PID_CHECK_MS;
    if (c->pidfd >= 0) {
        gone = poll(&pfd, 1, 0) > 0;
    } else {
        gone = kill((pid_t)c->peer_pid, 0) != 0 && errno == ESRCH;
    }
    if (gone) {
        c->ep_status = UCS_ERR_CONNECTION_RESET;
    }
}

static void conn_update(struct fx_tp_conn *c)
{
    if (c->pid_watch && c->established) {
        check_local_peer(c);
    }
    if (!c->established && c->failed == FX_OK) {
        ack_check(c);
    }
    if (!c->peer_closed && op_poll(&c->bye_op)) {
        c->peer_closed = c->bye_op.status == UCS_OK;
    }
    queue_update(&c->sendq);
    queue_update(&c->recvq);
    if (c->failed == FX_OK && c->established && (c->peer_closed || c->ep_status != UCS_OK)) {
        peer_gone(c);
    }
}

static fx_status ucx_progress(struct fx_tp *tp)
{
    for (int n = 0; n < UCX_PROGRESS_MAX && ucp_worker_progress(tp->worker) != 0; n++) {
    }
    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        conn_update(c);
    }
    if (tp->closing != NULL) {
        closing_progress(tp, false);
    }
    return FX_OK;
}

static bool ucx_prepare_wait(struct fx_tp *tp)
{
    ucs_status_t st = ucp_worker_arm(tp->worker);

    if (st != UCS_OK && st != UCS_ERR_BUSY) {
        fx_warn(FX_SUB_NET, "ucx: cannot arm the worker's event fd: %s", ucs_status_string(st));
    }
    return st != UCS_OK;
}

/* ------------------------------------------------------------------ set-up */

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    struct fx_tp_conn *c = arg;

    if (c->ep_status == UCS_OK) {
        c->ep_status = status;
    }
}

/*
 * Creates the endpoint, in UCP_ERR_HANDLING_MODE_PEER where UCX can: a dead peer fails it, and
 * a forced close cancels what it still moves. UCX 1.13's shared-memory transports (posix, sysv)
 * have no peer failure handling, so with UCX_TLS limited to them a peer of this host is
 * unreachable in that mode: then the endpoint is made in mode none and the peer's death is seen
 * through a pidfd (conn_update). read_resources() usually knows it beforehand; otherwise UCX
 * logs the refused attempt once per instance and later local peers go straight to mode none.
 * Both sides decide alike (same settings, same identities).
 */
static fx_status ep_create(struct fx_tp_conn *c, const ucp_address_t *addr, const uint8_t *ident,
                           uint32_t pid)
{
    ucp_ep_params_t params = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address         = addr,
        .err_mode        = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler.cb  = ep_error,
        .err_handler.arg = c,
    };
    bool local      = ident_local(c->tp, ident);
    ucs_status_t st = UCS_ERR_UNREACHABLE;

    c->peer_pid = pid;
    if (!local || !c->tp->local_mode_none) {
        st = ucp_ep_create(c->tp->worker, &params, &c->ep);
    }
    if (st == UCS_ERR_UNREACHABLE && local) {
        c->tp->local_mode_none = true;
        c->pid_watch           = true;
        c->pidfd               = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        params.field_mask &= ~(uint64_t)UCP_EP_PARAM_FIELD_ERR_HANDLER;
        params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
        st              = ucp_ep_create(c->tp->worker, &params, &c->ep);
    }
    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: cannot create an endpoint to %s: %s", c->peer,
                ucs_status_string(st));
        c->ep = NULL;
        return FX_ERR_CONNECTION;
    }
    return FX_OK;
}

static struct fx_tp_conn *conn_new(struct fx_tp *tp)
{
    struct fx_tp_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return NULL;
    }
    c->tp    = tp;
    c->id    = tp->next_id++;
    c->pidfd = -1;
    op_recv(&c->bye_op, tp->worker, make_tag(c->id, KIND_BYE), c->bye_in, sizeof(c->bye_in));
    return c;
}

static fx_status ucx_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out)
{
    ucp_worker_attr_t attr = {.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS |
                                            UCP_WORKER_ATTR_FIELD_ADDRESS_FLAGS};
    struct fx_tp_listener *l;
    ucs_status_t st = ucp_worker_query(tp->worker, &attr);

    if (st == UCS_OK && attr.address_length > FX_TP_ADDR_MAX - UCX_ADDR_HDR) {
        fx_info(FX_SUB_NET,
                "ucx: the worker address (%zu bytes) exceeds %d bytes: publishing its network "
                "part only (no shared memory between ranks of a host)",
                attr.address_length, FX_TP_ADDR_MAX - UCX_ADDR_HDR);
        ucp_worker_release_address(tp->worker, attr.address);
        attr.address_flags = UCP_WORKER_ADDRESS_FLAG_NET_ONLY;
        st                 = ucp_worker_query(tp->worker, &attr);
    }
    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: no worker address: %s", ucs_status_string(st));
        return FX_ERR_SYSTEM;
    }
    if (attr.address_length > FX_TP_ADDR_MAX - UCX_ADDR_HDR) {
        fx_warn(FX_SUB_NET,
                "ucx: the worker address is %zu bytes, more than %d even without shared memory "
                "transports: narrow UCX_TLS or UCX_NET_DEVICES",
                attr.address_length, FX_TP_ADDR_MAX - UCX_ADDR_HDR);
        ucp_worker_release_address(tp->worker, attr.address);
        return FX_ERR_UNSUPPORTED;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        ucp_worker_release_address(tp->worker, attr.address);
        return FX_ERR_NO_MEMORY;
    }
    l->tp = tp;
    l->id = tp->next_id++;
    memset(addr, 0, sizeof(*addr));
    put32(addr->data, UCX_MAGIC);
    put32(addr->data + 4, l->id);
    put32(addr->data + 8, (uint32_t)getpid());
    memcpy(addr->data + 12, tp->ident, UCX_IDENT_LEN);
    memcpy(addr->data + UCX_ADDR_HDR, attr.address, attr.address_length);
    addr->len = (uint32_t)(UCX_ADDR_HDR + attr.address_length);
    ucp_worker_release_address(tp->worker, attr.address);
    op_recv(&l->op, tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf));
    *out = l;
    return FX_OK;
}

static void ucx_listen_close(struct fx_tp_listener *l)
{
    op_abandon(&l->op, l->tp->worker);
    free(l);
}

/* Builds and sends the hello; the connection waits for the acknowledgement. */
static fx_status hello_send(struct fx_tp_conn *c, uint32_t lst_id, const void *hello,
                            size_t hello_len)
{
    struct fx_tp *tp = c->tp;
    ucp_address_t *my_addr;
    size_t my_len;
    ucs_status_t st = ucp_worker_get_address(tp->worker, &my_addr, &my_len);
    size_t total    = UCX_HELLO_HDR + my_len + hello_len;

    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: no worker address: %s", ucs_status_string(st));
        return FX_ERR_SYSTEM;
    }
    c->hello_msg = calloc(1, total);
    if (c->hello_msg == NULL || total > UCX_HELLO_BUF) {
        fx_warn(FX_SUB_NET, "ucx: a %zu-byte hello %s", total,
                c->hello_msg == NULL ? "finds no memory" : "exceeds the listener's buffer");
        ucp_worker_release_address(tp->worker, my_addr);
        return c->hello_msg == NULL ? FX_ERR_NO_MEMORY : FX_ERR_UNSUPPORTED;
    }
    put32(c->hello_msg, UCX_MAGIC);
    put16(c->hello_msg + 4, UCX_VERSION);
    put16(c->hello_msg + 6, (uint16_t)hello_len);
    put32(c->hello_msg + 8, c->id);
    put32(c->hello_msg + 12, (uint32_t)getpid());
    put32(c->hello_msg + 16, (uint32_t)my_len);
    memcpy(c->hello_msg + 20, tp->host, UCX_HOST_LEN);
    memcpy(c->hello_msg + 84, tp->ident, UCX_IDENT_LEN);
    memcpy(c->hello_msg + UCX_HELLO_HDR, my_addr, my_len);
    memcpy(c->hello_msg + UCX_HELLO_HDR + my_len, hello, hello_len);
    ucp_worker_release_address(tp->worker, my_addr);
    op_recv(&c->ack_op, tp->worker, make_tag(c->id, KIND_ACK), c->ack, sizeof(c->ack));
    op_send(&c->hello_op, c->ep, make_tag(lst_id, KIND_HELLO), c->hello_msg, total);
    return FX_OK;
}

static fx_status connect_begin(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                               size_t hello_len, struct fx_tp_conn **out)
{
    struct fx_tp_conn *c;
    fx_status status;

    if (addr->len <= UCX_ADDR_HDR || addr->len > FX_TP_ADDR_MAX || get32(addr->data) != UCX_MAGIC ||
        hello_len > FX_TP_HELLO_MAX) {
        fx_warn(FX_SUB_NET, "ucx: not a ucx address (%u bytes), or a hello of %zu bytes",
                (unsigned)addr->len, hello_len);
        return FX_ERR_INVALID_ARG;
    }
    c = conn_new(tp);
    if (c == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    snprintf(c->peer, sizeof(c->peer), "ucx listener %u", (unsigned)get32(addr->data + 4));
    c->deadline = fx_now_ms() + tp->timeout_ms;
    c->next     = tp->conns;
    tp->conns   = c;
    *out        = c;
    status      = ep_create(c, (const ucp_address_t *)(addr->data + UCX_ADDR_HDR), addr->data + 12,
                            get32(addr->data + 8));
    if (status == FX_OK) {
        status = hello_send(c, get32(addr->data + 4), hello, hello_len);
    }
    if (status != FX_OK) {
        conn_fail(c, status, "cannot reach %s: %s", c->peer, fx_strerror(status));
        return status;
    }
    return FX_INPROGRESS;
}

static fx_status ucx_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                             size_t hello_len, struct fx_tp_conn **conn)
{
    struct fx_tp_conn *c = *conn;

    if (c == NULL) {
        return connect_begin(tp, addr, hello, hello_len, conn);
    }
    if (c->failed == FX_OK && !c->established) {
        ucp_worker_progress(tp->worker);
        conn_update(c);
    }
    if (c->failed == FX_OK && c->ep_status != UCS_OK && !c->established) {
        conn_fail(c, FX_ERR_CONNECTION, "cannot reach %s: %s", c->peer,
                  ucs_status_string(c->ep_status));
    }
    if (c->failed != FX_OK) {
        return c->failed == FX_ERR_PEER_FAILED ? FX_ERR_CONNECTION : c->failed;
    }
    return c->established ? FX_OK : FX_INPROGRESS;
}

/* Checks a hello message; false (logged) for anything not a libfabricx ucx hello. */
static bool hello_valid(const struct fx_tp_listener *l, size_t *addr_len, size_t *hello_len)
{
    size_t got = l->op.info.length;

    if (l->op.status != UCS_OK || got < UCX_HELLO_HDR || get32(l->buf) != UCX_MAGIC ||
        get16(l->buf + 4) != UCX_VERSION) {
        fx_warn(FX_SUB_NET, "ucx: dropped a %zu-byte message at the listener: %s", got,
                l->op.status != UCS_OK ? ucs_status_string(l->op.status)
                                       : "not a libfabricx ucx hello (or another version)");
        return false;
    }
    *hello_len = get16(l->buf + 6);
    *addr_len  = get32(l->buf + 16);
    if (*hello_len > FX_TP_HELLO_MAX || *addr_len == 0 ||
        got != UCX_HELLO_HDR + *addr_len + *hello_len) {
        fx_warn(FX_SUB_NET, "ucx: dropped a hello of %zu bytes with inconsistent lengths", got);
        return false;
    }
    return true;
}

/* Makes the accepted connection: an endpoint back to the connector, and the acknowledgement. */
static fx_status accept_conn(struct fx_tp_listener *l, struct fx_tp_conn **out)
{
    struct fx_tp_conn *c = conn_new(l->tp);

    if (c == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    l->buf[20 + UCX_HOST_LEN - 1] = '\0';
    c->peer_id                    = get32(l->buf + 8);
    names_peer(c, l->buf + 20, get32(l->buf + 12));
    if (ep_create(c, (const ucp_address_t *)(l->buf + UCX_HELLO_HDR), l->buf + 84,
                  get32(l->buf + 12)) != FX_OK) {
        op_abandon(&c->bye_op, l->tp->worker);
        conn_free(c);
        return FX_ERR_CONNECTION;
    }
    put32(c->ack, UCX_MAGIC);
    put16(c->ack + 4, UCX_VERSION);
    put32(c->ack + 8, c->id);
    put32(c->ack + 12, (uint32_t)getpid());
    memcpy(c->ack + 16, l->tp->host, UCX_HOST_LEN);
    op_send(&c->ack_op, c->ep, make_tag(c->peer_id, KIND_ACK), c->ack, UCX_ACK_LEN);
    c->established = true;
    c->next        = l->tp->conns;
    l->tp->conns   = c;
    *out           = c;
    return FX_OK;
}

static fx_status ucx_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                            size_t *hello_len)
{
    for (int tries = 0; tries < 16 && op_poll(&l->op); tries++) {
        size_t addr_len;
        size_t hlen;
        bool ok = hello_valid(l, &addr_len, &hlen);

        if (ok && accept_conn(l, conn) == FX_OK) {
            memcpy(hello, l->buf + UCX_HELLO_HDR + addr_len, hlen);
            *hello_len = hlen;
            op_recv(&l->op, l->tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf));
            return FX_OK;
        }
        op_recv(&l->op, l->tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf));
    }
    return FX_INPROGRESS;
}

/* Polls the connection's operations; true while one still runs (with recv_only: a receive).
 * With cancel, receives not matched yet are cancelled first. */
static bool ops_busy(struct fx_tp_conn *c, bool cancel, bool recv_only)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};
    bool busy               = false;

    for (int d = 0; d < 2; d++) {
        for (struct fx_tp_req *r = qs[d]->head; r != NULL; r = r->next) {
            struct ucx_op *ops[2] = {&r->hdr, &r->data};

            for (int k = 0; k < 2; k++) {
                if (cancel) {
                    op_cancel(ops[k], c->tp->worker);
                }
                busy = (!op_poll(ops[k]) && (ops[k]->recv || !recv_only)) || busy;
            }
        }
    }
    return busy;
}

/* Abandons the connection's requests: they return to the free list, UCX finishes on its own. */
static void abandon_requests(struct fx_tp_conn *c)
{
    struct req_queue *qs[2] = {&c->sendq, &c->recvq};

    for (int d = 0; d < 2; d++) {
        while (qs[d]->head != NULL) {
            struct fx_tp_req *r = qs[d]->head;

            qs[d]->head = r->next;
            op_abandon(&r->hdr, c->tp->worker);
            op_abandon(&r->data, c->tp->worker);
            orphan_bounce(r);
            req_put(r);
        }
        qs[d]->tail = NULL;
    }
    op_abandon(&c->hello_op, c->tp->worker);
    op_abandon(&c->ack_op, c->tp->worker);
    op_abandon(&c->bye_op, c->tp->worker);
}

/*
 * After close() the caller owns its buffers again, so UCX must not touch them any more.
 * Receives not matched yet are cancelled; one being filled is waited for, up to UCX_QUIESCE_MS
 * (its sender lives, or UCX fails it; a stopped sender keeps it, and it is then left to UCX). A
 * send still running ends with the endpoint's forced close, which cancels it. Returns whether
 * something still runs.
 */
static bool close_quiesce(struct fx_tp_conn *c)
{
    int64_t deadline = fx_now_ms() + UCX_QUIESCE_MS;
    bool busy        = ops_busy(c, true, true);

    if (c->pid_watch && c->established) {
        c->next_check_ms = 0;
        check_local_peer(c);
    }
    while (busy && c->ep_status == UCS_OK && fx_now_ms() < deadline) {
        ucp_worker_progress(c->tp->worker);
        busy = ops_busy(c, false, true);
        if (c->pid_watch && c->established) {
            check_local_peer(c);
        }
    }
    if (c->ep_status != UCS_OK) { /* what the peer left in our queues */
        for (int n = 0; n < UCX_PROGRESS_MAX && ucp_worker_progress(c->tp->worker) != 0; n++) {
        }
    }
    return ops_busy(c, false, false);
}

/*
 * Closes a connection. A healthy one says goodbye after what it sent and is flushed, so the
 * peer still receives everything, and then closed by force (nothing runs on it any more; a
 * flush-mode close would wait for the peer's answer, which a stopped peer never gives); a failed
 * one, or one with operations still running, is forced at once. The connection stays on the
 * closing list until UCX finished.
 */
static void ucx_close(struct fx_tp_conn *c)
{
    struct fx_tp *tp          = c->tp;
    struct fx_tp_conn **pp    = &tp->conns;
    ucp_request_param_t param = {.op_attr_mask = 0};
    bool busy;
    bool healthy;
    bool force;
    ucs_status_ptr_t ret;

    while (*pp != NULL && *pp != c) {
        pp = &(*pp)->next;
    }
    if (*pp == c) {
        *pp = c->next;
    }
    busy = c->ep != NULL && close_quiesce(c);
    abandon_requests(c);
    if (c->ep == NULL) {
        conn_free(c);
        return;
    }
    healthy = c->failed == FX_OK && c->established && c->ep_status == UCS_OK && !busy;
    if (healthy && !c->peer_closed) {
        struct ucx_op bye;

        put32(c->bye_out, UCX_MAGIC);
        op_send(&bye, c->ep, make_tag(c->peer_id, KIND_BYE), c->bye_out, sizeof(c->bye_out));
        op_abandon(&bye, tp->worker); /* the flush below waits for it */
    }
    /* UCX asks for error mode peer on both sides of a forced close, as the peer may see
     * transport errors; in mode none (shared memory only) there is no connection to disturb. */
    force = !healthy;
    ret   = force ? NULL : ucp_ep_flush_nbx(c->ep, &param);
    if (UCS_PTR_IS_PTR(ret)) {
        c->flush_req = ret;
    } else if (!ep_force_close(c)) {
        conn_free(c);
        return;
    }
    c->next     = tp->closing;
    tp->closing = c;
}

static void ucx_conn_error(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->error[0] ? c->error : "no error");
}

static void ucx_conn_peer(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->peer);
}

const struct fx_transport_ops fx_ucx_ops = {
    .name         = "ucx",
    .caps         = FX_TP_CAP_HOST_MEM,
    .init         = ucx_init,
    .fini         = ucx_fini,
    .progress     = ucx_progress,
    .wait_fd      = ucx_wait_fd,
    .prepare_wait = ucx_prepare_wait,
    .listen       = ucx_listen,
    .listen_close = ucx_listen_close,
    .connect      = ucx_connect,
    .accept       = ucx_accept,
    .close        = ucx_close,
    .isend        = ucx_isend,
    .irecv        = ucx_irecv,
    .test         = ucx_test,
    .conn_error   = ucx_conn_error,
    .conn_peer    = ucx_conn_peer,
};
