/* The fake libibverbs/librdmacm (tests/fakeverbs, docs/verbs.md): linked against the real
 * libraries and run on the fake through LD_LIBRARY_PATH (meson test unit-fakeverbs). Two QPs
 * connected through rdma_cm on 127.0.0.1, in one process or across a fork. Every wait is
 * bounded. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#define WAIT_MS 5000
#define BUF_LEN 4096

static uint64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The next event of ch within WAIT_MS; asserts its type. The caller acks it. */
static struct rdma_cm_event *next_event(struct rdma_event_channel *ch, enum rdma_cm_event_type want)
{
    struct pollfd p          = {.fd = ch->fd, .events = POLLIN};
    struct rdma_cm_event *ev = NULL;
    cr_assert_eq(poll(&p, 1, WAIT_MS), 1, "no %s within %d ms", rdma_event_str(want), WAIT_MS);
    cr_assert_eq(rdma_get_cm_event(ch, &ev), 0);
    cr_assert_eq(ev->event, want, "got %s (status %d), expected %s", rdma_event_str(ev->event),
                 ev->status, rdma_event_str(want));
    return ev;
}

static void expect_event(struct rdma_event_channel *ch, enum rdma_cm_event_type want)
{
    cr_assert_eq(rdma_ack_cm_event(next_event(ch, want)), 0);
}

/* Polls cq for one completion within ms; false when none came. */
static bool poll_one(struct ibv_cq *cq, struct ibv_wc *wc, int ms)
{
    uint64_t end = ms_now() + (uint64_t)ms;
    for (;;) {
        int n = ibv_poll_cq(cq, 1, wc);
        cr_assert_geq(n, 0, "ibv_poll_cq: %d", n);
        if (n == 1) {
            return true;
        }
        if (ms_now() >= end) {
            return false;
        }
        usleep(500);
    }
}

static struct ibv_wc wait_wc(struct ibv_cq *cq)
{
    struct ibv_wc wc;
    cr_assert(poll_one(cq, &wc, WAIT_MS), "no completion within %d ms", WAIT_MS);
    return wc;
}

struct opts {
    uint32_t max_send_wr, max_recv_wr, max_sge, max_inline;
    uint8_t rnr_retry, retry;
    uint8_t resp_res; /* the server's responder_resources: RDMA reads it serves at once */
    int cqe;
    bool channel;      /* a completion channel on the server's CQ */
    int ack_timeout;   /* RDMA_OPTION_ID_ACK_TIMEOUT on the client, when > 0 */
    const void *pdata; /* the client's connect private data */
    uint8_t pdata_len;
};

static const struct opts default_opts = {.max_send_wr = 16,
                                         .max_recv_wr = 16,
                                         .max_sge     = 2,
                                         .max_inline  = 64,
                                         .rnr_retry   = 7,
                                         .retry       = 7,
                                         .resp_res    = 1,
                                         .cqe         = 64};

/* One side: a cm id with its QP on the shared device context */
struct side {
    struct rdma_event_channel *ch;
    struct rdma_cm_id *id;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_comp_channel *cc;
    uint8_t *buf;
    struct ibv_mr *mr;
};

struct pair {
    struct side c, s;
    struct rdma_cm_id *listen;
    uint16_t port;
    uint8_t req_pdata[64];
    uint8_t req_pdata_len;
};

static void side_qp(struct side *sd, const struct opts *o, bool with_channel)
{
    struct ibv_qp_init_attr qa = {0};
    sd->pd                     = ibv_alloc_pd(sd->id->verbs);
    cr_assert_not_null(sd->pd);
    if (with_channel) {
        sd->cc = ibv_create_comp_channel(sd->id->verbs);
        cr_assert_not_null(sd->cc);
    }
    sd->cq = ibv_create_cq(sd->id->verbs, o->cqe, NULL, sd->cc, 0);
    cr_assert_not_null(sd->cq);
    qa.send_cq             = sd->cq;
    qa.recv_cq             = sd->cq;
    qa.qp_type             = IBV_QPT_RC;
    qa.cap.max_send_wr     = o->max_send_wr;
    qa.cap.max_recv_wr     = o->max_recv_wr;
    qa.cap.max_send_sge    = o->max_sge;
    qa.cap.max_recv_sge    = o->max_sge;
    qa.cap.max_inline_data = o->max_inline;
    cr_assert_eq(rdma_create_qp(sd->id, sd->pd, &qa), 0, "rdma_create_qp: %s", strerror(errno));
    cr_assert_eq(sd->id->qp->state, IBV_QPS_INIT);
    sd->buf = calloc(1, BUF_LEN);
    cr_assert_not_null(sd->buf);
    sd->mr = ibv_reg_mr(sd->pd, sd->buf, BUF_LEN,
                        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
    cr_assert_not_null(sd->mr);
}

static void side_free(struct side *sd)
{
    if (sd->mr != NULL) {
        cr_assert_eq(ibv_dereg_mr(sd->mr), 0);
    }
    if (sd->id != NULL && sd->id->qp != NULL) {
        rdma_destroy_qp(sd->id);
    }
    if (sd->cq != NULL) {
        cr_assert_eq(ibv_destroy_cq(sd->cq), 0);
    }
    if (sd->cc != NULL) {
        cr_assert_eq(ibv_destroy_comp_channel(sd->cc), 0);
    }
    if (sd->pd != NULL) {
        cr_assert_eq(ibv_dealloc_pd(sd->pd), 0);
    }
    if (sd->id != NULL) {
        cr_assert_eq(rdma_destroy_id(sd->id), 0);
    }
    free(sd->buf);
}

/* Listens on 127.0.0.1 port 0 (a free port); returns the port. */
static uint16_t listen_any(struct rdma_event_channel *ch, struct rdma_cm_id **lid)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(rdma_create_id(ch, lid, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_bind_addr(*lid, (struct sockaddr *)&sin), 0, "bind: %s", strerror(errno));
    cr_assert_eq(rdma_listen(*lid, 8), 0);
    cr_assert_neq(rdma_get_src_port(*lid), 0);
    return ntohs(rdma_get_src_port(*lid));
}

/* The client's half up to rdma_connect. */
static void client_connect(struct side *c, uint16_t port, const struct opts *o)
{
    struct sockaddr_in dst = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct rdma_conn_param cp = {0};
    c->ch                     = rdma_create_event_channel();
    cr_assert_not_null(c->ch);
    cr_assert_eq(rdma_create_id(c->ch, &c->id, NULL, RDMA_PS_TCP), 0);
    if (o->ack_timeout > 0) {
        uint8_t t = (uint8_t)o->ack_timeout;
        cr_assert_eq(rdma_set_option(c->id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, 1), 0);
    }
    cr_assert_eq(rdma_resolve_addr(c->id, NULL, (struct sockaddr *)&dst, WAIT_MS), 0);
    expect_event(c->ch, RDMA_CM_EVENT_ADDR_RESOLVED);
    cr_assert_not_null(c->id->verbs);
    cr_assert_eq(rdma_resolve_route(c->id, WAIT_MS), 0);
    expect_event(c->ch, RDMA_CM_EVENT_ROUTE_RESOLVED);
    side_qp(c, o, false);
    cp.retry_count         = o->retry;
    cp.rnr_retry_count     = o->rnr_retry;
    cp.responder_resources = 1;
    cp.initiator_depth     = 1;
    cp.private_data        = o->pdata;
    cp.private_data_len    = o->pdata_len;
    cr_assert_eq(rdma_connect(c->id, &cp), 0, "rdma_connect: %s", strerror(errno));
}

/* The server's half: takes the request, accepts it. */
static void server_accept(struct pair *p, const struct opts *o)
{
    struct rdma_cm_event *ev  = next_event(p->s.ch, RDMA_CM_EVENT_CONNECT_REQUEST);
    struct rdma_conn_param cp = {0};
    cr_assert_eq(ev->listen_id, p->listen);
    p->s.id          = ev->id;
    p->req_pdata_len = ev->param.conn.private_data_len;
    if (p->req_pdata_len <= sizeof(p->req_pdata)) {
        memcpy(p->req_pdata, ev->param.conn.private_data, p->req_pdata_len);
    }
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    side_qp(&p->s, o, o->channel);
    cp.rnr_retry_count     = o->rnr_retry;
    cp.responder_resources = o->resp_res;
    cp.initiator_depth     = 1;
    cr_assert_eq(rdma_accept(p->s.id, &cp), 0, "rdma_accept: %s", strerror(errno));
}

static void pair_up(struct pair *p, const struct opts *o)
{
    memset(p, 0, sizeof(*p));
    p->s.ch = rdma_create_event_channel();
    cr_assert_not_null(p->s.ch);
    p->port = listen_any(p->s.ch, &p->listen);
    client_connect(&p->c, p->port, o);
    server_accept(p, o);
    expect_event(p->c.ch, RDMA_CM_EVENT_ESTABLISHED);
    expect_event(p->s.ch, RDMA_CM_EVENT_ESTABLISHED);
    cr_assert_eq(p->c.id->qp->state, IBV_QPS_RTS);
    cr_assert_eq(p->s.id->qp->state, IBV_QPS_RTS);
}

static void pair_down(struct pair *p)
{
    side_free(&p->c);
    side_free(&p->s);
    cr_assert_eq(rdma_destroy_id(p->listen), 0);
    rdma_destroy_event_channel(p->c.ch);
    rdma_destroy_event_channel(p->s.ch);
}

static int post_recv(struct side *sd, uint64_t wr_id, uint32_t len)
{
    struct ibv_sge sge      = {.addr = (uintptr_t)sd->buf, .length = len, .lkey = sd->mr->lkey};
    struct ibv_recv_wr wr   = {.wr_id = wr_id, .sg_list = &sge, .num_sge = len ? 1 : 0};
    struct ibv_recv_wr *bad = NULL;
    return ibv_post_recv(sd->id->qp, &wr, &bad);
}

/* An RDMA write (with immediate when imm) of len bytes from the client's buffer at off to
 * raddr/rkey. */
static int post_write(struct side *c, uint64_t wr_id, uint32_t off, uint32_t len, uint64_t raddr,
                      uint32_t rkey, bool imm, int flags)
{
    struct ibv_sge sge      = {.addr = (uintptr_t)c->buf + off, .length = len, .lkey = c->mr->lkey};
    struct ibv_send_wr wr   = {.wr_id      = wr_id,
                               .sg_list    = &sge,
                               .num_sge    = 1,
                               .opcode     = imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE,
                               .send_flags = (unsigned)flags};
    struct ibv_send_wr *bad = NULL;
    wr.imm_data             = htonl(0x1234);
    wr.wr.rdma.remote_addr  = raddr;
    wr.wr.rdma.rkey         = rkey;
    return ibv_post_send(c->id->qp, &wr, &bad);
}

/* The QP's state as the device has it (qp->state follows only modify and query). */
static enum ibv_qp_state qp_state(struct ibv_qp *qp)
{
    struct ibv_qp_attr a;
    struct ibv_qp_init_attr ia;
    cr_assert_eq(ibv_query_qp(qp, &a, IBV_QP_STATE, &ia), 0);
    return a.qp_state;
}

static void assert_no_wc(struct ibv_cq *cq, int ms)
{
    struct ibv_wc wc;
    cr_assert_not(poll_one(cq, &wc, ms), "unexpected completion: wr_id %llu status %s",
                  (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
}

/* ---------------------------------------------------------------------------------------- */

Test(fakeverbs, default_device)
{
    int n                    = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    struct ibv_context *ctx;
    struct ibv_port_attr pa;
    struct ibv_device_attr da;
    union ibv_gid gid;
    struct ibv_gid_entry ge;
    cr_assert_not_null(list);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(ibv_get_device_name(list[0]), "fxv0");
    cr_assert_neq(ibv_get_device_guid(list[0]), 0);
    ctx = ibv_open_device(list[0]);
    cr_assert_not_null(ctx);
    cr_assert_eq(ibv_query_device(ctx, &da), 0);
    cr_assert_eq(da.phys_port_cnt, 1);
    cr_assert_geq(da.max_qp_wr, 1024);
    cr_assert_eq(ibv_query_port(ctx, 1, &pa), 0);
    cr_assert_eq(pa.state, IBV_PORT_ACTIVE);
    cr_assert_eq(pa.link_layer, IBV_LINK_LAYER_ETHERNET);
    cr_assert_eq(pa.active_mtu, IBV_MTU_4096);
    cr_assert_neq(pa.active_speed, 0);
    cr_assert_neq(pa.active_width, 0);
    cr_assert_eq(pa.gid_tbl_len, 2);
    cr_assert_neq(ibv_query_port(ctx, 2, &pa), 0);
    cr_assert_str_eq(ibv_port_state_str(IBV_PORT_ACTIVE), "PORT_ACTIVE");
    cr_assert_eq(ibv_query_gid(ctx, 1, 0, &gid), 0);
    cr_assert_eq(gid.raw[0], 0xfe);
    cr_assert_eq(gid.raw[1], 0x80);
    cr_assert_eq(ibv_query_gid(ctx, 1, 1, &gid), 0);
    cr_assert_eq(gid.raw[10], 0xff);
    cr_assert_eq(gid.raw[11], 0xff);
    cr_assert_eq(gid.raw[12], 127);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 1, &ge, 0), 0);
    cr_assert_eq(ge.gid_type, IBV_GID_TYPE_ROCE_V2);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 0, &ge, 0), 0);
    cr_assert_neq(ge.gid_type, IBV_GID_TYPE_ROCE_V2);
    cr_assert_neq(ibv_query_gid(ctx, 1, 2, &gid), 0);
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

Test(fakeverbs, devices_from_environment)
{
    int n = 0;
    struct ibv_device **list;
    struct ibv_context *ctx;
    struct ibv_port_attr pa;
    union ibv_gid gid;
    setenv("FAKEVERBS_DEVICES", "fxv0,fxv1:down,fxib:ib", 1);
    list = ibv_get_device_list(&n);
    cr_assert_not_null(list);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(ibv_get_device_name(list[1]), "fxv1");
    ctx = ibv_open_device(list[1]);
    cr_assert_eq(ibv_query_port(ctx, 1, &pa), 0);
    cr_assert_eq(pa.state, IBV_PORT_DOWN);
    cr_assert_eq(ibv_close_device(ctx), 0);
    ctx = ibv_open_device(list[2]);
    cr_assert_eq(ibv_query_port(ctx, 1, &pa), 0);
    cr_assert_eq(pa.state, IBV_PORT_ACTIVE);
    cr_assert_eq(pa.link_layer, IBV_LINK_LAYER_INFINIBAND);
    cr_assert_neq(pa.lid, 0);
    cr_assert_eq(pa.gid_tbl_len, 1);
    cr_assert_eq(ibv_query_gid(ctx, 1, 0, &gid), 0);
    cr_assert_neq(ibv_query_gid(ctx, 1, 1, &gid), 0, "an IB port has no RoCE GID");
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

Test(fakeverbs, devices_malformed)
{
    setenv("FAKEVERBS_DEVICES", "fxv0:sideways", 1);
    errno = 0;
    cr_assert_null(ibv_get_device_list(NULL));
    cr_assert_eq(errno, EINVAL);
}

Test(fakeverbs, write_with_imm_lands)
{
    struct pair p;
    struct ibv_wc wc;
    pair_up(&p, &default_opts);
    memcpy(p.c.buf, "hello, remote memory", 21);
    cr_assert_eq(post_recv(&p.s, 77, 0), 0);
    cr_assert_eq(
        post_write(&p.c, 5, 0, 21, (uintptr_t)p.s.buf + 100, p.s.mr->rkey, true, IBV_SEND_SIGNALED),
        0);
    wc = wait_wc(p.c.id->send_cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    cr_assert_eq(wc.wr_id, 5);
    cr_assert_eq(wc.opcode, IBV_WC_RDMA_WRITE);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(wc.wr_id, 77);
    cr_assert_eq(wc.opcode, IBV_WC_RECV_RDMA_WITH_IMM);
    cr_assert(wc.wc_flags & IBV_WC_WITH_IMM);
    cr_assert_eq(ntohl(wc.imm_data), 0x1234);
    cr_assert_eq(wc.byte_len, 21);
    cr_assert_eq(wc.qp_num, p.s.id->qp->qp_num);
    cr_assert_str_eq((char *)p.s.buf + 100, "hello, remote memory");
    pair_down(&p);
}

Test(fakeverbs, rnr_infinite_retry_succeeds_once_a_receive_is_posted)
{
    struct pair p;
    struct ibv_wc wc;
    pair_up(&p, &default_opts); /* rnr_retry 7: retry forever */
    memcpy(p.c.buf, "late", 5);
    cr_assert_eq(
        post_write(&p.c, 1, 0, 5, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SIGNALED), 0);
    assert_no_wc(p.c.cq, 200);
    assert_no_wc(p.s.cq, 1);
    cr_assert_neq(memcmp(p.s.buf, "late", 5), 0, "an RNR NAK'd write must not land");
    cr_assert_eq(post_recv(&p.s, 9, 0), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.wr_id, 9);
    cr_assert_str_eq((char *)p.s.buf, "late");
    pair_down(&p);
}

/* A write that must fail at the target: REM_ACCESS_ERR at the sender, nothing written, and
 * both QPs in ERR (the target's receive flushes). */
static void expect_remote_access_error(struct pair *p, uint64_t raddr, uint32_t rkey, uint32_t len)
{
    struct ibv_wc wc;
    memset(p->c.buf, 0xab, BUF_LEN);
    cr_assert_eq(post_recv(&p->s, 3, 0), 0);
    cr_assert_eq(post_write(&p->c, 8, 0, len, raddr, rkey, true, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p->c.cq);
    cr_assert_eq(wc.wr_id, 8);
    cr_assert_eq(wc.status, IBV_WC_REM_ACCESS_ERR, "%s", ibv_wc_status_str(wc.status));
    wc = wait_wc(p->s.cq);
    cr_assert_eq(wc.wr_id, 3);
    cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR, "%s", ibv_wc_status_str(wc.status));
    for (int i = 0; i < BUF_LEN; i++) {
        cr_assert_eq(p->s.buf[i], 0, "byte %d written despite the error", i);
    }
    cr_assert_eq(qp_state(p->c.id->qp), IBV_QPS_ERR);
}

Test(fakeverbs, bad_rkey_is_remote_access_error)
{
    struct pair p;
    pair_up(&p, &default_opts);
    expect_remote_access_error(&p, (uintptr_t)p.s.buf, p.s.mr->rkey + 0x1000, 64);
    pair_down(&p);
}

Test(fakeverbs, out_of_bounds_is_remote_access_error)
{
    struct pair p;
    pair_up(&p, &default_opts);
    expect_remote_access_error(&p, (uintptr_t)p.s.buf + BUF_LEN - 32, p.s.mr->rkey, 64);
    pair_down(&p);
}

Test(fakeverbs, missing_remote_write_is_remote_access_error)
{
    struct pair p;
    struct ibv_mr *ro;
    pair_up(&p, &default_opts);
    ro = ibv_reg_mr(p.s.pd, p.s.buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
    cr_assert_not_null(ro);
    expect_remote_access_error(&p, (uintptr_t)p.s.buf, ro->rkey, 64);
    cr_assert_eq(ibv_dereg_mr(ro), 0);
    pair_down(&p);
}

Test(fakeverbs, deregistered_mr_is_remote_access_error)
{
    struct pair p;
    uint32_t rkey;
    pair_up(&p, &default_opts);
    rkey = p.s.mr->rkey;
    cr_assert_eq(ibv_dereg_mr(p.s.mr), 0);
    p.s.mr = ibv_reg_mr(p.s.pd, p.s.buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE); /* for the receive */
    cr_assert_not_null(p.s.mr);
    expect_remote_access_error(&p, (uintptr_t)p.s.buf, rkey, 16);
    pair_down(&p);
}

Test(fakeverbs, bad_lkey_is_local_protection_error)
{
    struct pair p;
    struct ibv_wc wc;
    struct ibv_pd *other;
    struct ibv_mr *foreign;
    pair_up(&p, &default_opts);
    /* an MR of another PD does not serve this QP */
    other   = ibv_alloc_pd(p.c.id->verbs);
    foreign = ibv_reg_mr(other, p.c.buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE);
    cr_assert_not_null(foreign);
    {
        struct ibv_sge sge    = {.addr = (uintptr_t)p.c.buf, .length = 8, .lkey = foreign->lkey};
        struct ibv_send_wr wr = {.wr_id      = 4,
                                 .sg_list    = &sge,
                                 .num_sge    = 1,
                                 .opcode     = IBV_WR_RDMA_WRITE,
                                 .send_flags = IBV_SEND_SIGNALED};
        struct ibv_send_wr *bad;
        wr.wr.rdma.remote_addr = (uintptr_t)p.s.buf;
        wr.wr.rdma.rkey        = p.s.mr->rkey;
        cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    }
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_LOC_PROT_ERR, "%s", ibv_wc_status_str(wc.status));
    cr_assert_eq(ibv_dereg_mr(foreign), 0);
    cr_assert_eq(ibv_dealloc_pd(other), 0);
    /* and an sge past its MR's end */
    pair_down(&p);
    pair_up(&p, &default_opts);
    cr_assert_eq(post_write(&p.c, 6, BUF_LEN - 4, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, false,
                            IBV_SEND_SIGNALED),
                 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_LOC_PROT_ERR, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, rnr_retry_exceeded)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_wc wc;
    o.rnr_retry = 2;
    pair_up(&p, &o);
    cr_assert_eq(
        post_write(&p.c, 1, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SIGNALED), 0);
    cr_assert_eq(
        post_write(&p.c, 2, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, false, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 1);
    cr_assert_eq(wc.status, IBV_WC_RNR_RETRY_EXC_ERR, "%s", ibv_wc_status_str(wc.status));
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 2);
    cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, send_lands_in_posted_receive)
{
    struct pair p;
    struct ibv_wc wc;
    struct ibv_sge sge;
    struct ibv_send_wr wr = {0}, *bad;
    pair_up(&p, &default_opts);
    cr_assert_eq(post_recv(&p.s, 21, 100), 0);
    memcpy(p.c.buf, "a send", 7);
    sge           = (struct ibv_sge){.addr = (uintptr_t)p.c.buf, .length = 7, .lkey = p.c.mr->lkey};
    wr.wr_id      = 20;
    wr.sg_list    = &sge;
    wr.num_sge    = 1;
    wr.opcode     = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(wc.opcode, IBV_WC_SEND);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(wc.opcode, IBV_WC_RECV);
    cr_assert_eq(wc.byte_len, 7);
    cr_assert_not(wc.wc_flags & IBV_WC_WITH_IMM);
    cr_assert_str_eq((char *)p.s.buf, "a send");
    /* larger than the receive buffer: LOC_LEN_ERR there, REM_INV_REQ_ERR here */
    cr_assert_eq(post_recv(&p.s, 22, 4), 0);
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_REM_INV_REQ_ERR, "%s", ibv_wc_status_str(wc.status));
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_LOC_LEN_ERR, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, rdma_read)
{
    struct pair p;
    struct ibv_wc wc;
    struct ibv_sge sge;
    struct ibv_send_wr wr = {0}, *bad;
    pair_up(&p, &default_opts);
    memcpy(p.s.buf + 64, "read me", 8);
    sge           = (struct ibv_sge){.addr = (uintptr_t)p.c.buf, .length = 8, .lkey = p.c.mr->lkey};
    wr.wr_id      = 30;
    wr.sg_list    = &sge;
    wr.num_sge    = 1;
    wr.opcode     = IBV_WR_RDMA_READ;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = (uintptr_t)p.s.buf + 64;
    wr.wr.rdma.rkey        = p.s.mr->rkey;
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    cr_assert_eq(wc.opcode, IBV_WC_RDMA_READ);
    cr_assert_eq(wc.byte_len, 8);
    cr_assert_str_eq((char *)p.c.buf, "read me");
    /* and the other way: the accepting side reads from the connecting one */
    memcpy(p.c.buf + 128, "and back", 9);
    sge.addr               = (uintptr_t)p.s.buf + 256;
    sge.length             = 9;
    sge.lkey               = p.s.mr->lkey;
    wr.wr.rdma.remote_addr = (uintptr_t)p.c.buf + 128;
    wr.wr.rdma.rkey        = p.c.mr->rkey;
    cr_assert_eq(ibv_post_send(p.s.id->qp, &wr, &bad), 0);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    cr_assert_str_eq((char *)p.s.buf + 256, "and back");
    pair_down(&p);
}

Test(fakeverbs, qp_state_machine_enforced)
{
    struct ibv_device **list   = ibv_get_device_list(NULL);
    struct ibv_context *ctx    = ibv_open_device(list[0]);
    struct ibv_pd *pd          = ibv_alloc_pd(ctx);
    struct ibv_cq *cq          = ibv_create_cq(ctx, 16, NULL, NULL, 0);
    struct ibv_qp_init_attr ia = {
        .send_cq = cq,
        .recv_cq = cq,
        .qp_type = IBV_QPT_RC,
        .cap     = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1}};
    struct ibv_qp *qp      = ibv_create_qp(pd, &ia);
    struct ibv_qp_attr a   = {0};
    struct ibv_send_wr swr = {.opcode = IBV_WR_RDMA_WRITE}, *sbad;
    struct ibv_recv_wr rwr = {0}, *rbad;
    struct ibv_qp_init_attr qi;
    cr_assert_not_null(qp);
    cr_assert_eq(qp->state, IBV_QPS_RESET);
    cr_assert_eq(ibv_post_send(qp, &swr, &sbad), EINVAL, "post_send in RESET");
    cr_assert_eq(sbad, &swr);
    cr_assert_eq(ibv_post_recv(qp, &rwr, &rbad), EINVAL, "post_recv in RESET");
    a.qp_state = IBV_QPS_RTR;
    cr_assert_eq(ibv_modify_qp(qp, &a, IBV_QP_STATE), EINVAL, "RESET -> RTR");
    a.qp_state = IBV_QPS_INIT;
    a.port_num = 1;
    cr_assert_eq(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT), EINVAL,
                 "RESET -> INIT without PKEY_INDEX and ACCESS_FLAGS");
    cr_assert_eq(ibv_modify_qp(qp, &a,
                               IBV_QP_STATE | IBV_QP_PORT | IBV_QP_PKEY_INDEX |
                                   IBV_QP_ACCESS_FLAGS | IBV_QP_TIMEOUT),
                 EINVAL, "RESET -> INIT with a TIMEOUT");
    a.port_num = 2;
    cr_assert_eq(
        ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_PKEY_INDEX | IBV_QP_ACCESS_FLAGS),
        EINVAL, "port 2");
    a.port_num = 1;
    cr_assert_eq(
        ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_PKEY_INDEX | IBV_QP_ACCESS_FLAGS),
        0);
    cr_assert_eq(qp->state, IBV_QPS_INIT);
    cr_assert_eq(ibv_post_send(qp, &swr, &sbad), EINVAL, "post_send in INIT");
    cr_assert_eq(ibv_post_recv(qp, &rwr, &rbad), 0, "post_recv in INIT");
    a.qp_state          = IBV_QPS_RTR;
    a.path_mtu          = IBV_MTU_4096;
    a.ah_attr.is_global = 1;
    a.ah_attr.port_num  = 1;
    cr_assert_eq(ibv_modify_qp(qp, &a,
                               IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                   IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC),
                 EINVAL, "INIT -> RTR without MIN_RNR_TIMER");
    a.ah_attr.is_global = 0;
    cr_assert_eq(ibv_modify_qp(qp, &a,
                               IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                   IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                   IBV_QP_MIN_RNR_TIMER),
                 EINVAL, "RoCE without a GRH");
    a.ah_attr.is_global = 1;
    cr_assert_eq(ibv_modify_qp(qp, &a,
                               IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                   IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                   IBV_QP_MIN_RNR_TIMER),
                 0);
    cr_assert_eq(ibv_post_send(qp, &swr, &sbad), EINVAL, "post_send in RTR");
    a.qp_state = IBV_QPS_RTS;
    cr_assert_eq(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN), EINVAL,
                 "RTR -> RTS without TIMEOUT, RETRY_CNT, RNR_RETRY, MAX_QP_RD_ATOMIC");
    cr_assert_eq(ibv_query_qp(qp, &a, IBV_QP_STATE, &qi), 0);
    cr_assert_eq(a.qp_state, IBV_QPS_RTR);
    /* to ERR from anywhere: the posted receive flushes */
    a.qp_state = IBV_QPS_ERR;
    cr_assert_eq(ibv_modify_qp(qp, &a, IBV_QP_STATE), 0);
    {
        struct ibv_wc wc = wait_wc(cq);
        cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR);
    }
    a.qp_state = IBV_QPS_RESET;
    cr_assert_eq(ibv_modify_qp(qp, &a, IBV_QP_STATE), 0);
    cr_assert_eq(ibv_destroy_cq(cq), EBUSY, "a QP still uses the CQ");
    cr_assert_eq(ibv_destroy_qp(qp), 0);
    cr_assert_eq(ibv_destroy_cq(cq), 0);
    cr_assert_eq(ibv_dealloc_pd(pd), 0);
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

Test(fakeverbs, error_state_flushes_outstanding_and_new_work)
{
    struct pair p;
    struct ibv_wc wc;
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    pair_up(&p, &default_opts);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(post_recv(&p.s, 100 + (uint64_t)i, 16), 0);
    }
    cr_assert_eq(ibv_modify_qp(p.s.id->qp, &a, IBV_QP_STATE), 0);
    for (int i = 0; i < 3; i++) {
        wc = wait_wc(p.s.cq);
        cr_assert_eq(wc.wr_id, 100 + (uint64_t)i, "flushed in order");
        cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR);
    }
    cr_assert_eq(post_recv(&p.s, 200, 16), 0);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.wr_id, 200);
    cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR);
    /* an unsignaled send posted in ERR still completes, with a flush error */
    cr_assert_eq(ibv_modify_qp(p.c.id->qp, &a, IBV_QP_STATE), 0);
    cr_assert_eq(post_write(&p.c, 300, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, false, 0), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 300);
    cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR);
    pair_down(&p);
}

Test(fakeverbs, inline_send_copies_at_post_time)
{
    struct pair p;
    struct ibv_wc wc;
    char data[32]         = "inline payload";
    struct ibv_sge sge    = {.addr = (uintptr_t)data, .length = 15, .lkey = 0};
    struct ibv_send_wr wr = {.wr_id      = 40,
                             .sg_list    = &sge,
                             .num_sge    = 1,
                             .opcode     = IBV_WR_SEND_WITH_IMM,
                             .send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE},
                       *bad;
    struct opts o = default_opts;
    char big[128] = {0};
    o.max_inline  = 32;
    pair_up(&p, &o);
    /* no receive yet: the send waits in RNR retries while the buffer changes */
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    memset(data, 'X', sizeof(data));
    usleep(20000);
    cr_assert_eq(post_recv(&p.s, 41, 64), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(wc.byte_len, 15);
    cr_assert_str_eq((char *)p.s.buf, "inline payload");
    /* beyond max_inline_data */
    sge.addr   = (uintptr_t)big;
    sge.length = sizeof(big);
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), EINVAL);
    pair_down(&p);
}

Test(fakeverbs, queue_depth_limits)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_wc wc;
    struct ibv_sge sges[3];
    struct ibv_send_wr wr = {.opcode = IBV_WR_RDMA_WRITE, .sg_list = sges, .num_sge = 3}, *bad;
    o.max_send_wr         = 4;
    o.max_recv_wr         = 2;
    pair_up(&p, &o);
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), EINVAL, "3 SGEs, max_send_sge 2");
    /* three unsignaled writes keep their slots after they are done on the wire */
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(
            post_write(&p.c, (uint64_t)i, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, false, 0), 0);
    }
    assert_no_wc(p.c.cq, 100);
    {
        /* one call, so that the first cannot complete before the second is posted */
        struct ibv_sge sge     = {.addr = (uintptr_t)p.c.buf, .length = 8, .lkey = p.c.mr->lkey};
        struct ibv_send_wr w4  = {.wr_id      = 4,
                                  .sg_list    = &sge,
                                  .num_sge    = 1,
                                  .opcode     = IBV_WR_RDMA_WRITE,
                                  .send_flags = IBV_SEND_SIGNALED};
        struct ibv_send_wr w3  = w4;
        w3.wr_id               = 3;
        w3.next                = &w4;
        w3.wr.rdma.remote_addr = w4.wr.rdma.remote_addr = (uintptr_t)p.s.buf;
        w3.wr.rdma.rkey = w4.wr.rdma.rkey = p.s.mr->rkey;
        cr_assert_eq(ibv_post_send(p.c.id->qp, &w3, &bad), ENOMEM,
                     "a fifth WR on a send queue of 4");
        cr_assert_eq(bad, &w4);
    }
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 3);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    /* the signaled completion freed every slot */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(post_write(&p.c, 10 + (uint64_t)i, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey,
                                false, i == 3 ? IBV_SEND_SIGNALED : 0),
                     0);
    }
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 13);
    cr_assert_eq(post_recv(&p.s, 1, 8), 0);
    cr_assert_eq(post_recv(&p.s, 2, 8), 0);
    cr_assert_eq(post_recv(&p.s, 3, 8), ENOMEM, "a third receive on a queue of 2");
    pair_down(&p);
}

Test(fakeverbs, completion_channel_wakes_once_per_arm)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_cq *ev_cq;
    void *ev_ctx;
    struct ibv_wc wc;
    struct pollfd pfd;
    o.channel = true;
    pair_up(&p, &o);
    pfd = (struct pollfd){.fd = p.s.cc->fd, .events = POLLIN};
    cr_assert_eq(ibv_req_notify_cq(p.s.cq, 0), 0);
    cr_assert_eq(poll(&pfd, 1, 50), 0, "readable before any completion");
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    cr_assert_eq(post_recv(&p.s, 2, 0), 0);
    cr_assert_eq(post_write(&p.c, 1, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, 0), 0);
    cr_assert_eq(poll(&pfd, 1, WAIT_MS), 1, "no wake-up");
    cr_assert_eq(ibv_get_cq_event(p.s.cc, &ev_cq, &ev_ctx), 0);
    cr_assert_eq(ev_cq, p.s.cq);
    cr_assert_eq(poll(&pfd, 1, 0), 0, "the event was consumed");
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.wr_id, 1);
    /* not re-armed: the next completion wakes nobody */
    cr_assert_eq(post_write(&p.c, 2, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, 0), 0);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.wr_id, 2);
    cr_assert_eq(poll(&pfd, 1, 50), 0, "woken without being armed");
    /* an unacknowledged event keeps the CQ alive */
    rdma_destroy_qp(p.s.id);
    cr_assert_eq(ibv_destroy_cq(p.s.cq), EBUSY);
    ibv_ack_cq_events(p.s.cq, 1);
    pair_down(&p);
}

Test(fakeverbs, fault_bad_rkey)
{
    struct pair p;
    struct ibv_wc wc;
    setenv("FAKEVERBS_FAULT", "bad_rkey:2", 1);
    pair_up(&p, &default_opts);
    memset(p.c.buf, 7, 64);
    cr_assert_eq(
        post_write(&p.c, 1, 0, 16, (uintptr_t)p.s.buf, p.s.mr->rkey, false, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(
        post_write(&p.c, 2, 0, 64, (uintptr_t)p.s.buf, p.s.mr->rkey, false, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 2);
    cr_assert_eq(wc.status, IBV_WC_REM_ACCESS_ERR, "%s", ibv_wc_status_str(wc.status));
    cr_assert_eq(p.s.buf[20], 0, "the corrupted write landed");
    pair_down(&p);
}

Test(fakeverbs, fault_starve_recv)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_wc wc;
    setenv("FAKEVERBS_FAULT", "starve_recv:1", 1);
    o.rnr_retry = 1;
    pair_up(&p, &o);
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    cr_assert_eq(post_recv(&p.s, 2, 0), 0, "a starved receive is accepted");
    cr_assert_eq(
        post_write(&p.c, 1, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(
        post_write(&p.c, 2, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.wr_id, 2);
    cr_assert_eq(wc.status, IBV_WC_RNR_RETRY_EXC_ERR, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, reject_carries_private_data)
{
    struct rdma_event_channel *sch = rdma_create_event_channel();
    struct rdma_cm_id *lid;
    struct side c = {0};
    struct rdma_cm_event *ev;
    char too_long[57] = {0};
    struct opts o     = default_opts;
    uint16_t port     = listen_any(sch, &lid);
    o.pdata           = "hello";
    o.pdata_len       = 6;
    client_connect(&c, port, &o);
    ev = next_event(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
    cr_assert_eq(ev->param.conn.private_data_len, 56, "the IB CM's fixed-size field");
    cr_assert_str_eq(ev->param.conn.private_data, "hello");
    cr_assert_eq(rdma_reject(ev->id, too_long, 149), -1);
    cr_assert_eq(rdma_reject(ev->id, "go away", 8), 0);
    cr_assert_eq(rdma_destroy_id(ev->id), -1, "its event is not acknowledged yet");
    {
        struct rdma_cm_id *req = ev->id;
        cr_assert_eq(rdma_ack_cm_event(ev), 0);
        cr_assert_eq(rdma_destroy_id(req), 0);
    }
    ev = next_event(c.ch, RDMA_CM_EVENT_REJECTED);
    cr_assert_eq(ev->status, 28);
    cr_assert_str_eq(ev->param.conn.private_data, "go away");
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    cr_assert_eq(c.id->qp->state, IBV_QPS_ERR);
    side_free(&c);
    rdma_destroy_event_channel(c.ch);
    cr_assert_eq(rdma_destroy_id(lid), 0);
    rdma_destroy_event_channel(sch);
    (void)too_long;
}

Test(fakeverbs, unreachable_when_nothing_listens)
{
    struct rdma_event_channel *sch = rdma_create_event_channel();
    struct rdma_cm_id *lid;
    struct side c = {0};
    struct rdma_cm_event *ev;
    uint16_t port = listen_any(sch, &lid);
    /* the port was free a moment ago: nothing listens there once the listener is gone */
    cr_assert_eq(rdma_destroy_id(lid), 0);
    client_connect(&c, port, &default_opts);
    ev = next_event(c.ch, RDMA_CM_EVENT_UNREACHABLE);
    cr_assert_lt(ev->status, 0);
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    side_free(&c);
    rdma_destroy_event_channel(c.ch);
    rdma_destroy_event_channel(sch);
}

Test(fakeverbs, connect_private_data_limit_and_non_loopback)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    struct rdma_cm_id *id;
    struct sockaddr_in dst = {.sin_family      = AF_INET,
                              .sin_port        = htons(1),
                              .sin_addr.s_addr = htonl(0x0a000001)}; /* 10.0.0.1 */
    struct rdma_cm_event *ev;
    struct side c = {0};
    struct opts o = default_opts;
    char pd[57]   = {0};
    cr_assert_eq(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_resolve_addr(id, NULL, (struct sockaddr *)&dst, WAIT_MS), 0);
    ev = next_event(ch, RDMA_CM_EVENT_ADDR_ERROR);
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    cr_assert_eq(rdma_destroy_id(id), 0);
    rdma_destroy_event_channel(ch);
    /* 57 bytes of private data: one more than an RC connect carries; 56 go */
    {
        struct rdma_event_channel *sch = rdma_create_event_channel();
        struct rdma_cm_id *lid, *req;
        struct rdma_conn_param cp = {.private_data = pd, .private_data_len = 57};
        uint16_t port             = listen_any(sch, &lid);
        struct sockaddr_in to     = {.sin_family      = AF_INET,
                                     .sin_port        = htons(port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        memset(pd, 'p', sizeof(pd));
        c.ch = rdma_create_event_channel();
        cr_assert_eq(rdma_create_id(c.ch, &c.id, NULL, RDMA_PS_TCP), 0);
        cr_assert_eq(rdma_resolve_addr(c.id, NULL, (struct sockaddr *)&to, WAIT_MS), 0);
        expect_event(c.ch, RDMA_CM_EVENT_ADDR_RESOLVED);
        cr_assert_eq(rdma_resolve_route(c.id, WAIT_MS), 0);
        expect_event(c.ch, RDMA_CM_EVENT_ROUTE_RESOLVED);
        side_qp(&c, &o, false);
        cr_assert_eq(rdma_connect(c.id, &cp), -1);
        cr_assert_eq(errno, EINVAL);
        cp.private_data_len = 56;
        cr_assert_eq(rdma_connect(c.id, &cp), 0);
        ev = next_event(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
        cr_assert_eq(ev->param.conn.private_data_len, 56);
        cr_assert_eq(memcmp(ev->param.conn.private_data, pd, 56), 0);
        req = ev->id;
        cr_assert_eq(rdma_ack_cm_event(ev), 0);
        cr_assert_eq(rdma_destroy_id(req), 0);
        side_free(&c);
        rdma_destroy_event_channel(c.ch);
        cr_assert_eq(rdma_destroy_id(lid), 0);
        rdma_destroy_event_channel(sch);
    }
}

Test(fakeverbs, disconnect_reaches_both_sides)
{
    struct pair p;
    struct ibv_wc wc;
    pair_up(&p, &default_opts);
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    cr_assert_eq(rdma_disconnect(p.c.id), 0);
    expect_event(p.s.ch, RDMA_CM_EVENT_DISCONNECTED);
    expect_event(p.c.ch, RDMA_CM_EVENT_DISCONNECTED);
    expect_event(p.c.ch, RDMA_CM_EVENT_TIMEWAIT_EXIT);
    cr_assert_eq(p.c.id->qp->state, IBV_QPS_ERR);
    cr_assert_eq(rdma_disconnect(p.s.id), 0);
    expect_event(p.s.ch, RDMA_CM_EVENT_TIMEWAIT_EXIT);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR);
    pair_down(&p);
}

/* The server in a child process: listens, tells the parent its port, accepts, posts receives,
 * says "E" once connected, then waits (bounded) to be killed or stopped. *up_fd gets the read end
 * of the pipe it talks through. */
static pid_t g_child; /* killed by kill_child whatever the test's outcome */

static void kill_child(void)
{
    if (g_child > 0) {
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
        g_child = 0;
    }
}

static pid_t fork_server(uint16_t *port, int *up_fd)
{
    int up[2];
    pid_t pid;
    struct pollfd pfd;
    cr_assert_eq(pipe(up), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct pair p;
        uint16_t prt;
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a stopped child must not outlive the test */
        memset(&p, 0, sizeof(p));
        close(up[0]);
        p.s.ch = rdma_create_event_channel();
        prt    = listen_any(p.s.ch, &p.listen);
        if (write(up[1], &prt, sizeof(prt)) != sizeof(prt)) {
            _exit(3);
        }
        server_accept(&p, &default_opts);
        expect_event(p.s.ch, RDMA_CM_EVENT_ESTABLISHED);
        for (int i = 0; i < 8; i++) {
            post_recv(&p.s, (uint64_t)i, 0);
        }
        if (write(up[1], "E", 1) != 1) {
            _exit(3);
        }
        sleep(30);
        _exit(4);
    }
    g_child = pid;
    close(up[1]);
    pfd = (struct pollfd){.fd = up[0], .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, WAIT_MS), 1, "the child did not start listening");
    cr_assert_eq(read(up[0], port, sizeof(*port)), (ssize_t)sizeof(*port));
    *up_fd = up[0];
    return pid;
}

static void wait_established_child(int up_fd)
{
    struct pollfd pfd = {.fd = up_fd, .events = POLLIN};
    char b;
    cr_assert_eq(poll(&pfd, 1, WAIT_MS), 1, "the child did not connect");
    cr_assert_eq(read(up_fd, &b, 1), 1);
    cr_assert_eq(b, 'E');
}

static void reap(pid_t pid)
{
    int st;
    kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    g_child = 0;
}

Test(fakeverbs, dead_peer_gives_retry_exceeded_and_disconnect, .fini = kill_child)
{
    struct side c = {0};
    struct ibv_wc wc;
    uint16_t port;
    int up_fd;
    uint32_t rkey_unknown = 0x12345;
    pid_t pid             = fork_server(&port, &up_fd);
    client_connect(&c, port, &default_opts);
    expect_event(c.ch, RDMA_CM_EVENT_ESTABLISHED);
    wait_established_child(up_fd);
    /* the peer dies with work in flight: the first of these runs out of retries, the rest
     * flush */
    reap(pid);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(
            post_write(&c, (uint64_t)i, 0, 8, 0x1000, rkey_unknown, true, IBV_SEND_SIGNALED), 0);
    }
    wc = wait_wc(c.cq);
    cr_assert_eq(wc.wr_id, 0);
    cr_assert_eq(wc.status, IBV_WC_RETRY_EXC_ERR, "%s", ibv_wc_status_str(wc.status));
    for (int i = 1; i < 3; i++) {
        wc = wait_wc(c.cq);
        cr_assert_eq(wc.wr_id, (uint64_t)i);
        cr_assert_eq(wc.status, IBV_WC_WR_FLUSH_ERR, "%s", ibv_wc_status_str(wc.status));
    }
    expect_event(c.ch, RDMA_CM_EVENT_DISCONNECTED);
    close(up_fd);
    side_free(&c);
    rdma_destroy_event_channel(c.ch);
}

Test(fakeverbs, stopped_peer_gives_retry_exceeded_after_the_timeout, .fini = kill_child)
{
    struct side c = {0};
    struct ibv_wc wc;
    struct opts o = default_opts;
    uint16_t port;
    int up_fd;
    uint64_t t0, elapsed;
    pid_t pid     = fork_server(&port, &up_fd);
    o.ack_timeout = 14; /* 4.096 us * 2^14 = 67 ms, times retry_cnt + 1 = 2: 134 ms */
    o.retry       = 1;
    client_connect(&c, port, &o);
    expect_event(c.ch, RDMA_CM_EVENT_ESTABLISHED);
    wait_established_child(up_fd);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    {
        int st;
        cr_assert_eq(waitpid(pid, &st, WUNTRACED), pid); /* stopped for sure */
        cr_assert(WIFSTOPPED(st));
    }
    t0 = ms_now();
    cr_assert_eq(post_write(&c, 1, 0, 8, 0x1000, 0x999, true, IBV_SEND_SIGNALED), 0);
    wc      = wait_wc(c.cq);
    elapsed = ms_now() - t0;
    cr_assert_eq(wc.status, IBV_WC_RETRY_EXC_ERR, "%s", ibv_wc_status_str(wc.status));
    cr_assert_geq(elapsed, 120, "retries ran out after %llu ms", (unsigned long long)elapsed);
    cr_assert_lt(elapsed, 2000, "retries ran out after %llu ms", (unsigned long long)elapsed);
    reap(pid);
    close(up_fd);
    side_free(&c);
    rdma_destroy_event_channel(c.ch);
}

Test(fakeverbs, cq_overrun_is_an_error)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_wc wc[4];
    o.cqe = 2;
    pair_up(&p, &o);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(post_write(&p.c, (uint64_t)i, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, false,
                                IBV_SEND_SIGNALED),
                     0);
    }
    /* the third completion finds the CQ of 2 full: the CQ fails from then on */
    for (int i = 0; i < 1000; i++) {
        int n = ibv_poll_cq(p.c.cq, 0, wc);
        if (n < 0) {
            break;
        }
        usleep(1000);
    }
    cr_assert_lt(ibv_poll_cq(p.c.cq, 4, wc), 0, "no overrun reported");
    for (int i = 0; i < 1000 && qp_state(p.c.id->qp) != IBV_QPS_ERR; i++) {
        usleep(1000);
    }
    cr_assert_eq(qp_state(p.c.id->qp), IBV_QPS_ERR);
    pair_down(&p);
}

Test(fakeverbs, type_of_service_is_recorded)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    struct rdma_cm_id *id;
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    uint8_t tos = 106;
    int bad     = 1;
    cr_assert_eq(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof(tos)), 0);
    cr_assert_eq(rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &bad, sizeof(bad)), -1);
    cr_assert_eq(rdma_resolve_addr(id, NULL, (struct sockaddr *)&to, WAIT_MS), 0);
    expect_event(ch, RDMA_CM_EVENT_ADDR_RESOLVED);
    cr_assert_eq(rdma_resolve_route(id, WAIT_MS), 0);
    expect_event(ch, RDMA_CM_EVENT_ROUTE_RESOLVED);
    cr_assert_eq(id->route.num_paths, 1);
    cr_assert_eq(id->route.path_rec->traffic_class, 106);
    cr_assert_eq(rdma_destroy_id(id), 0);
    rdma_destroy_event_channel(ch);
}

Test(fakeverbs, many_large_writes_land_in_order)
{
    struct pair p;
    struct opts o    = default_opts;
    const size_t len = 8u << 20, chunk = 256u << 10;
    uint8_t *src = malloc(len), *dst = calloc(1, len);
    struct ibv_mr *smr, *dmr;
    struct ibv_wc wc;
    cr_assert_not_null(src);
    cr_assert_not_null(dst);
    o.max_send_wr = 64;
    o.cqe         = 128;
    pair_up(&p, &o);
    for (size_t i = 0; i < len; i++) {
        src[i] = (uint8_t)(i * 7 + (i >> 12));
    }
    smr = ibv_reg_mr(p.c.pd, src, len, IBV_ACCESS_LOCAL_WRITE);
    dmr = ibv_reg_mr(p.s.pd, dst, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    cr_assert_not_null(smr);
    cr_assert_not_null(dmr);
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    /* 32 writes in flight at once, the last one with immediate data and signaled */
    for (size_t off = 0; off < len; off += chunk) {
        bool last          = off + chunk == len;
        struct ibv_sge sge = {
            .addr = (uintptr_t)src + off, .length = (uint32_t)chunk, .lkey = smr->lkey};
        struct ibv_send_wr wr = {.wr_id   = off,
                                 .sg_list = &sge,
                                 .num_sge = 1,
                                 .opcode  = last ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE,
                                 .send_flags = last ? IBV_SEND_SIGNALED : 0},
                           *bad;
        wr.wr.rdma.remote_addr = (uintptr_t)dst + off;
        wr.wr.rdma.rkey        = dmr->rkey;
        cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    }
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    cr_assert_eq(wc.wr_id, len - chunk);
    wc = wait_wc(p.s.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS);
    cr_assert_eq(wc.byte_len, chunk);
    /* the immediate arrives after every earlier write has landed */
    cr_assert_eq(memcmp(src, dst, len), 0);
    cr_assert_eq(ibv_dereg_mr(smr), 0);
    cr_assert_eq(ibv_dereg_mr(dmr), 0);
    free(src);
    free(dst);
    pair_down(&p);
}

Test(fakeverbs, registration_paths_and_unsupported_calls)
{
    struct ibv_device **list = ibv_get_device_list(NULL);
    struct ibv_context *ctx  = ibv_open_device(list[0]);
    struct ibv_pd *pd        = ibv_alloc_pd(ctx);
    static uint8_t buf[4096];
    /* an access mask the compiler cannot see: the header's inline takes ibv_reg_mr_iova2 */
    volatile int access         = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    struct ibv_mr *mr           = ibv_reg_mr(pd, buf, sizeof(buf), access);
    struct ibv_srq_init_attr sa = {0};
    cr_assert_not_null(mr);
    cr_assert_eq(mr->addr, buf);
    cr_assert_eq(mr->length, sizeof(buf));
    cr_assert_eq(ibv_dealloc_pd(pd), EBUSY, "an MR still uses the PD");
    cr_assert_eq(ibv_dereg_mr(mr), 0);
    errno = 0;
    cr_assert_null(ibv_reg_mr(pd, buf, sizeof(buf), IBV_ACCESS_REMOTE_WRITE));
    cr_assert_eq(errno, EINVAL, "remote write without local write");
    errno = 0;
    cr_assert_null(ibv_reg_dmabuf_mr(pd, 0, sizeof(buf), 0, 3, IBV_ACCESS_LOCAL_WRITE));
    cr_assert_eq(errno, EOPNOTSUPP);
    errno = 0;
    cr_assert_null(ibv_create_srq(pd, &sa));
    cr_assert_eq(errno, ENOSYS);
    cr_assert_eq(ibv_dealloc_pd(pd), 0);
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

Test(fakeverbs, loopback_addresses_belong_to_the_first_active_device)
{
    struct pair p;
    struct ibv_wc wc;
    setenv("FAKEVERBS_DEVICES", "fxv0:down,fxib:ib", 1);
    pair_up(&p, &default_opts);
    cr_assert_str_eq(ibv_get_device_name(p.c.id->verbs->device), "fxib");
    cr_assert_eq(p.s.id->verbs, p.c.id->verbs);
    /* and an InfiniBand port carries the traffic as well */
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    cr_assert_eq(
        post_write(&p.c, 2, 0, 8, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SIGNALED), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, rdma_read_needs_responder_resources)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_wc wc;
    struct ibv_sge sge;
    struct ibv_send_wr wr = {0}, *bad;
    o.resp_res            = 0;
    pair_up(&p, &o);
    sge           = (struct ibv_sge){.addr = (uintptr_t)p.c.buf, .length = 8, .lkey = p.c.mr->lkey};
    wr.wr_id      = 31;
    wr.sg_list    = &sge;
    wr.num_sge    = 1;
    wr.opcode     = IBV_WR_RDMA_READ;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = (uintptr_t)p.s.buf;
    wr.wr.rdma.rkey        = p.s.mr->rkey;
    cr_assert_eq(ibv_post_send(p.c.id->qp, &wr, &bad), 0);
    wc = wait_wc(p.c.cq);
    cr_assert_eq(wc.status, IBV_WC_REM_INV_REQ_ERR, "%s", ibv_wc_status_str(wc.status));
    pair_down(&p);
}

Test(fakeverbs, ipv6_loopback_connects)
{
    struct rdma_event_channel *sch = rdma_create_event_channel();
    struct rdma_cm_id *lid;
    struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
    struct sockaddr_in6 dst = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    struct pair p;
    struct rdma_conn_param cp = {.retry_count = 7, .rnr_retry_count = 7};
    struct rdma_cm_event *ev;
    memset(&p, 0, sizeof(p));
    cr_assert_eq(rdma_create_id(sch, &lid, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_bind_addr(lid, (struct sockaddr *)&any), 0);
    cr_assert_null(lid->verbs, "a wildcard bind has no device yet");
    cr_assert_eq(rdma_listen(lid, 4), 0);
    dst.sin6_port = rdma_get_src_port(lid);
    p.s.ch        = sch;
    p.listen      = lid;
    p.c.ch        = rdma_create_event_channel();
    cr_assert_eq(rdma_create_id(p.c.ch, &p.c.id, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_resolve_addr(p.c.id, NULL, (struct sockaddr *)&dst, WAIT_MS), 0);
    expect_event(p.c.ch, RDMA_CM_EVENT_ADDR_RESOLVED);
    cr_assert_eq(rdma_resolve_route(p.c.id, WAIT_MS), 0);
    expect_event(p.c.ch, RDMA_CM_EVENT_ROUTE_RESOLVED);
    side_qp(&p.c, &default_opts, false);
    cr_assert_eq(rdma_connect(p.c.id, &cp), 0);
    server_accept(&p, &default_opts);
    ev = next_event(p.c.ch, RDMA_CM_EVENT_ESTABLISHED);
    cr_assert_eq(ev->param.conn.private_data_len, 196, "the REP's fixed-size field");
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    expect_event(p.s.ch, RDMA_CM_EVENT_ESTABLISHED);
    cr_assert_eq(rdma_get_peer_addr(p.s.id)->sa_family, AF_INET6);
    cr_assert_eq(rdma_get_dst_port(p.s.id), rdma_get_src_port(p.c.id));
    pair_down(&p);
}

Test(fakeverbs, solicited_only_wakes_on_solicited_completions)
{
    struct pair p;
    struct opts o = default_opts;
    struct ibv_cq *ev_cq;
    void *ev_ctx;
    struct pollfd pfd;
    o.channel = true;
    pair_up(&p, &o);
    pfd = (struct pollfd){.fd = p.s.cc->fd, .events = POLLIN};
    cr_assert_eq(ibv_req_notify_cq(p.s.cq, 1), 0);
    cr_assert_eq(post_recv(&p.s, 1, 0), 0);
    cr_assert_eq(post_recv(&p.s, 2, 0), 0);
    cr_assert_eq(post_write(&p.c, 1, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, 0), 0);
    (void)wait_wc(p.s.cq);
    cr_assert_eq(poll(&pfd, 1, 50), 0, "woken by an unsolicited completion");
    cr_assert_eq(
        post_write(&p.c, 2, 0, 4, (uintptr_t)p.s.buf, p.s.mr->rkey, true, IBV_SEND_SOLICITED), 0);
    cr_assert_eq(poll(&pfd, 1, WAIT_MS), 1, "no wake-up for a solicited completion");
    cr_assert_eq(ibv_get_cq_event(p.s.cc, &ev_cq, &ev_ctx), 0);
    ibv_ack_cq_events(ev_cq, 1);
    (void)wait_wc(p.s.cq);
    pair_down(&p);
}

/* ---------------------------------------------------------------------------------------- */
/* GID tables, rdma_init_qp_attr and QPs of the program's own ("external": qp_num) */

/* A RoCE device with link-local v1/v2 GIDs, v1 and v2 GIDs of 127.0.0.1, an empty entry, a
 * RoCE v2 GID of another address and an IB one. */
#define GID_DEVICES "fxv0:gids=v1@ll+v2@ll+v1+v2+-+v2@10.1.2.3+ib"

static void rtr_attr(struct ibv_qp_attr *a, uint8_t sgid_index)
{
    memset(a, 0, sizeof(*a));
    a->qp_state               = IBV_QPS_RTR;
    a->path_mtu               = IBV_MTU_1024;
    a->dest_qp_num            = 1;
    a->max_dest_rd_atomic     = 1;
    a->min_rnr_timer          = 12;
    a->ah_attr.port_num       = 1;
    a->ah_attr.is_global      = 1;
    a->ah_attr.grh.sgid_index = sgid_index;
}

static const int rtr_mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                            IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;

Test(fakeverbs, gid_table_from_environment)
{
    struct ibv_device **list;
    struct ibv_context *ctx;
    struct ibv_port_attr pa;
    struct ibv_gid_entry ge[8];
    union ibv_gid gid;
    static const union ibv_gid zero;
    setenv("FAKEVERBS_DEVICES", GID_DEVICES, 1);
    list = ibv_get_device_list(NULL);
    cr_assert_not_null(list);
    ctx = ibv_open_device(list[0]);
    cr_assert_not_null(ctx);
    cr_assert_eq(ibv_query_port(ctx, 1, &pa), 0);
    cr_assert_eq(pa.gid_tbl_len, 7);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 1, &ge[0], 0), 0);
    cr_assert_eq(ge[0].gid.raw[0], 0xfe, "GID 1 is link-local");
    cr_assert_eq(ge[0].gid_type, IBV_GID_TYPE_ROCE_V2);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 2, &ge[0], 0), 0);
    cr_assert_eq(ge[0].gid_type, IBV_GID_TYPE_ROCE_V1);
    cr_assert_eq(ge[0].gid.raw[12], 127);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 5, &ge[0], 0), 0);
    cr_assert_eq(ge[0].gid_type, IBV_GID_TYPE_ROCE_V2);
    cr_assert(ge[0].gid.raw[10] == 0xff && ge[0].gid.raw[12] == 10 && ge[0].gid.raw[15] == 3);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 6, &ge[0], 0), 0);
    cr_assert_eq(ge[0].gid_type, IBV_GID_TYPE_IB);
    /* an empty entry: the zero GID through ibv_query_gid (sysfs), ENODATA through _ex */
    cr_assert_eq(ibv_query_gid(ctx, 1, 4, &gid), 0);
    cr_assert(memcmp(&gid, &zero, sizeof(gid)) == 0);
    cr_assert_eq(ibv_query_gid_ex(ctx, 1, 4, &ge[0], 0), ENODATA);
    cr_assert_neq(ibv_query_gid(ctx, 1, 7, &gid), 0, "past the table");
    cr_assert_eq(ibv_query_gid_table(ctx, ge, 8, 0), 6, "the non-empty entries");
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

Test(fakeverbs, gid_table_malformed)
{
    setenv("FAKEVERBS_DEVICES", "fxv0:gids=v1+v3", 1);
    errno = 0;
    cr_assert_null(ibv_get_device_list(NULL));
    cr_assert_eq(errno, EINVAL);
}

/* RTR through a GID index: an empty entry or one past the table is EINVAL, as on hardware; a
 * used one is what ibv_query_qp reports. */
Test(fakeverbs, rtr_needs_a_gid_that_exists)
{
    struct ibv_device **list;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct ibv_qp_init_attr qa = {.qp_type = IBV_QPT_RC,
                                  .cap     = {.max_send_wr = 4, .max_recv_wr = 4}};
    struct ibv_qp_attr a       = {.qp_state = IBV_QPS_INIT, .port_num = 1};
    setenv("FAKEVERBS_DEVICES", GID_DEVICES, 1);
    list = ibv_get_device_list(NULL);
    cr_assert_not_null(list);
    ctx = ibv_open_device(list[0]);
    pd  = ibv_alloc_pd(ctx);
    cq  = ibv_create_cq(ctx, 8, NULL, NULL, 0);
    cr_assert(pd != NULL && cq != NULL);
    qa.send_cq = cq;
    qa.recv_cq = cq;
    qp         = ibv_create_qp(pd, &qa);
    cr_assert_not_null(qp);
    cr_assert_eq(
        ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
        0);
    rtr_attr(&a, 4);
    cr_assert_eq(ibv_modify_qp(qp, &a, rtr_mask), EINVAL, "GID 4 is empty");
    rtr_attr(&a, 7);
    cr_assert_eq(ibv_modify_qp(qp, &a, rtr_mask), EINVAL, "GID 7 is past the table");
    cr_assert_eq(qp_state(qp), IBV_QPS_INIT);
    rtr_attr(&a, 2);
    cr_assert_eq(ibv_modify_qp(qp, &a, rtr_mask), 0);
    {
        struct ibv_qp_attr q;
        struct ibv_qp_init_attr qi;
        cr_assert_eq(ibv_query_qp(qp, &q, IBV_QP_AV, &qi), 0);
        cr_assert_eq(q.qp_state, IBV_QPS_RTR);
        cr_assert_eq(q.ah_attr.grh.sgid_index, 2);
    }
    cr_assert_eq(ibv_destroy_qp(qp), 0);
    cr_assert_eq(ibv_destroy_cq(cq), 0);
    cr_assert_eq(ibv_dealloc_pd(pd), 0);
    cr_assert_eq(ibv_close_device(ctx), 0);
    ibv_free_device_list(list);
}

/* One side of a connection over a QP of the program's own. */
struct xside {
    struct rdma_event_channel *ch;
    struct rdma_cm_id *id;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint8_t *buf;
    struct ibv_mr *mr;
};

static void xside_qp(struct xside *x)
{
    struct ibv_qp_init_attr qa = {
        .qp_type = IBV_QPT_RC,
        .cap     = {.max_send_wr = 8, .max_recv_wr = 8, .max_send_sge = 1, .max_recv_sge = 1}};
    x->pd = ibv_alloc_pd(x->id->verbs);
    x->cq = ibv_create_cq(x->id->verbs, 32, NULL, NULL, 0);
    cr_assert(x->pd != NULL && x->cq != NULL);
    qa.send_cq = x->cq;
    qa.recv_cq = x->cq;
    x->qp      = ibv_create_qp(x->pd, &qa);
    cr_assert_not_null(x->qp);
    x->buf = calloc(1, BUF_LEN);
    x->mr  = ibv_reg_mr(x->pd, x->buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    cr_assert(x->buf != NULL && x->mr != NULL);
}

/* Moves x's QP to st with rdma_init_qp_attr's attributes; a sgid_index >= 0 replaces the
 * route's in RTR. */
static void xside_to(struct xside *x, enum ibv_qp_state st, int sgid_index)
{
    struct ibv_qp_attr a = {.qp_state = st};
    int mask             = 0;
    cr_assert_eq(rdma_init_qp_attr(x->id, &a, &mask), 0, "rdma_init_qp_attr: %s", strerror(errno));
    if (st == IBV_QPS_RTR && sgid_index >= 0) {
        a.ah_attr.grh.sgid_index = (uint8_t)sgid_index;
    }
    cr_assert_eq(ibv_modify_qp(x->qp, &a, mask), 0);
}

static void xside_free(struct xside *x)
{
    cr_assert_eq(ibv_dereg_mr(x->mr), 0);
    cr_assert_eq(ibv_destroy_qp(x->qp), 0);
    cr_assert_eq(ibv_destroy_cq(x->cq), 0);
    cr_assert_eq(ibv_dealloc_pd(x->pd), 0);
    cr_assert_eq(rdma_destroy_id(x->id), 0);
    rdma_destroy_event_channel(x->ch);
    free(x->buf);
}

static uint8_t sgid_of(struct ibv_qp *qp)
{
    struct ibv_qp_attr a;
    struct ibv_qp_init_attr ia;
    cr_assert_eq(ibv_query_qp(qp, &a, IBV_QP_AV, &ia), 0);
    cr_assert(a.ah_attr.is_global);
    return a.ah_attr.grh.sgid_index;
}

/*
 * The external-QP mode of librdmacm: qp_num in rdma_connect and rdma_accept, the attributes
 * from rdma_init_qp_attr (the route's GID: the RoCE v2 GID of 127.0.0.1), the acceptor's QP in
 * RTR before rdma_accept, the connector's completed by rdma_establish after CONNECT_RESPONSE;
 * ibv_query_qp reports the source GID index each side set, and a write lands.
 */
Test(fakeverbs, external_qps_connect_with_rdma_establish)
{
    struct xside c = {0}, s = {0};
    struct rdma_cm_id *lid;
    struct rdma_cm_event *ev;
    struct rdma_conn_param cp = {.responder_resources = 1,
                                 .initiator_depth     = 1,
                                 .retry_count         = 7,
                                 .rnr_retry_count     = 7,
                                 .private_data        = "req",
                                 .private_data_len    = 4};
    struct ibv_qp_attr a      = {.qp_state = IBV_QPS_RTR};
    struct sockaddr_in dst    = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct ibv_wc wc;
    int mask;
    setenv("FAKEVERBS_DEVICES", GID_DEVICES, 1);
    s.ch         = rdma_create_event_channel();
    c.ch         = rdma_create_event_channel();
    dst.sin_port = htons(listen_any(s.ch, &lid));
    cr_assert_eq(rdma_create_id(c.ch, &c.id, NULL, RDMA_PS_TCP), 0);
    cr_assert_eq(rdma_resolve_addr(c.id, NULL, (struct sockaddr *)&dst, WAIT_MS), 0);
    expect_event(c.ch, RDMA_CM_EVENT_ADDR_RESOLVED);
    cr_assert_eq(rdma_resolve_route(c.id, WAIT_MS), 0);
    expect_event(c.ch, RDMA_CM_EVENT_ROUTE_RESOLVED);
    cr_assert_eq(c.id->route.path_rec[0].sgid.raw[12], 127, "the route's GID is 127.0.0.1's");
    xside_qp(&c);
    /* before the connection: INIT grants no remote access; RTR does not exist yet */
    a.qp_state = IBV_QPS_INIT;
    cr_assert_eq(rdma_init_qp_attr(c.id, &a, &mask), 0);
    cr_assert_eq(a.qp_access_flags, 0);
    cr_assert(mask & IBV_QP_ACCESS_FLAGS);
    cr_assert_eq(ibv_modify_qp(c.qp, &a, mask), 0);
    a.qp_state = IBV_QPS_RTR;
    cr_assert_neq(rdma_init_qp_attr(c.id, &a, &mask), 0);
    cr_assert_eq(errno, EINVAL);
    cr_assert_neq(rdma_connect(c.id, &cp), 0, "no QP and no qp_num");
    cp.qp_num = c.qp->qp_num;
    cr_assert_eq(rdma_connect(c.id, &cp), 0, "rdma_connect: %s", strerror(errno));

    ev   = next_event(s.ch, RDMA_CM_EVENT_CONNECT_REQUEST);
    s.id = ev->id;
    cr_assert_eq(ev->param.conn.qp_num, c.qp->qp_num);
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    xside_qp(&s);
    a.qp_state = IBV_QPS_INIT;
    cr_assert_eq(rdma_init_qp_attr(s.id, &a, &mask), 0);
    cr_assert(a.qp_access_flags & IBV_ACCESS_REMOTE_WRITE, "the request grants remote write");
    cr_assert_eq(ibv_modify_qp(s.qp, &a, mask), 0);
    a.qp_state = IBV_QPS_RTR;
    cr_assert_eq(rdma_init_qp_attr(s.id, &a, &mask), 0);
    cr_assert_eq(a.dest_qp_num, c.qp->qp_num);
    cr_assert(a.ah_attr.is_global);
    cr_assert_eq(a.ah_attr.grh.sgid_index, 3, "the RoCE v2 GID of 127.0.0.1");
    cp.qp_num       = s.qp->qp_num;
    cp.private_data = "rep";
    cr_assert_neq(rdma_accept(s.id, &cp), 0, "an external QP in INIT");
    cr_assert_eq(errno, EINVAL);
    xside_to(&s, IBV_QPS_RTR, 2);
    xside_to(&s, IBV_QPS_RTS, -1);
    cr_assert_eq(rdma_accept(s.id, &cp), 0, "rdma_accept: %s", strerror(errno));

    ev = next_event(c.ch, RDMA_CM_EVENT_CONNECT_RESPONSE);
    cr_assert_eq(ev->param.conn.qp_num, s.qp->qp_num);
    cr_assert_str_eq(ev->param.conn.private_data, "rep");
    cr_assert_eq(rdma_ack_cm_event(ev), 0);
    cr_assert_neq(rdma_establish(c.id), 0, "the QP is still in INIT");
    xside_to(&c, IBV_QPS_INIT, -1);
    xside_to(&c, IBV_QPS_RTR, -1);
    xside_to(&c, IBV_QPS_RTS, -1);
    cr_assert_eq(rdma_establish(c.id), 0, "rdma_establish: %s", strerror(errno));
    expect_event(s.ch, RDMA_CM_EVENT_ESTABLISHED);
    cr_assert_eq(sgid_of(c.qp), 3);
    cr_assert_eq(sgid_of(s.qp), 2);

    {
        struct ibv_recv_wr rw = {.wr_id = 9}, *rbad;
        struct ibv_sge sge    = {.addr = (uintptr_t)c.buf, .length = 5, .lkey = c.mr->lkey};
        struct ibv_send_wr sw = {.wr_id      = 8,
                                 .sg_list    = &sge,
                                 .num_sge    = 1,
                                 .opcode     = IBV_WR_RDMA_WRITE_WITH_IMM,
                                 .send_flags = IBV_SEND_SIGNALED},
                           *sbad;
        memcpy(c.buf, "ext!", 5);
        sw.wr.rdma.remote_addr = (uintptr_t)s.buf;
        sw.wr.rdma.rkey        = s.mr->rkey;
        cr_assert_eq(ibv_post_recv(s.qp, &rw, &rbad), 0);
        cr_assert_eq(ibv_post_send(c.qp, &sw, &sbad), 0);
        wc = wait_wc(c.cq);
        cr_assert_eq(wc.status, IBV_WC_SUCCESS, "%s", ibv_wc_status_str(wc.status));
        wc = wait_wc(s.cq);
        cr_assert_eq(wc.status, IBV_WC_SUCCESS);
        cr_assert_str_eq((char *)s.buf, "ext!");
    }
    /* the connector gets no ESTABLISHED of its own; a disconnect reaches the peer */
    {
        struct pollfd pf = {.fd = c.ch->fd, .events = POLLIN};
        cr_assert_eq(poll(&pf, 1, 100), 0, "an event after rdma_establish");
    }
    cr_assert_eq(rdma_disconnect(c.id), 0);
    expect_event(s.ch, RDMA_CM_EVENT_DISCONNECTED);
    cr_assert_eq(qp_state(c.qp), IBV_QPS_RTS, "librdmacm leaves an external QP alone");
    cr_assert_eq(rdma_destroy_id(lid), 0);
    xside_free(&c);
    xside_free(&s);
}
