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
    cp.responder_resources = 1;
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
