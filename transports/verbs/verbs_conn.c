/*
 * The verbs transport's connections (verbs.c has the design): the published address, listen,
 * connect and accept through rdma_cm with their private data, the event channel, set-up
 * deadlines, disconnects and close.
 *
 * The QPs are our own (ibv_create_qp on the connection's PD and CQ), handed to rdma_cm as
 * qp_num (librdmacm's "external QP" mode), so that their RTR address vector can carry the
 * source GID FX_IB_GID_INDEX names (verbs_gid.c). We move them ourselves with the attributes
 * rdma_init_qp_attr gives: INIT when made; the acceptor INIT again (the access the connection
 * grants), RTR and RTS before rdma_accept; the connector the same on CONNECT_RESPONSE, then
 * rdma_establish (it gets no ESTABLISHED event). librdmacm moves no such QP to ERR on a
 * disconnect, so we do (fx_vb_qp_stop).
 */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <unistd.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx_log.h"
#include "fx_sock.h"
#include "transports/verbs/verbs_int.h"

#define VB_INLINE     64 /* inline data asked of a QP (credits, CTS, small messages) */
#define VB_RESOLVE_MS 2000
/* Local ACK timeout exponent: 4.096 us * 2^18 = 1.07 s per try, 7 retries (as NCCL uses):
 * a busy peer is not declared dead, a dead one is within about 9 s (or by its disconnect). */
#define VB_ACK_TIMEOUT 18

static void set_ack_timeout(struct rdma_cm_id *id)
{
    uint8_t t = VB_ACK_TIMEOUT;

    if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof(t)) != 0) {
        fx_info(FX_SUB_NET, "verbs: rdma_set_option(ACK_TIMEOUT): %s", strerror(errno));
    }
}

/* ------------------------------------------------------------------ the published address */

static void addr_encode(const struct sockaddr_storage *ss, uint16_t port, uint8_t *e)
{
    memset(e, 0, VB_ADDR_ENTRY);
    e[0] = (uint8_t)ss->ss_family;
    memcpy(e + 2, &port, 2); /* network order */
    if (ss->ss_family == AF_INET) {
        memcpy(e + 4, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else {
        memcpy(e + 4, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static bool addr_decode(const struct fx_tp_addr *a, int i, struct sockaddr_storage *ss)
{
    const uint8_t *e;

    if (a->len < VB_ADDR_HDR || get32(a->data) != VB_MAGIC || i < 0 ||
        (uint32_t)i >= get32(a->data + 4) ||
        (uint32_t)(VB_ADDR_HDR + (i + 1) * VB_ADDR_ENTRY) > a->len) {
        return false;
    }
    e = a->data + VB_ADDR_HDR + i * VB_ADDR_ENTRY;
    memset(ss, 0, sizeof(*ss));
    if (e[0] == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;

        sin->sin_family = AF_INET;
        memcpy(&sin->sin_port, e + 2, 2);
        memcpy(&sin->sin_addr, e + 4, 4);
        return true;
    }
    if (e[0] == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_port, e + 2, 2);
        memcpy(&sin6->sin6_addr, e + 4, 16);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------ connections */

/*
 * A connection id, unique at a listener: this process's pid and a per-process random value
 * (where ASLR placed this file's data) in the high half, as other hosts' processes may share
 * the pid, and a count over every instance of the process in the low half.
 */
static uint64_t next_conn_id(void)
{
    static _Atomic uint32_t count;
    uint32_t high = (uint32_t)getpid() ^ ((uint32_t)((uintptr_t)&count >> 12) << 16);

    return (uint64_t)high << 32 | (atomic_fetch_add(&count, 1) + 1);
}

static struct fx_tp_conn *conn_new(struct fx_tp *tp, unsigned nqp)
{
    struct fx_tp_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return NULL;
    }
    c->tp       = tp;
    c->nqp      = nqp;
    c->deadline = fx_now_ms() + tp->timeout_ms;
    for (unsigned i = 0; i < nqp; i++) {
        c->qp[i].conn  = c;
        c->qp[i].index = i;
    }
    c->next   = tp->conns;
    tp->conns = c;
    return c;
}

static void qp_destroy(struct vb_qp *q)
{
    int ret;

    if (q->qp == NULL) {
        return;
    }
    ret = ibv_destroy_qp(q->qp);
    if (ret != 0) {
        fx_warn(FX_SUB_NET, "verbs: ibv_destroy_qp(QP 0x%x): %s", q->qp->qp_num, strerror(ret));
    }
    q->qp = NULL;
}

void fx_vb_qp_stop(struct vb_qp *q)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    int ret;

    if (q->qp == NULL) {
        return;
    }
    ret = ibv_modify_qp(q->qp, &a, IBV_QP_STATE);
    if (ret != 0) {
        fx_info(FX_SUB_NET, "verbs: QP 0x%x to ERR: %s", q->qp->qp_num, strerror(ret));
    }
}

static const char *qp_state_str(enum ibv_qp_state st)
{
    return st == IBV_QPS_INIT ? "INIT" : st == IBV_QPS_RTR ? "RTR" : "RTS";
}

/*
 * Moves QP q to INIT, RTR or RTS with the attributes rdma_cm has for its id (RTR: with the
 * source GID of verbs_gid.c); a failure fails the connection naming the QP, the state and, for
 * RTR, the GID index.
 */
static bool qp_to(struct fx_tp_conn *c, struct vb_qp *q, enum ibv_qp_state st)
{
    struct ibv_qp_attr a;
    int mask = 0;
    int ret;
    char gid[96] = "";

    memset(&a, 0, sizeof(a));
    a.qp_state = st;
    if (rdma_init_qp_attr(q->id, &a, &mask) != 0) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: QP 0x%x: rdma_init_qp_attr(%s): %s", c->peer,
                        q->qp->qp_num, qp_state_str(st), strerror(errno));
        return false;
    }
    if (st == IBV_QPS_RTR) {
        fx_vb_gid_rtr(c->tp, &a);
    }
    ret = ibv_modify_qp(q->qp, &a, mask);
    if (ret == 0) {
        if (st == IBV_QPS_RTR) {
            fx_vb_gid_used(c, q, &a);
        }
        return true;
    }
    if (st == IBV_QPS_RTR && a.ah_attr.is_global) {
        snprintf(gid, sizeof(gid), " with GID index %u of %s port %u", a.ah_attr.grh.sgid_index,
                 ibv_get_device_name(q->id->verbs->device), q->id->port_num);
    }
    fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: QP 0x%x to %s%s: %s", c->peer, q->qp->qp_num,
                    qp_state_str(st), gid, strerror(ret > 0 ? ret : errno));
    return false;
}

/* INIT again (rdma_cm grants remote access only once the connection is under way), RTR, RTS. */
static bool qp_connect(struct fx_tp_conn *c, struct vb_qp *q)
{
    return qp_to(c, q, IBV_QPS_INIT) && qp_to(c, q, IBV_QPS_RTR) && qp_to(c, q, IBV_QPS_RTS);
}

/* Destroys the QPs and ids (QPs first), then the CQ and the registered rings. */
static void conn_teardown(struct fx_tp_conn *c)
{
    for (unsigned i = 0; i < c->nqp; i++) {
        struct vb_qp *q = &c->qp[i];

        if (q->id == NULL) {
            continue;
        }
        if (q->established && c->failed == FX_OK) {
            fx_vb_qp_stop(q);
            rdma_disconnect(q->id);
        }
        qp_destroy(q);
        rdma_destroy_id(q->id);
        q->id          = NULL;
        q->established = false;
        q->sq_used     = 0;
    }
    c->nestablished = 0;
    fx_vb_conn_reqs_free(c);
    fx_vb_conn_release(c);
}

void fx_vb_conn_free(struct fx_tp_conn *c)
{
    struct fx_tp_conn **pp = &c->tp->conns;

    conn_teardown(c);
    while (*pp != NULL && *pp != c) {
        pp = &(*pp)->next;
    }
    if (*pp == c) {
        *pp = c->next;
    }
    free(c);
}

void fx_vb_close(struct fx_tp_conn *c)
{
    fx_vb_conn_free(c);
}

/* Makes the QP of an id whose device is known (the connection's PD, CQ and rings first), in
 * INIT, its receives posted. */
static bool qp_make(struct fx_tp_conn *c, struct vb_qp *q)
{
    struct ibv_qp_init_attr a;
    struct vb_dev *d = fx_vb_dev(c->tp, q->id->verbs);

    if (d == NULL) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: no protection domain on %s", c->peer,
                        ibv_get_device_name(q->id->verbs->device));
        return false;
    }
    if (c->dev == NULL) {
        c->dev = d;
        if (fx_vb_conn_buffers(c) != FX_OK) {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: cannot set up the connection's buffers",
                            c->peer);
            return false;
        }
    } else if (c->dev != d) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION,
                        "%s: the QPs of one connection resolved to two devices", c->peer);
        return false;
    }
    q->dev = d;
    for (int attempt = 0; attempt < 2; attempt++) {
        memset(&a, 0, sizeof(a));
        a.send_cq             = c->cq;
        a.recv_cq             = c->cq;
        a.qp_type             = IBV_QPT_RC;
        a.cap.max_send_wr     = VB_SQ_DEPTH;
        a.cap.max_recv_wr     = VB_RQ_DEPTH;
        a.cap.max_send_sge    = 1;
        a.cap.max_recv_sge    = 1;
        a.cap.max_inline_data = attempt == 0 ? VB_INLINE : 0;
        q->qp                 = ibv_create_qp(d->pd, &a);
        if (q->qp != NULL) {
            break;
        }
    }
    if (q->qp == NULL) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: ibv_create_qp: %s", c->peer, strerror(errno));
        return false;
    }
    q->sq_max     = a.cap.max_send_wr < VB_SQ_DEPTH ? a.cap.max_send_wr : VB_SQ_DEPTH;
    q->max_inline = a.cap.max_inline_data;
    if (!qp_to(c, q, IBV_QPS_INIT)) {
        return false;
    }
    fx_vb_post_recvs(q, VB_RQ_DEPTH);
    return c->failed == FX_OK;
}

static void conn_param(struct rdma_conn_param *p, const struct vb_qp *q, const uint8_t *data,
                       size_t len)
{
    memset(p, 0, sizeof(*p));
    p->qp_num              = q->qp->qp_num;
    p->private_data        = data;
    p->private_data_len    = (uint8_t)len;
    p->responder_resources = 1;
    p->initiator_depth     = 1;
    p->retry_count         = 7;
    p->rnr_retry_count     = 7; /* receives are always posted: an RNR is a stall, not an error */
}

/* ------------------------------------------------------------------ connect */

static fx_status connect_start(struct fx_tp_conn *c)
{
    struct sockaddr_storage ss;
    char text[80];

    if (!addr_decode(&c->target, c->addr_index, &ss)) {
        return FX_ERR_CONNECTION;
    }
    fx_sock_addr_str((struct sockaddr *)&ss, text, sizeof(text));
    snprintf(c->peer, sizeof(c->peer), "verbs peer %s", text);
    for (unsigned i = 0; i < c->nqp; i++) {
        struct vb_qp *q = &c->qp[i];

        if (rdma_create_id(c->tp->ec, &q->id, q, RDMA_PS_TCP) != 0) {
            q->id = NULL;
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "rdma_create_id: %s", strerror(errno));
            return FX_ERR_CONNECTION;
        }
        if (c->tp->tos >= 0) {
            uint8_t tos = (uint8_t)c->tp->tos;

            if (rdma_set_option(q->id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof(tos)) !=
                0) {
                fx_warn(FX_SUB_NET, "verbs: FX_IB_TC=%d: rdma_set_option: %s", c->tp->tos,
                        strerror(errno));
            }
        }
        if (rdma_resolve_addr(q->id, NULL, (struct sockaddr *)&ss, VB_RESOLVE_MS) != 0) {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "cannot resolve %s: %s", c->peer,
                            strerror(errno));
            return FX_ERR_CONNECTION;
        }
    }
    return FX_OK;
}

fx_status fx_vb_connect(struct fx_tp *tp, const struct fx_tp_addr *addr, const void *hello,
                        size_t hello_len, struct fx_tp_conn **conn)
{
    struct fx_tp_conn *c = *conn;

    if (c == NULL) {
        struct sockaddr_storage ss;

        if (hello_len > FX_TP_HELLO_MAX || !addr_decode(addr, 0, &ss)) {
            fx_warn(FX_SUB_NET, "verbs: connect: %s",
                    hello_len > FX_TP_HELLO_MAX ? "hello too long" : "not a verbs address");
            return hello_len > FX_TP_HELLO_MAX ? FX_ERR_INVALID_ARG : FX_ERR_CONNECTION;
        }
        c = conn_new(tp, tp->nqp);
        if (c == NULL) {
            return FX_ERR_NO_MEMORY;
        }
        c->conn_id = next_conn_id();
        c->target  = *addr;
        memcpy(c->hello, hello, hello_len);
        c->hello_len = hello_len;
        *conn        = c;
        (void)connect_start(c);
        fx_vb_cm_events(tp);
    }
    if (c->failed == FX_OK && c->nestablished == c->nqp && !c->hello_sent) {
        c->hello_sent = fx_vb_send_hello(c);
    }
    if (c->failed != FX_OK) {
        return FX_ERR_CONNECTION;
    }
    if (c->hello_sent) {
        c->ready = true;
        return FX_OK;
    }
    return FX_INPROGRESS;
}

/* The connect request's private data for QP q. */
static size_t req_data(const struct fx_tp_conn *c, unsigned q, uint8_t *p)
{
    memset(p, 0, VB_PRIV_REQ);
    put32(p, VB_MAGIC);
    put16(p + 4, VB_VERSION);
    p[6] = (uint8_t)q;
    p[7] = (uint8_t)c->nqp;
    put64(p + 8, c->conn_id);
    put64(p + 16, (uintptr_t)c->ring);
    put32(p + 24, c->ring_mr->rkey);
    put16(p + 28, VB_SLOTS);
    put16(p + 30, VB_CSLOTS);
    put32(p + 32, VB_SLOT_SIZE);
    return VB_PRIV_REQ;
}

static size_t rep_data(const struct fx_tp_conn *c, uint8_t *p)
{
    memset(p, 0, VB_PRIV_REP);
    put32(p, VB_MAGIC);
    put16(p + 4, VB_VERSION);
    put64(p + 8, (uintptr_t)c->ring);
    put32(p + 16, c->ring_mr->rkey);
    put16(p + 20, VB_SLOTS);
    put16(p + 22, VB_CSLOTS);
    put32(p + 24, VB_SLOT_SIZE);
    return VB_PRIV_REP;
}

static void route_resolved(struct fx_tp_conn *c, struct vb_qp *q)
{
    struct rdma_conn_param p;
    uint8_t data[VB_PRIV_REQ];

    if (q->id->route.num_paths > 0 && q->id->route.path_rec != NULL) {
        q->id->route.path_rec[0].sl = (uint8_t)(c->tp->sl & 0xf);
    }
    if (!qp_make(c, q)) {
        return;
    }
    set_ack_timeout(q->id);
    conn_param(&p, q, data, req_data(c, q->index, data));
    if (rdma_connect(q->id, &p) != 0) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "rdma_connect to %s: %s", c->peer, strerror(errno));
    }
}

/* A connect attempt failed before the connection was made: the next address, or the error. */
static void connect_failed(struct fx_tp_conn *c, const char *why)
{
    if (c->acceptor) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: %s", c->peer, why);
        return;
    }
    if (addr_decode(&c->target, c->addr_index + 1, &(struct sockaddr_storage){0})) {
        fx_info(FX_SUB_NET, "verbs: %s: %s; trying its next address", c->peer, why);
        conn_teardown(c);
        c->dev = NULL;
        c->addr_index++;
        if (connect_start(c) == FX_OK) {
            return;
        }
    }
    fx_vb_conn_fail(c, FX_ERR_CONNECTION, "cannot connect to %s: %s", c->peer, why);
}

/* ------------------------------------------------------------------ listen and accept */

fx_status fx_vb_listen(struct fx_tp *tp, struct fx_tp_addr *addr, struct fx_tp_listener **out)
{
    struct fx_tp_listener *l = calloc(1, sizeof(*l));
    char text[80];

    if (l == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    l->tp = tp;
    memset(addr, 0, sizeof(*addr));
    put32(addr->data, VB_MAGIC);
    for (int i = 0; i < tp->nlocal && l->nids < VB_MAX_ADDRS; i++) {
        struct sockaddr_storage ss = tp->local[i];
        struct rdma_cm_id *id      = NULL;

        fx_sock_addr_str((struct sockaddr *)&ss, text, sizeof(text));
        if (rdma_create_id(tp->ec, &id, l, RDMA_PS_TCP) != 0) {
            fx_warn(FX_SUB_NET, "verbs: rdma_create_id: %s", strerror(errno));
            continue;
        }
        if (tp->tos >= 0) {
            uint8_t tos = (uint8_t)tp->tos;

            (void)rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof(tos));
        }
        if (rdma_bind_addr(id, (struct sockaddr *)&ss) != 0 || rdma_listen(id, 128) != 0) {
            fx_warn(FX_SUB_NET, "verbs: cannot listen on %s: %s", text, strerror(errno));
            rdma_destroy_id(id);
            continue;
        }
        addr_encode(&ss, rdma_get_src_port(id), addr->data + VB_ADDR_HDR + l->nids * VB_ADDR_ENTRY);
        l->ids[l->nids++] = id;
        fx_sock_addr_str(rdma_get_local_addr(id), text, sizeof(text));
        fx_info(FX_SUB_NET, "verbs: listening on %s", text);
    }
    if (l->nids == 0) {
        free(l);
        fx_warn(FX_SUB_NET, "verbs: cannot listen on any address of %s", tp->hca);
        return FX_ERR_CONNECTION;
    }
    put32(addr->data + 4, (uint32_t)l->nids);
    addr->len = VB_ADDR_HDR + (uint32_t)l->nids * VB_ADDR_ENTRY;
    l->next   = tp->lsts;
    tp->lsts  = l;
    *out      = l;
    return FX_OK;
}

void fx_vb_listen_close(struct fx_tp_listener *l)
{
    struct fx_tp *tp           = l->tp;
    struct fx_tp_listener **pp = &tp->lsts;

    for (struct fx_tp_conn *c = tp->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->lst == l && !c->ready) {
            fx_vb_conn_free(c);
        } else if (c->lst == l) {
            c->lst = NULL;
        }
    }
    for (int i = 0; i < l->nids; i++) {
        rdma_destroy_id(l->ids[i]);
    }
    while (*pp != NULL && *pp != l) {
        pp = &(*pp)->next;
    }
    if (*pp == l) {
        *pp = l->next;
    }
    free(l);
}

/* Rejects a request with a reason the connector logs; the id is destroyed after the ack. */
static void reject(struct rdma_cm_id *id, const char *reason)
{
    char text[VB_REJ_LEN];

    snprintf(text, sizeof(text), "fabricx verbs: %s", reason);
    if (rdma_reject(id, text, (uint8_t)(strlen(text) + 1)) != 0) {
        fx_warn(FX_SUB_NET, "verbs: rdma_reject: %s", strerror(errno));
    }
}

/* A connect request at listener l: true when the id now belongs to a connection. */
static bool connect_request(struct fx_tp_listener *l, struct rdma_cm_id *id, const uint8_t *p,
                            size_t len)
{
    struct fx_tp *tp     = l->tp;
    struct fx_tp_conn *c = NULL;
    struct rdma_conn_param param;
    uint8_t data[VB_PRIV_REP];
    char text[80];
    unsigned qi, nqp;
    uint64_t conn_id;

    fx_sock_addr_str(rdma_get_peer_addr(id), text, sizeof(text));
    if (len < VB_PRIV_REQ || get32(p) != VB_MAGIC) {
        fx_warn(FX_SUB_NET,
                "verbs: rejected a connection from %s: not libfabricx (%zu bytes of "
                "private data)",
                text, len);
        reject(id, "not a libfabricx connection");
        return false;
    }
    if (get16(p + 4) != VB_VERSION) {
        fx_warn(FX_SUB_NET, "verbs: rejected a connection from %s: protocol version %u, this is %u",
                text, get16(p + 4), VB_VERSION);
        reject(id, "protocol version differs");
        return false;
    }
    qi      = p[6];
    nqp     = p[7];
    conn_id = get64(p + 8);
    if (nqp == 0 || nqp > VB_MAX_QPS || qi >= nqp || get16(p + 28) != VB_SLOTS ||
        get16(p + 30) != VB_CSLOTS || get32(p + 32) != VB_SLOT_SIZE) {
        fx_warn(FX_SUB_NET, "verbs: rejected a connection from %s: QP %u of %u, ring %ux%u", text,
                qi, nqp, get16(p + 28), get32(p + 32));
        reject(id, "bad QP index or ring geometry");
        return false;
    }
    for (c = tp->conns; c != NULL; c = c->next) {
        if (c->acceptor && c->lst == l && !c->ready && c->conn_id == conn_id) {
            break;
        }
    }
    if (c == NULL) {
        c = conn_new(tp, nqp);
        if (c == NULL) {
            reject(id, "out of memory");
            return false;
        }
        c->acceptor = true;
        c->lst      = l;
        c->conn_id  = conn_id;
        snprintf(c->peer, sizeof(c->peer), "verbs peer %s", text);
        c->peer_ring = get64(p + 16);
        c->peer_rkey = get32(p + 24);
    }
    if (c->nqp != nqp || c->qp[qi].id != NULL || c->failed != FX_OK) {
        fx_warn(FX_SUB_NET, "verbs: rejected QP %u of connection %llx from %s: duplicate", qi,
                (unsigned long long)conn_id, text);
        reject(id, "duplicate QP");
        return false;
    }
    c->qp[qi].id = id;
    id->context  = &c->qp[qi];
    if (!qp_make(c, &c->qp[qi]) || !qp_connect(c, &c->qp[qi])) {
        reject(id, "cannot make a QP");
        qp_destroy(&c->qp[qi]);
        c->qp[qi].id = NULL;
        return false;
    }
    set_ack_timeout(id);
    conn_param(&param, &c->qp[qi], data, rep_data(c, data));
    if (rdma_accept(id, &param) != 0) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "rdma_accept from %s: %s", c->peer, strerror(errno));
    }
    return true;
}

fx_status fx_vb_accept(struct fx_tp_listener *l, struct fx_tp_conn **conn, void *hello,
                       size_t *hello_len)
{
    size_t cap = *hello_len;

    fx_vb_cm_events(l->tp);
    for (struct fx_tp_conn *c = l->tp->conns; c != NULL; c = c->next) {
        if (c->lst != l || c->ready || c->failed != FX_OK || c->nestablished != c->nqp ||
            !c->hello_seen) {
            continue;
        }
        if (c->hello_len > cap) {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: a %zu-byte hello, room for %zu", c->peer,
                            c->hello_len, cap);
            continue;
        }
        memcpy(hello, c->hello, c->hello_len);
        *hello_len = c->hello_len;
        c->ready   = true;
        c->lst     = NULL;
        *conn      = c;
        return FX_OK;
    }
    return FX_INPROGRESS;
}

/* ------------------------------------------------------------------ events */

static void established(struct fx_tp_conn *c, struct vb_qp *q);

/* The connector's QP q was accepted: the acceptor's ring from the private data, then the QP to
 * RTS and the connection completed. */
static void connect_response(struct fx_tp_conn *c, struct vb_qp *q, const uint8_t *p, size_t len)
{
    if (len < VB_PRIV_REP || get32(p) != VB_MAGIC || get16(p + 4) != VB_VERSION ||
        get16(p + 20) != VB_SLOTS || get16(p + 22) != VB_CSLOTS || get32(p + 24) != VB_SLOT_SIZE) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s accepted with foreign private data", c->peer);
        return;
    }
    c->peer_ring = get64(p + 8);
    c->peer_rkey = get32(p + 16);
    if (!qp_connect(c, q)) {
        return;
    }
    if (rdma_establish(q->id) != 0) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: rdma_establish: %s", c->peer, strerror(errno));
        return;
    }
    established(c, q);
}

static struct vb_qp *qp_of(struct fx_tp *tp, struct rdma_cm_id *id)
{
    for (struct fx_tp_conn *c = tp->conns; c != NULL; c = c->next) {
        for (unsigned i = 0; i < c->nqp; i++) {
            if (c->qp[i].id == id) { /* compared, never read: it may be gone */
                return &c->qp[i];
            }
        }
    }
    return NULL;
}

static struct fx_tp_listener *listener_of(struct fx_tp *tp, struct rdma_cm_id *id)
{
    for (struct fx_tp_listener *l = tp->lsts; l != NULL; l = l->next) {
        for (int i = 0; i < l->nids; i++) {
            if (l->ids[i] == id) {
                return l;
            }
        }
    }
    return NULL;
}

static void established(struct fx_tp_conn *c, struct vb_qp *q)
{
    if (!q->established) {
        q->established = true;
        c->nestablished++;
    }
    if (!c->acceptor && c->nestablished == c->nqp && !c->hello_sent) {
        c->hello_sent = fx_vb_send_hello(c);
    }
}

static void conn_event(struct fx_tp_conn *c, struct vb_qp *q, const struct rdma_cm_event *ev)
{
    char why[160];

    switch (ev->event) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
        if (rdma_resolve_route(q->id, VB_RESOLVE_MS) != 0) {
            snprintf(why, sizeof(why), "rdma_resolve_route: %s", strerror(errno));
            connect_failed(c, why);
        }
        break;
    case RDMA_CM_EVENT_ROUTE_RESOLVED:
        route_resolved(c, q);
        break;
    case RDMA_CM_EVENT_CONNECT_RESPONSE:
        if (!c->acceptor) {
            connect_response(c, q, ev->param.conn.private_data, ev->param.conn.private_data_len);
        }
        break;
    case RDMA_CM_EVENT_ESTABLISHED:
        if (c->acceptor) { /* the connector completes its side itself (rdma_establish) */
            established(c, q);
        }
        break;
    case RDMA_CM_EVENT_REJECTED: {
        const char *reason = ev->param.conn.private_data;
        size_t n           = ev->param.conn.private_data_len;

        snprintf(why, sizeof(why), "rejected (%.*s)", reason != NULL ? (int)strnlen(reason, n) : 0,
                 reason != NULL ? reason : "");
        connect_failed(c, why);
        break;
    }
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_CONNECT_ERROR:
        snprintf(why, sizeof(why), "%s (status %d)", rdma_event_str(ev->event), ev->status);
        connect_failed(c, why);
        break;
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
        if (c->ready || c->nestablished == c->nqp) {
            if (ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL) {
                fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s: the RDMA device was removed", c->peer);
            }
            fx_vb_peer_gone(c);
        } else {
            fx_vb_conn_fail(c, FX_ERR_CONNECTION, "%s disconnected during set-up", c->peer);
        }
        fx_vb_qp_stop(q);
        break;
    default:
        break;
    }
}

/* Handles the pending rdma_cm events (the channel is non-blocking). */
void fx_vb_cm_events(struct fx_tp *tp)
{
    struct rdma_cm_event *ev;

    for (int n = 0; n < 256 && rdma_get_cm_event(tp->ec, &ev) == 0; n++) {
        struct rdma_cm_event copy = *ev;
        uint8_t data[256];
        bool conn_data = ev->event == RDMA_CM_EVENT_CONNECT_REQUEST ||
                         ev->event == RDMA_CM_EVENT_CONNECT_RESPONSE ||
                         ev->event == RDMA_CM_EVENT_ESTABLISHED ||
                         ev->event == RDMA_CM_EVENT_REJECTED;
        size_t dlen =
            conn_data && ev->param.conn.private_data != NULL ? ev->param.conn.private_data_len : 0;

        if (dlen > sizeof(data)) {
            dlen = sizeof(data);
        }
        if (dlen > 0) {
            memcpy(data, ev->param.conn.private_data, dlen);
        }
        copy.param.conn.private_data     = dlen > 0 ? data : NULL;
        copy.param.conn.private_data_len = (uint8_t)dlen;
        if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
            struct fx_tp_listener *l = listener_of(tp, ev->listen_id);
            bool kept                = false;

            if (l != NULL) {
                kept = connect_request(l, ev->id, data, dlen);
            } else {
                reject(ev->id, "listener closed");
            }
            rdma_ack_cm_event(ev);
            if (!kept) {
                rdma_destroy_id(copy.id);
            }
            continue;
        }
        rdma_ack_cm_event(ev);
        {
            struct vb_qp *q = qp_of(tp, copy.id);

            if (q != NULL) {
                conn_event(q->conn, q, &copy);
            }
        }
    }
}

/* Set-up deadlines; half-made accepted connections that failed are dropped. */
void fx_vb_conn_check(struct fx_tp_conn *c)
{
    if (c->ready) {
        return;
    }
    if (c->failed == FX_OK && fx_now_ms() > c->deadline) {
        fx_vb_conn_fail(c, FX_ERR_CONNECTION, "no connection with %s in %d ms", c->peer,
                        c->tp->timeout_ms);
    }
    if (c->acceptor && c->failed != FX_OK) {
        fx_warn(FX_SUB_NET, "verbs: dropped a half-made connection: %s", c->error);
        fx_vb_conn_free(c);
    }
}
