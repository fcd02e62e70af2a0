/*
 * The UCX transport's connections (ucx.c has the design): the host identity that decides the
 * endpoints' error mode, listen, connect and accept with their hello and acknowledgement, the
 * liveness of a peer (endpoint errors, goodbyes, pidfds) and close.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/ucx/ucx_int.h"

/*
 * What makes two processes local to each other: the kernel's boot id and the pid namespace (so
 * a pid names the same process on both sides). All zero when unknown: then never local.
 */
void fx_ucx_host_ident(uint8_t ident[UCX_IDENT_LEN])
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

void fx_ucx_conn_free(struct fx_tp_conn *c)
{
    if (c->pidfd >= 0) {
        close(c->pidfd);
    }
    free(c->hello_msg);
    free(c);
}

/* Starts the endpoint's forced close (UCX cancels what still runs on it); false when it
 * finished at once. */
bool fx_ucx_ep_force_close(struct fx_tp_conn *c)
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
        return !fx_ucx_ep_force_close(c);
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
void fx_ucx_closing_progress(struct fx_tp *tp, bool wait)
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
            fx_ucx_conn_free(c);
        }
        if (wait && tp->closing != NULL) {
            ucp_worker_progress(tp->worker);
        }
    } while (wait && tp->closing != NULL && fx_now_ms() < deadline);
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
            fx_ucx_conn_fail(c, FX_ERR_CONNECTION, "no answer from the ucx listener of %s in %d ms",
                             c->peer, c->tp->timeout_ms);
        }
        return;
    }
    if (c->ack_op.status != UCS_OK || c->ack_op.info.length != UCX_ACK_LEN ||
        get32(c->ack) != UCX_MAGIC || get16(c->ack + 4) != UCX_VERSION) {
        fx_ucx_conn_fail(c, FX_ERR_CONNECTION, "bad acknowledgement from %s (%zu bytes): %s",
                         c->peer, c->ack_op.info.length, ucs_status_string(c->ack_op.status));
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
                fx_ucx_reg_release(r, op_abandon(&r->data, c->tp->worker));
                fx_ucx_orphan_bounce(r);
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

void fx_ucx_conn_update(struct fx_tp_conn *c)
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
    fx_ucx_queue_update(&c->sendq);
    fx_ucx_queue_update(&c->recvq);
    if (c->failed == FX_OK && c->established && (c->peer_closed || c->ep_status != UCS_OK)) {
        peer_gone(c);
    }
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
 * through a pidfd (fx_ucx_conn_update). read_resources() usually knows it beforehand; otherwise UCX
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
    op_recv(&c->bye_op, tp->worker, make_tag(c->id, KIND_BYE), c->bye_in, sizeof(c->bye_in), NULL);
    return c;
}

fx_status fx_ucx_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out)
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
    op_recv(&l->op, tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf), NULL);
    *out = l;
    return FX_OK;
}

void fx_ucx_listen_close(struct fx_tp_listener *l)
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
    op_recv(&c->ack_op, tp->worker, make_tag(c->id, KIND_ACK), c->ack, sizeof(c->ack), NULL);
    op_send(&c->hello_op, c->ep, make_tag(lst_id, KIND_HELLO), c->hello_msg, total, NULL);
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
        fx_ucx_conn_fail(c, status, "cannot reach %s: %s", c->peer, fx_strerror(status));
        return status;
    }
    return FX_INPROGRESS;
}

fx_status fx_ucx_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                         size_t hello_len, struct fx_tp_conn **conn)
{
    struct fx_tp_conn *c = *conn;

    if (c == NULL) {
        return connect_begin(tp, addr, hello, hello_len, conn);
    }
    if (c->failed == FX_OK && !c->established) {
        ucp_worker_progress(tp->worker);
        fx_ucx_conn_update(c);
    }
    if (c->failed == FX_OK && c->ep_status != UCS_OK && !c->established) {
        fx_ucx_conn_fail(c, FX_ERR_CONNECTION, "cannot reach %s: %s", c->peer,
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
        fx_ucx_conn_free(c);
        return FX_ERR_CONNECTION;
    }
    put32(c->ack, UCX_MAGIC);
    put16(c->ack + 4, UCX_VERSION);
    put32(c->ack + 8, c->id);
    put32(c->ack + 12, (uint32_t)getpid());
    memcpy(c->ack + 16, l->tp->host, UCX_HOST_LEN);
    op_send(&c->ack_op, c->ep, make_tag(c->peer_id, KIND_ACK), c->ack, UCX_ACK_LEN, NULL);
    c->established = true;
    c->next        = l->tp->conns;
    l->tp->conns   = c;
    *out           = c;
    return FX_OK;
}

fx_status fx_ucx_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                        size_t *hello_len)
{
    for (int tries = 0; tries < 16 && op_poll(&l->op); tries++) {
        size_t addr_len;
        size_t hlen;
        bool ok = hello_valid(l, &addr_len, &hlen);

        if (ok && accept_conn(l, conn) == FX_OK) {
            memcpy(hello, l->buf + UCX_HELLO_HDR + addr_len, hlen);
            *hello_len = hlen;
            op_recv(&l->op, l->tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf),
                    NULL);
            return FX_OK;
        }
        op_recv(&l->op, l->tp->worker, make_tag(l->id, KIND_HELLO), l->buf, sizeof(l->buf), NULL);
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
            fx_ucx_reg_release(r, op_abandon(&r->data, c->tp->worker));
            fx_ucx_orphan_bounce(r);
            fx_ucx_req_put(r);
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
void fx_ucx_close(struct fx_tp_conn *c)
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
        fx_ucx_conn_free(c);
        return;
    }
    healthy = c->failed == FX_OK && c->established && c->ep_status == UCS_OK && !busy;
    if (healthy && !c->peer_closed) {
        struct ucx_op bye;

        put32(c->bye_out, UCX_MAGIC);
        op_send(&bye, c->ep, make_tag(c->peer_id, KIND_BYE), c->bye_out, sizeof(c->bye_out), NULL);
        op_abandon(&bye, tp->worker); /* the flush below waits for it */
    }
    /* UCX asks for error mode peer on both sides of a forced close, as the peer may see
     * transport errors; in mode none (shared memory only) there is no connection to disturb. */
    force = !healthy;
    ret   = force ? NULL : ucp_ep_flush_nbx(c->ep, &param);
    if (UCS_PTR_IS_PTR(ret)) {
        c->flush_req = ret;
    } else if (!fx_ucx_ep_force_close(c)) {
        fx_ucx_conn_free(c);
        return;
    }
    c->next     = tp->closing;
    tp->closing = c;
}

void fx_ucx_conn_error(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->error[0] ? c->error : "no error");
}

void fx_ucx_conn_peer(struct fx_tp_conn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", c->peer);
}
