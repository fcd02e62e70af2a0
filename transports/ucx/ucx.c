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
 *       u32 worker address length, char host[64], 24 bytes of host identity (kernel boot id,
 *       pid namespace); then the worker address and the hello bytes
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
 * both sides hold an endpoint that notices the other's death: in UCP_ERR_HANDLING_MODE_PEER
 * (UCX's keep-alive, its interval set to 1 s unless UCX_KEEPALIVE_INTERVAL is set) wherever UCX
 * can; with shared-memory transports alone (which lack peer failure handling in UCX 1.13) in
 * mode none, with a pidfd on the local peer, no rendezvous (a cma transfer from a dead peer
 * aborts the process in that mode) and sends from a copy (ucx_conn.c: ep_create, close).
 * Requests complete only once UCX no longer uses their buffers, and close() leaves no UCX
 * operation on them: the core hands the buffers back to the caller after a failure.
 *
 * Published address: u32 magic, u32 listener id, u32 pid, the host identity, then the worker
 * address. UCX's full address
 * (every transport and device: tcp, posix, sysv, cma, self, InfiniBand) is 145 to 215 bytes on a
 * host with one network interface; FX_TP_ADDR_MAX leaves room for more. A larger one is
 * replaced by the network-only address (no shared memory between local ranks), and listen
 * fails only when that does not fit either (then narrow UCX_TLS or UCX_NET_DEVICES).
 *
 * Memory registration: payloads of UCX_REG_MIN (64 KiB) or more, sent or received, go with a
 * memory handle (UCP_OP_ATTR_FIELD_MEMH, in UCX 1.13's ucp.h) from ucp_mem_map, kept in the
 * instance's registration cache (transports/rcache.h, bounded by FX_REG_CACHE_MAX), so
 * repeated collectives on the same buffers register once. The cache drops a registration when
 * libucm reports its pages unmapped (munmap, free, brk), and caches nothing when those events
 * do not arrive. A request holds its registration until UCX is done with the operation; one
 * given up while UCX may still use it (close, a dead peer) keeps it until the worker is gone
 * (fini). Smaller payloads go without (UCX copies them anyway), as do sends from a bounce copy.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/ucx/ucx_int.h"

#include "transports/tp_queue.h" /* after ucx_int.h: needs its request and queue types */

/* ------------------------------------------------------------------ requests */

/*
 * Fails the connection: its running requests complete with the status (after a mismatch: the
 * mismatched one keeps FX_ERR_MISMATCH, the others get FX_ERR_CONNECTION). Receives not matched
 * yet are cancelled; a request completes only once UCX no longer uses its buffers.
 */
void fx_ucx_conn_fail(struct fx_tp_conn *c, fx_status status, const char *fmt, ...)
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
    r->reg      = NULL;
    r->conn     = c;
    r->status   = FX_INPROGRESS;
    r->hdr_seen = false;
    r->hdr.busy = r->data.busy = false;
    r->hdr.status = r->data.status = UCS_OK;
    return r;
}

void fx_ucx_req_put(struct fx_tp_req *r)
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
void fx_ucx_orphan_bounce(struct fx_tp_req *r)
{
    if (r->bounce != NULL) {
        memcpy(r->bounce, &r->conn->tp->orphans, sizeof(uint8_t *));
        r->conn->tp->orphans = r->bounce;
        r->bounce            = NULL;
    }
}

/*
 * Releases a request's registration hold: at once when UCX is done with the operation; when it
 * was given up while UCX may still use its memory handle (running), after the worker is gone
 * (ucx_fini).
 */
void fx_ucx_reg_release(struct fx_tp_req *r, bool running)
{
    struct fx_tp *tp = r->conn->tp;
    struct ucx_held *h;

    if (r->reg == NULL) {
        return;
    }
    if (!running) {
        fx_rcache_put(tp->rcache, r->reg);
    } else if ((h = malloc(sizeof(*h))) != NULL) {
        h->ent   = r->reg;
        h->next  = tp->held;
        tp->held = h;
    }
    /* Out of memory for the note: the hold stays, and fx_rcache_destroy drops it at fini. */
    r->reg = NULL;
}

void fx_ucx_rcache_stats(struct fx_tp *tp, struct fx_rcache_stats *st)
{
    fx_rcache_stats(tp->rcache, st);
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
            fx_ucx_conn_fail(c, FX_ERR_CONNECTION,
                             "malformed message header from %s (%zu bytes): %s", c->peer, got,
                             ucs_status_string(r->hdr.status));
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
        fx_ucx_conn_fail(c, FX_ERR_MISMATCH,
                         "message of %zu header and %llu payload bytes from %s, %zu and %zu posted",
                         hlen, (unsigned long long)len, c->peer, r->hdrlen, r->len);
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
            fx_ucx_conn_fail(c, FX_ERR_MISMATCH, "payload from %s longer than the %zu bytes posted",
                             c->peer, r->len);
        } else {
            r->status = c->ep_status != UCS_OK ? FX_ERR_PEER_FAILED : FX_ERR_CONNECTION;
            fx_ucx_conn_fail(c, r->status, "%s to %s failed: %s", r->send ? "send" : "receive",
                             c->peer, ucs_status_string(st));
        }
    } else if (!r->send && r->len > 0 && r->data.info.length != r->len) {
        r->status = FX_ERR_MISMATCH;
        fx_ucx_conn_fail(c, FX_ERR_MISMATCH, "payload of %zu bytes from %s, %zu posted",
                         r->data.info.length, c->peer, r->len);
    } else {
        r->status = FX_OK;
    }
    return true;
}

/* Holds a registration of the payload (the cache's, or one made for this operation only). */
static fx_status payload_reg(struct fx_tp_conn *c, struct fx_tp_req *r, const void *buf, size_t len)
{
    char err[256];
    fx_status status = fx_rcache_get(c->tp->rcache, buf, len, &r->reg, err, sizeof(err));

    if (status != FX_OK) {
        fx_warn(FX_SUB_NET, "ucx: payload of %zu bytes to or from %s: %s", len, c->peer, err);
    }
    return status;
}

static fx_status post(struct fx_tp_conn *c, bool send, const void *hdr, size_t hdrlen,
                      const void *buf, size_t len, struct fx_tp_req **out)
{
    ucp_worker_h w = c->tp->worker;
    ucp_mem_h memh = NULL;
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
            fx_ucx_req_put(r);
            return FX_ERR_NO_MEMORY;
        }
        memcpy(r->bounce + UCX_BOUNCE_HDR, buf, len);
        buf = r->bounce + UCX_BOUNCE_HDR;
    } else if (len >= UCX_REG_MIN) {
        fx_status status = payload_reg(c, r, buf, len);

        if (status != FX_OK) {
            fx_ucx_req_put(r);
            return status;
        }
        memh = fx_rcache_handle(r->reg);
    }
    if (send) {
        put64(r->msg, len);
        put32(r->msg + 8, (uint32_t)hdrlen);
        if (hdrlen > 0) {
            memcpy(r->msg + UCX_MSG_HDR, hdr, hdrlen);
        }
        op_send(&r->hdr, c->ep, make_tag(c->peer_id, KIND_HDR), r->msg, UCX_MSG_HDR + hdrlen, NULL);
        if (len > 0) {
            op_send(&r->data, c->ep, make_tag(c->peer_id, KIND_DATA), buf, len, memh);
        }
    } else {
        op_recv(&r->hdr, w, make_tag(c->id, KIND_HDR), r->msg, sizeof(r->msg), NULL);
        if (len > 0) {
            op_recv(&r->data, w, make_tag(c->id, KIND_DATA), (void *)buf, len, memh);
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
void fx_ucx_queue_update(struct req_queue *q)
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
        fx_ucx_queue_update(r->send ? &c->sendq : &c->recvq);
        if (r->next != r) {
            return FX_INPROGRESS;
        }
    }
    status = r->status;
    free(r->bounce);
    r->bounce = NULL;
    fx_ucx_reg_release(r, false);
    fx_ucx_req_put(r);
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

/* The registration cache's callbacks: ucp_mem_map of host memory the caller owns. */
static void *mem_map(void *ctx, void *addr, size_t len, char *err, size_t errlen)
{
    struct fx_tp *tp            = ctx;
    ucp_mem_map_params_t params = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                                 UCP_MEM_MAP_PARAM_FIELD_LENGTH,
                                   .address = addr,
                                   .length  = len};
    ucp_mem_h memh;
    ucs_status_t st = ucp_mem_map(tp->ctx, &params, &memh);

    if (st != UCS_OK) {
        snprintf(err, errlen, "ucp_mem_map of %zu bytes at %p failed: %s", len, addr,
                 ucs_status_string(st));
        return NULL;
    }
    return memh;
}

static void mem_unmap(void *ctx, void *handle)
{
    struct fx_tp *tp = ctx;
    ucs_status_t st  = ucp_mem_unmap(tp->ctx, handle);

    if (st != UCS_OK) {
        fx_warn(FX_SUB_NET, "ucx: ucp_mem_unmap failed: %s", ucs_status_string(st));
    }
}

static const struct fx_rcache_ops mem_ops = {.reg = mem_map, .dereg = mem_unmap};

static fx_status ucx_init(const struct fx_tp_config *cfg, struct fx_tp **out)
{
    ucp_worker_params_t wp = {.field_mask  = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    struct fx_tp *tp       = calloc(1, sizeof(*tp));
    fx_status status;
    ucs_status_t st;
    char err[200];

    if (tp == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    tp->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    tp->next_id    = 1;
    if (gethostname(tp->host, sizeof(tp->host)) != 0) {
        snprintf(tp->host, sizeof(tp->host), "unknown");
    }
    tp->host[sizeof(tp->host) - 1] = '\0';
    fx_ucx_host_ident(tp->ident);
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
    status = fx_rcache_create(&mem_ops, tp, cfg->reg_cache_max, &tp->rcache, err, sizeof(err));
    if (status != FX_OK) {
        fx_warn(FX_SUB_NET, "ucx: %s", err);
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

/*
 * Releases the registrations still held (operations given up, requests completed and never
 * tested before their connection closed), logs the cache's counters and destroys it. After the
 * worker: nothing uses a memory handle any more.
 */
static void rcache_fini(struct fx_tp *tp)
{
    struct fx_rcache_stats st;

    for (struct fx_tp_req *r = tp->all_reqs; r != NULL; r = r->all_next) {
        if (r->reg != NULL) {
            fx_rcache_put(tp->rcache, r->reg);
            r->reg = NULL;
        }
    }
    while (tp->held != NULL) {
        struct ucx_held *h = tp->held;

        tp->held = h->next;
        fx_rcache_put(tp->rcache, h->ent);
        free(h);
    }
    fx_rcache_stats(tp->rcache, &st);
    fx_trace(FX_SUB_MEM,
             "ucx registration cache: %llu hits, %llu misses, %llu evictions, %llu "
             "invalidations, %zu entries of %zu bytes left",
             (unsigned long long)st.hits, (unsigned long long)st.misses,
             (unsigned long long)st.evictions, (unsigned long long)st.invalidations, st.entries,
             st.bytes);
    fx_rcache_destroy(tp->rcache);
}

static void ucx_fini(struct fx_tp *tp)
{
    fx_ucx_closing_progress(tp, true);
    /* Flushes that did not finish (a peer that stopped): forced, so that no request is left on
     * an endpoint when the worker goes. */
    for (struct fx_tp_conn *c = tp->closing; c != NULL; c = c->next) {
        if (c->flush_req != NULL) {
            ucp_request_free(c->flush_req);
            c->flush_req = NULL;
            fx_ucx_ep_force_close(c);
        }
    }
    fx_ucx_closing_progress(tp, true);
    drain_unexpected(tp);
    for (struct fx_tp_conn *c = tp->closing; c != NULL; c = c->next) {
        if (c->close_req != NULL) {
            ucp_request_free(c->close_req);
        }
    }
    ucp_worker_destroy(tp->worker);
    rcache_fini(tp);
    ucp_cleanup(tp->ctx);
    while (tp->closing != NULL) {
        struct fx_tp_conn *c = tp->closing;

        tp->closing = c->next;
        fx_ucx_conn_free(c);
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

static fx_status ucx_progress(struct fx_tp *tp)
{
    for (int n = 0; n < UCX_PROGRESS_MAX && ucp_worker_progress(tp->worker) != 0; n++) {
    }
    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        fx_ucx_conn_update(c);
    }
    if (tp->closing != NULL) {
        fx_ucx_closing_progress(tp, false);
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

const struct fx_transport_ops fx_ucx_ops = {
    .name         = "ucx",
    .caps         = FX_TP_CAP_HOST_MEM,
    .init         = ucx_init,
    .fini         = ucx_fini,
    .progress     = ucx_progress,
    .wait_fd      = ucx_wait_fd,
    .prepare_wait = ucx_prepare_wait,
    .listen       = fx_ucx_listen,
    .listen_close = fx_ucx_listen_close,
    .connect      = fx_ucx_connect,
    .accept       = fx_ucx_accept,
    .close        = fx_ucx_close,
    .isend        = ucx_isend,
    .irecv        = ucx_irecv,
    .test         = ucx_test,
    .conn_error   = fx_ucx_conn_error,
    .conn_peer    = fx_ucx_conn_peer,
};
