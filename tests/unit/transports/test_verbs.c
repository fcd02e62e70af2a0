/*
 * The verbs transport against the ops-table contract (contract.h), plus what is its own: device
 * choice (FX_IB_HCA naming a missing device, a port that is down), one and three QPs per
 * connection with small and large messages, mismatches across the eager/large boundary both
 * ways, foreign connection requests at the listener, a peer process that dies, and the source
 * GID every QP uses (FX_IB_GID_INDEX). meson runs it on the fake provider (tests/fakeverbs):
 * unit-verbs with its default device, and unit-verbs-devices (the verbs_devices suite only)
 * with FAKEVERBS_DEVICES naming a port that is down, a RoCE device with several GIDs and an
 * InfiniBand device.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "transports/transport.h"
#include "transports/verbs/verbs_int.h"

#define TP_NAME    "verbs"
#define SUITE_NAME verbs

static bool names_accepted_peer(const char *s)
{
    return strstr(s, "verbs peer 127.0.0.1") != NULL;
}

static bool names_connected_peer(const char *s)
{
    return strstr(s, "verbs peer 127.0.0.1") != NULL;
}

#include "contract.h"

/* 1 once the process is stopped (its /proc state is T), 0 while it runs, -1 when gone. */
static int process_stopped(pid_t pid)
{
    char path[64], buf[256];
    FILE *f;
    char *p;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    p = fgets(buf, sizeof(buf), f);
    fclose(f);
    p = p != NULL ? strrchr(buf, ')') : NULL;
    return p != NULL && p[1] == ' ' && p[2] == 'T' ? 1 : 0;
}

static struct fx_tp_config verbs_cfg(const char *hca, int qps)
{
    struct fx_tp_config cfg = {.ifname       = "lo",
                               .timeout_ms   = 5000,
                               .ib_hca       = hca,
                               .ib_gid_index = -1,
                               .ib_tc        = -1,
                               .ib_qps       = qps};

    return cfg;
}

/* A pair with cfg, connected. */
static void pair_cfg(struct pair *p, const struct fx_tp_config *cfg)
{
    memset(p, 0, sizeof(*p));
    p->ops = fx_transport_find(TP_NAME);
    cr_assert_not_null(p->ops);
    cr_assert_eq(p->ops->init(cfg, &p->a), FX_OK);
    cr_assert_eq(p->ops->init(cfg, &p->b), FX_OK);
    cr_assert_eq(p->ops->listen(p->b, &p->addr, &p->lst), FX_OK);
    pair_connect(p, "gid");
}

/* Every QP at both ends uses source GID index want, as the device has it (ibv_query_qp). */
static void expect_sgid(struct pair *p, int want)
{
    struct fx_tp_conn *cs[2] = {p->ca, p->cb};

    for (int e = 0; e < 2; e++) {
        for (unsigned i = 0; i < cs[e]->nqp; i++) {
            struct ibv_qp_attr a;
            struct ibv_qp_init_attr ia;

            cr_assert_not_null(cs[e]->qp[i].qp);
            cr_assert_eq(ibv_query_qp(cs[e]->qp[i].qp, &a, IBV_QP_AV, &ia), 0);
            cr_expect_eq(a.qp_state, IBV_QPS_RTS);
            cr_expect(a.ah_attr.is_global, "RoCE: no GRH on QP %u", i);
            cr_expect_eq(a.ah_attr.grh.sgid_index, want,
                         "the %s side's QP %u of %u uses GID index %u, not %d",
                         e == 0 ? "connecting" : "accepting", i, cs[e]->nqp,
                         a.ah_attr.grh.sgid_index, want);
        }
    }
}

/* A message each way over p, byte for byte. */
static void exchange(struct pair *p)
{
    struct fx_tp_req *reqs[4];
    fx_status st[4];
    static uint8_t x[2][50000], y[2][50000];

    pattern(x[0], sizeof(x[0]), 11);
    pattern(x[1], sizeof(x[1]), 12);
    cr_assert_eq(p->ops->irecv(p->cb, NULL, 0, y[0], sizeof(y[0]), &reqs[0]), FX_OK);
    cr_assert_eq(p->ops->irecv(p->ca, NULL, 0, y[1], sizeof(y[1]), &reqs[1]), FX_OK);
    cr_assert_eq(p->ops->isend(p->ca, NULL, 0, x[0], sizeof(x[0]), &reqs[2]), FX_OK);
    cr_assert_eq(p->ops->isend(p->cb, NULL, 0, x[1], sizeof(x[1]), &reqs[3]), FX_OK);
    drive(p, reqs, st, 4);
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(st[i], FX_OK, "request %d: %s", i, fx_strerror(st[i]));
    }
    cr_expect(memcmp(x[0], y[0], sizeof(x[0])) == 0 && memcmp(x[1], y[1], sizeof(x[1])) == 0);
}

/* Sends this process's log lines (WARN and INFO) to a fresh file; returns its name. */
static const char *log_to_file(void)
{
    static char path[] = "/tmp/fx-test-verbs-gid-XXXXXX";
    int fd             = mkstemp(path);

    cr_assert_geq(fd, 0);
    close(fd);
    setenv("FX_DEBUG_FILE", path, 1);
    setenv("FX_DEBUG", "INFO", 1);
    setenv("FX_DEBUG_SUBSYS", "NET", 1);
    return path;
}

/* How many lines of the log file contain all of the given strings (NULL-terminated). */
static int log_count(const char *path, const char *const *want)
{
    char line[1024];
    int n   = 0;
    FILE *f = fopen(path, "r");

    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        bool all = true;

        for (int i = 0; want[i] != NULL && all; i++) {
            all = strstr(line, want[i]) != NULL;
        }
        n += all;
    }
    fclose(f);
    return n;
}

/* A pair with `qps` QPs per connection, connected. */
static void pair_qps(struct pair *p, int qps)
{
    struct fx_tp_config cfg = verbs_cfg(NULL, qps);

    memset(p, 0, sizeof(*p));
    p->ops = fx_transport_find(TP_NAME);
    cr_assert_not_null(p->ops);
    cr_assert_eq(p->ops->init(&cfg, &p->a), FX_OK);
    cr_assert_eq(p->ops->init(&cfg, &p->b), FX_OK);
    cr_assert_eq(p->ops->listen(p->b, &p->addr, &p->lst), FX_OK);
    pair_connect(p, "qps");
    cr_assert_eq(p->ca->nqp, (unsigned)qps);
    cr_assert_eq(p->cb->nqp, (unsigned)qps);
}

/* Sizes from 0 to 16 MiB (eager, the boundary, large split over the QPs), byte for byte. */
static void sizes_over(int qps)
{
    static const size_t lens[] = {0,    1,         VB_EAGER_MAX - 16, VB_EAGER_MAX - 15,
                                  8192, 300 << 10, (1 << 20) + 3,     16 << 20};
    enum { N = sizeof(lens) / sizeof(lens[0]) };
    struct pair p;
    struct fx_tp_req *reqs[2 * N];
    fx_status st[2 * N];
    uint8_t *sbuf[N], *rbuf[N];
    uint8_t shdr[N][16], rhdr[N][16];

    pair_qps(&p, qps);
    for (int i = 0; i < N; i++) {
        sbuf[i] = malloc(lens[i] + 1);
        rbuf[i] = malloc(lens[i] + 1);
        cr_assert(sbuf[i] != NULL && rbuf[i] != NULL);
        pattern(sbuf[i], lens[i], 300u + (uint32_t)i);
        memset(rbuf[i], 0xa5, lens[i] + 1);
        memset(shdr[i], i + 1, 16);
        memset(rhdr[i], 0, 16);
        cr_assert_eq(p.ops->irecv(p.cb, rhdr[i], 16, rbuf[i], lens[i], &reqs[i]), FX_OK);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(p.ops->isend(p.ca, shdr[i], 16, sbuf[i], lens[i], &reqs[N + i]), FX_OK);
    }
    drive(&p, reqs, st, 2 * N);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(st[i], FX_OK, "receive of %zu bytes: %s", lens[i], fx_strerror(st[i]));
        cr_expect_eq(st[N + i], FX_OK, "send of %zu bytes: %s", lens[i], fx_strerror(st[N + i]));
        cr_expect(memcmp(rbuf[i], sbuf[i], lens[i]) == 0, "%zu bytes over %d QPs differ", lens[i],
                  qps);
        cr_expect(memcmp(rhdr[i], shdr[i], 16) == 0, "header of message %d", i);
        cr_expect_eq(rbuf[i][lens[i]], 0xa5, "the %zu-byte message wrote past its end", lens[i]);
        free(sbuf[i]);
        free(rbuf[i]);
    }
    pair_fini(&p);
}

Test(verbs, sizes_up_to_16_mib_over_one_qp, .timeout = 60)
{
    sizes_over(1);
}

Test(verbs, sizes_up_to_16_mib_over_three_qps, .timeout = 60)
{
    sizes_over(3);
}

/* Repeated large messages from the same buffers over three QPs: the ring and the credits come
 * back, and each message arrives whole. */
Test(verbs, repeated_large_and_small_messages_interleaved, .timeout = 60)
{
    enum { ROUNDS = 40, BIG = 600 << 10 };
    struct pair p;
    struct fx_tp_req *reqs[4];
    fx_status st[4];
    static uint8_t big[BIG], rbig[BIG];
    uint32_t small = 0, rsmall = 0;
    int wrong = 0;

    pair_qps(&p, 3);
    for (int r = 0; r < ROUNDS; r++) {
        pattern(big, BIG, (uint32_t)r);
        small = (uint32_t)r * 7u;
        cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, rbig, BIG, &reqs[0]), FX_OK);
        cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, &rsmall, 4, &reqs[1]), FX_OK);
        cr_assert_eq(p.ops->isend(p.ca, NULL, 0, big, BIG, &reqs[2]), FX_OK);
        cr_assert_eq(p.ops->isend(p.ca, NULL, 0, &small, 4, &reqs[3]), FX_OK);
        drive(&p, reqs, st, 4);
        wrong += st[0] != FX_OK || st[1] != FX_OK || st[2] != FX_OK || st[3] != FX_OK ||
                 memcmp(big, rbig, BIG) != 0 || rsmall != small;
    }
    cr_expect_eq(wrong, 0, "%d of %d rounds failed or differed", wrong, ROUNDS);
    pair_fini(&p);
}

/* An idle receiver sleeps: after prepare_wait its wait_fd stays quiet while nothing moves, and
 * turns readable when a message lands (the CQ was armed), so the caller never has to spin. */
Test(verbs, an_idle_receiver_sleeps_until_a_message_lands, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *rreq, *sreq;
    uint32_t out = 0xfeedu, in = 0;
    struct pollfd pfd;
    fx_status rs = FX_INPROGRESS, ss = FX_INPROGRESS;
    int64_t deadline;

    pair_qps(&p, 2);
    for (int i = 0; i < 20; i++) { /* the set-up's last completions and events */
        progress_both(&p);
        usleep(1000);
    }
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, &in, 4, &rreq), FX_OK);
    cr_assert_eq(p.ops->progress(p.b), FX_OK);
    cr_assert(!p.ops->prepare_wait(p.b), "prepare_wait says work is ready with nothing sent");
    pfd = (struct pollfd){.fd = p.ops->wait_fd(p.b), .events = POLLIN};
    cr_expect_eq(poll(&pfd, 1, 200), 0, "wait_fd readable while idle: the caller would spin");
    cr_assert_eq(p.ops->isend(p.ca, NULL, 0, &out, 4, &sreq), FX_OK);
    deadline = now_ms() + 5000;
    while (poll(&pfd, 1, 0) == 0 && now_ms() < deadline) {
        cr_assert_eq(p.ops->progress(p.a), FX_OK); /* only the sender moves */
        usleep(500);
    }
    cr_assert_eq(poll(&pfd, 1, 0), 1, "wait_fd never turned readable for the arriving message");
    deadline = now_ms() + 5000;
    while ((rs == FX_INPROGRESS || ss == FX_INPROGRESS) && now_ms() < deadline) {
        progress_both(&p);
        rs = rs == FX_INPROGRESS ? p.ops->test(rreq) : rs;
        ss = ss == FX_INPROGRESS ? p.ops->test(sreq) : ss;
    }
    cr_expect(rs == FX_OK && ss == FX_OK && in == out, "receive %s, send %s, got %x",
              fx_strerror(rs), fx_strerror(ss), in);
    pair_fini(&p);
}

/* More eager messages than the ring has slots, all sent before any receive is posted: the ring
 * fills (the sends beyond it wait for credits) and wraps around the hello's slot, and every
 * message is still received whole and in order. */
Test(verbs, a_full_ring_wraps_in_order_before_receives_are_posted, .timeout = 30)
{
    enum { N = VB_SLOTS + 12, LEN = 100 };
    struct pair p;
    struct fx_tp_req *reqs[2 * N];
    fx_status st[2 * N];
    static uint8_t sbuf[N][LEN], rbuf[N][LEN];
    uint32_t shdr[N], rhdr[N];
    int64_t until;
    int wrong = 0;

    pair_qps(&p, 2);
    for (int i = 0; i < N; i++) {
        pattern(sbuf[i], LEN, 900u + (uint32_t)i);
        shdr[i] = (uint32_t)i;
        rhdr[i] = UINT32_MAX;
        cr_assert_eq(p.ops->isend(p.ca, &shdr[i], 4, sbuf[i], LEN, &reqs[N + i]), FX_OK);
    }
    for (until = now_ms() + 300; now_ms() < until;) {
        progress_both(&p);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(p.ops->irecv(p.cb, &rhdr[i], 4, rbuf[i], LEN, &reqs[i]), FX_OK);
    }
    drive(&p, reqs, st, 2 * N);
    for (int i = 0; i < N; i++) {
        wrong += st[i] != FX_OK || st[N + i] != FX_OK || rhdr[i] != (uint32_t)i ||
                 memcmp(rbuf[i], sbuf[i], LEN) != 0;
    }
    cr_expect_eq(wrong, 0, "%d of %d messages failed, damaged or out of order (first: header %u)",
                 wrong, N, rhdr[0]);
    pair_fini(&p);
}

/* Large messages repeated from and into the same buffers register them once on each side
 * (FX_REG_CACHE_MAX 1 GiB: a hit for every later message), or once per message where the
 * registration cache is off (no unmap events) or bounded to 0. */
static void repeated_registrations(size_t cache_max)
{
    enum { ROUNDS = 8, BIG = 300 << 10 };
    struct fx_tp_config cfg = verbs_cfg(NULL, 2);
    struct pair p;
    struct fx_tp_req *reqs[2];
    fx_status st[2];
    static uint8_t big[BIG], rbig[BIG];
    struct fx_rcache_stats sa, sb;

    cfg.reg_cache_max = cache_max;
    memset(&p, 0, sizeof(p));
    p.ops = fx_transport_find(TP_NAME);
    cr_assert_eq(p.ops->init(&cfg, &p.a), FX_OK);
    cr_assert_eq(p.ops->init(&cfg, &p.b), FX_OK);
    cr_assert_eq(p.ops->listen(p.b, &p.addr, &p.lst), FX_OK);
    pair_connect(&p, "cache");
    for (int r = 0; r < ROUNDS; r++) {
        pattern(big, BIG, (uint32_t)r + 50u);
        cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, rbig, BIG, &reqs[0]), FX_OK);
        cr_assert_eq(p.ops->isend(p.ca, NULL, 0, big, BIG, &reqs[1]), FX_OK);
        drive(&p, reqs, st, 2);
        cr_assert(st[0] == FX_OK && st[1] == FX_OK && memcmp(big, rbig, BIG) == 0, "round %d", r);
    }
    cr_assert(p.a->devs != NULL && p.b->devs != NULL);
    fx_rcache_stats(p.a->devs->rc, &sa);
    fx_rcache_stats(p.b->devs->rc, &sb);
    if (fx_rcache_enabled(p.a->devs->rc)) {
        cr_expect(sa.misses == 1 && sa.hits == ROUNDS - 1, "sender: %llu misses, %llu hits",
                  (unsigned long long)sa.misses, (unsigned long long)sa.hits);
        cr_expect(sb.misses == 1 && sb.hits == ROUNDS - 1, "receiver: %llu misses, %llu hits",
                  (unsigned long long)sb.misses, (unsigned long long)sb.hits);
    } else {
        cr_expect(sa.misses == ROUNDS && sa.hits == 0, "sender: %llu misses, %llu hits",
                  (unsigned long long)sa.misses, (unsigned long long)sa.hits);
        cr_expect(sb.misses == ROUNDS && sb.hits == 0, "receiver: %llu misses, %llu hits",
                  (unsigned long long)sb.misses, (unsigned long long)sb.hits);
        cr_expect(sa.bytes == 0 && sb.bytes == 0, "registrations left after the messages");
    }
    pair_fini(&p);
}

Test(verbs, repeated_large_messages_register_their_buffers_once, .timeout = 30)
{
    repeated_registrations(1ull << 30);
}

Test(verbs, without_a_cache_every_large_message_registers, .timeout = 30)
{
    repeated_registrations(0);
}

/* Mismatches where one side thinks the message is eager and the other large. */
static void cross_mismatch(size_t send_len, size_t recv_len)
{
    struct pair p;
    struct fx_tp_req *reqs[2];
    fx_status st[2] = {FX_INPROGRESS, FX_INPROGRESS};
    uint8_t *sbuf   = calloc(1, send_len);
    uint8_t *rbuf   = malloc(recv_len + 64);
    char shdr[8] = "hdrhdr", rhdr[8] = "";
    int64_t deadline;

    cr_assert(sbuf != NULL && rbuf != NULL);
    memset(rbuf, 0x5c, recv_len + 64);
    pair_qps(&p, 2);
    cr_assert_eq(p.ops->irecv(p.cb, rhdr, 8, rbuf, recv_len, &reqs[0]), FX_OK);
    cr_assert_eq(p.ops->isend(p.ca, shdr, 8, sbuf, send_len, &reqs[1]), FX_OK);
    deadline = now_ms() + DRIVE_MS;
    while ((st[0] == FX_INPROGRESS || st[1] == FX_INPROGRESS) && now_ms() < deadline) {
        progress_both(&p);
        for (int i = 0; i < 2; i++) {
            if (st[i] == FX_INPROGRESS) {
                st[i] = p.ops->test(reqs[i]);
            }
        }
    }
    cr_expect_eq(st[0], FX_ERR_MISMATCH, "receive: %s", fx_strerror(st[0]));
    cr_expect_str_eq(rhdr, "hdrhdr", "the sender's header was not copied out");
    cr_expect(st[1] != FX_INPROGRESS, "the sender never learned of the failed connection");
    for (size_t i = 0; i < recv_len + 64; i++) {
        cr_assert_eq(rbuf[i], 0x5c, "byte %zu of the receive buffer was written", i);
    }
    free(sbuf);
    free(rbuf);
    pair_fini(&p);
}

Test(verbs, large_send_into_an_eager_receive_is_a_mismatch, .timeout = 30)
{
    cross_mismatch(200000, 4000);
}

Test(verbs, eager_send_into_a_large_receive_is_a_mismatch, .timeout = 30)
{
    cross_mismatch(4000, 200000);
}

Test(verbs, a_missing_device_in_fx_ib_hca_is_a_clear_error, .timeout = 30)
{
    const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
    struct fx_tp_config cfg            = verbs_cfg("mlx5_9:1", 0);
    struct fx_tp *tp                   = NULL;

    cr_assert_not_null(ops);
    cr_expect_eq(ops->init(&cfg, &tp), FX_ERR_INVALID_ARG);
    cfg.ib_hca = "fxv0:x";
    cr_expect_eq(ops->init(&cfg, &tp), FX_ERR_INVALID_ARG, "a malformed port was accepted");
    cfg.ib_hca = "mlx5_9:1,fxv0:1"; /* the first usable one wins */
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    ops->fini(tp);
}

/* The default device's GIDs: 0 fe80::<guid> (RoCE v1), 1 ::ffff:127.0.0.1 (RoCE v2). Unset, the
 * QPs use rdma_cm's RoCE v2 GID of the address; forced, the index given, on every QP. */
Test(verbs, fx_ib_gid_index_is_the_source_gid_of_every_qp, .timeout = 30)
{
    struct fx_tp_config cfg = verbs_cfg(NULL, 3);
    struct pair p;

    pair_cfg(&p, &cfg);
    expect_sgid(&p, 1);
    exchange(&p);
    pair_fini(&p);
    cfg.ib_gid_index = 0;
    pair_cfg(&p, &cfg);
    expect_sgid(&p, 0);
    exchange(&p);
    pair_fini(&p);
}

/* A foreign rdma_cm client connects with private data of its own (or none, or an older
 * version): each request is rejected, never handed to accept, and the listener still takes a
 * real connection afterwards. */
static void foreign_connect(struct pair *p, const uint8_t *pdata, uint8_t plen)
{
    struct rdma_event_channel *ec = rdma_create_event_channel();
    struct rdma_cm_id *id         = NULL;
    struct rdma_cm_event *ev      = NULL;
    struct sockaddr_in sin        = {.sin_family = AF_INET};
    struct rdma_conn_param param  = {.private_data = pdata, .private_data_len = plen};
    struct ibv_qp_init_attr qa    = {
           .qp_type = IBV_QPT_RC,
           .cap     = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1}};
    struct ibv_pd *pd              = NULL;
    struct ibv_cq *cq              = NULL;
    enum rdma_cm_event_type want[] = {RDMA_CM_EVENT_ADDR_RESOLVED, RDMA_CM_EVENT_ROUTE_RESOLVED,
                                      RDMA_CM_EVENT_REJECTED};
    int64_t deadline;

    cr_assert_not_null(ec);
    cr_assert_eq(fcntl(ec->fd, F_SETFL, O_NONBLOCK), 0);
    cr_assert_eq(rdma_create_id(ec, &id, NULL, RDMA_PS_TCP), 0);
    memcpy(&sin.sin_port, p->addr.data + VB_ADDR_HDR + 2, 2);
    memcpy(&sin.sin_addr, p->addr.data + VB_ADDR_HDR + 4, 4);
    cr_assert_eq(rdma_resolve_addr(id, NULL, (struct sockaddr *)&sin, 2000), 0);
    for (int step = 0; step < 3; step++) {
        deadline = now_ms() + DRIVE_MS;
        while (rdma_get_cm_event(ec, &ev) != 0 && now_ms() < deadline) {
            progress_both(p);
            usleep(500);
        }
        cr_assert_not_null(ev, "no rdma_cm event at step %d", step);
        cr_assert_eq(ev->event, want[step], "step %d: %s", step, rdma_event_str(ev->event));
        rdma_ack_cm_event(ev);
        ev = NULL;
        if (step == 0) {
            cr_assert_eq(rdma_resolve_route(id, 2000), 0);
        } else if (step == 1) {
            pd = ibv_alloc_pd(id->verbs);
            cq = ibv_create_cq(id->verbs, 8, NULL, NULL, 0);
            cr_assert(pd != NULL && cq != NULL);
            qa.send_cq = cq;
            qa.recv_cq = cq;
            cr_assert_eq(rdma_create_qp(id, pd, &qa), 0);
            cr_assert_eq(rdma_connect(id, &param), 0);
        }
    }
    rdma_destroy_qp(id);
    rdma_destroy_id(id);
    ibv_destroy_cq(cq);
    ibv_dealloc_pd(pd);
    rdma_destroy_event_channel(ec);
}

Test(verbs, foreign_connection_requests_are_rejected_without_harm, .timeout = 60)
{
    struct pair p;
    uint8_t old[VB_PRIV_REQ] = {0};

    pair_init(&p, 2, 0, false);
    foreign_connect(&p, (const uint8_t *)"GET / HTTP/1.0", 14);
    foreign_connect(&p, NULL, 0);
    put32(old, VB_MAGIC);
    put16(old + 4, VB_VERSION + 1);
    foreign_connect(&p, old, sizeof(old));
    expect_no_accept(&p, 300);
    pair_connect(&p, "after the garbage");
    cr_expect_eq(p.hello_len, strlen("after the garbage"));
    pair_fini(&p);
}

/* The connecting process dies (SIGKILL): the survivor's pending receive fails with
 * FX_ERR_PEER_FAILED, naming the peer, within 5 s. The child is forked before the parent
 * starts the transport. */
Test(verbs, a_killed_peer_fails_the_pending_receive_in_time, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *req;
    static uint8_t buf[1 << 16];
    fx_status s = FX_INPROGRESS;
    int64_t deadline, killed_at;
    int ready[2], to_child[2];
    char c;
    char why[256];
    pid_t pid;

    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(to_child), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct fx_tp_config cfg            = verbs_cfg(NULL, 2);
        const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
        struct fx_tp *tp;
        struct fx_tp_conn *conn = NULL;
        struct fx_tp_addr addr;
        fx_status cs = FX_INPROGRESS;
        int64_t until;

        if (read(to_child[0], &addr, sizeof(addr)) != (ssize_t)sizeof(addr) ||
            ops->init(&cfg, &tp) != FX_OK) {
            _exit(1);
        }
        until = now_ms() + DRIVE_MS;
        while (cs == FX_INPROGRESS && now_ms() < until) {
            cs = ops->connect(tp, &addr, "child", 5, &conn);
            ops->progress(tp);
        }
        if (cs != FX_OK || write(ready[1], "r", 1) != 1) {
            _exit(1);
        }
        for (until = now_ms() + DRIVE_MS; now_ms() < until;) { /* until killed */
            ops->progress(tp);
            usleep(1000);
        }
        _exit(2);
    }
    close(ready[1]);
    pair_init(&p, 1, 0, false);
    cr_assert_eq(write(to_child[1], &p.addr, sizeof(p.addr)), (ssize_t)sizeof(p.addr));
    deadline = now_ms() + DRIVE_MS;
    while (p.cb == NULL && now_ms() < deadline) {
        p.hello_len = sizeof(p.hello);
        if (p.ops->accept(p.lst, &p.cb, p.hello, &p.hello_len) != FX_OK) {
            p.cb = NULL;
        }
        cr_assert_eq(p.ops->progress(p.b), FX_OK);
    }
    cr_assert_not_null(p.cb, "the child's connection never arrived");
    for (struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
         poll(&pfd, 1, 10) == 0 && now_ms() < deadline;) {
        cr_assert_eq(p.ops->progress(p.b), FX_OK);
    }
    cr_assert_eq(read(ready[0], &c, 1), 1, "the child could not connect");
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, buf, sizeof(buf), &req), FX_OK);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    killed_at = now_ms();
    deadline  = killed_at + DRIVE_MS;
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        cr_assert_eq(p.ops->progress(p.b), FX_OK);
        s = p.ops->test(req);
        usleep(200);
    }
    cr_expect(s == FX_ERR_PEER_FAILED || s == FX_ERR_CONNECTION, "receive after the peer died: %s",
              fx_strerror(s));
    cr_expect_lt(now_ms() - killed_at, 5000, "noticed after %lld ms",
                 (long long)(now_ms() - killed_at));
    p.ops->conn_error(p.cb, why, sizeof(why));
    cr_expect(names_accepted_peer(why), "the error names no peer: '%s'", why);
    close(ready[0]);
    close(to_child[0]);
    close(to_child[1]);
    pair_fini(&p);
}

/* The listening process is stopped (SIGSTOP): nothing answers the connect request, and connect
 * fails with FX_ERR_CONNECTION within the configured set-up bound (1 s here), naming the peer. */
Test(verbs, connect_to_a_stopped_listener_fails_within_the_timeout, .timeout = 30)
{
    const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
    struct fx_tp_config cfg            = verbs_cfg(NULL, 2);
    struct fx_tp *tp                   = NULL;
    struct fx_tp_conn *conn            = NULL;
    struct fx_tp_addr addr;
    fx_status s = FX_INPROGRESS;
    int64_t started, deadline;
    int to_parent[2];
    char why[256];
    pid_t pid;

    cr_assert_eq(pipe(to_parent), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct fx_tp *ltp;
        struct fx_tp_listener *lst;

        if (ops->init(&cfg, &ltp) != FX_OK || ops->listen(ltp, &addr, &lst) != FX_OK ||
            write(to_parent[1], &addr, sizeof(addr)) != (ssize_t)sizeof(addr)) {
            _exit(1);
        }
        raise(SIGSTOP);
        _exit(0);
    }
    cr_assert_eq(read(to_parent[0], &addr, sizeof(addr)), (ssize_t)sizeof(addr));
    deadline = now_ms() + 5000;
    while (process_stopped(pid) == 0 && now_ms() < deadline) {
        usleep(1000);
    }
    cfg.timeout_ms = 1000;
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    started  = now_ms();
    deadline = started + DRIVE_MS;
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        s = ops->connect(tp, &addr, "x", 1, &conn);
        cr_assert_eq(ops->progress(tp), FX_OK);
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_expect_eq(s, FX_ERR_CONNECTION, "connect to a stopped listener: %s", fx_strerror(s));
    cr_expect_lt(now_ms() - started, 3000, "gave up after %lld ms with a 1000 ms bound",
                 (long long)(now_ms() - started));
    if (conn != NULL) {
        ops->conn_error(conn, why, sizeof(why));
        cr_expect(names_connected_peer(why), "the error names no peer: '%s'", why);
        ops->close(conn);
    }
    ops->fini(tp);
    close(to_parent[0]);
    close(to_parent[1]);
}

/* ------------------------------------------------------------------ FAKEVERBS_DEVICES */

/* fxv0's GIDs: 0, 1 fe80::<guid> RoCE v1 and v2; 2, 3 127.0.0.1 RoCE v1 and v2; 4 empty; 5
 * 127.0.0.2 RoCE v2; 6 an IB GID (not usable on RoCE). */
#define DEVICES_ENV "fxv1:down,fxv0:gids=v1@ll+v2@ll+v1+v2+-+v2@127.0.0.2+ib,fxib:ib"

/* Runs in unit-verbs-devices, where FAKEVERBS_DEVICES is DEVICES_ENV. */
static void devices_env(void)
{
    const char *d = getenv("FAKEVERBS_DEVICES");

    if (d == NULL || strcmp(d, DEVICES_ENV) != 0) {
        cr_skip_test("runs in unit-verbs-devices (FAKEVERBS_DEVICES=" DEVICES_ENV ")");
    }
}

Test(verbs_devices, a_down_port_is_skipped_for_the_next_device, .timeout = 30)
{
    const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
    struct fx_tp_config cfg            = verbs_cfg(NULL, 1);
    struct fx_tp *tp                   = NULL;

    devices_env();
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    cr_expect_str_eq(tp->hca, "fxv0", "the first device's port is down, yet %s was chosen",
                     tp->hca);
    ops->fini(tp);
    cfg.ib_hca = "fxv1:1";
    cr_expect_eq(ops->init(&cfg, &tp), FX_ERR_INVALID_ARG, "a down port was used");
    cfg.ib_hca = "fxv1:1,fxib:1";
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    cr_expect_str_eq(tp->hca, "fxib");
    ops->fini(tp);
}

Test(verbs_devices, messages_move_with_a_down_device_listed_first, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *reqs[2];
    fx_status st[2];
    static uint8_t x[100000], y[100000];

    devices_env();
    pair_qps(&p, 2);
    pattern(x, sizeof(x), 5);
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, y, sizeof(y), &reqs[0]), FX_OK);
    cr_assert_eq(p.ops->isend(p.ca, NULL, 0, x, sizeof(x), &reqs[1]), FX_OK);
    drive(&p, reqs, st, 2);
    cr_expect(st[0] == FX_OK && st[1] == FX_OK && memcmp(x, y, sizeof(x)) == 0);
    pair_fini(&p);
}

/* Unset, the QPs use the RoCE v2 GID of the bound address (3), not its RoCE v1 twin (2) nor the
 * link-local ones; the log says which, with its type and address. */
Test(verbs_devices, the_default_source_gid_is_the_roce_v2_one, .timeout = 30)
{
    struct fx_tp_config cfg = verbs_cfg(NULL, 2);
    const char *log         = log_to_file();
    struct pair p;

    devices_env();
    pair_cfg(&p, &cfg);
    expect_sgid(&p, 3);
    exchange(&p);
    pair_fini(&p);
    cr_expect_geq(log_count(log, (const char *[]){"uses GID index 3 of fxv0 port 1 (RoCE v2, "
                                                  "127.0.0.1)",
                                                  NULL}),
                  1, "the GID the QPs use was not logged");
    unlink(log);
}

/* FX_IB_GID_INDEX=k is the source GID of every QP at both ends, whatever rdma_cm resolved. */
Test(verbs_devices, a_forced_gid_index_is_the_source_gid_of_every_qp, .timeout = 30)
{
    static const int forced[] = {2, 1};
    struct fx_tp_config cfg   = verbs_cfg(NULL, 3);
    struct pair p;

    devices_env();
    for (int i = 0; i < 2; i++) {
        cfg.ib_gid_index = forced[i];
        pair_cfg(&p, &cfg);
        expect_sgid(&p, forced[i]);
        exchange(&p);
        pair_fini(&p);
    }
}

/* An index past the table, an empty entry, or a GID the port's link layer cannot use fails
 * init with a message naming the device, the port and the index. */
Test(verbs_devices, a_bad_gid_index_fails_init_naming_it, .timeout = 30)
{
    static const struct {
        int index;
        const char *msg;
    } bad[]                            = {{7, "FX_IB_GID_INDEX=7: fxv0 port 1 has 7 GIDs"},
                                          {4, "FX_IB_GID_INDEX=4: GID 4 of fxv0 port 1 is empty"},
                                          {6, "FX_IB_GID_INDEX=6: GID 6 of fxv0 port 1 has type IB, not usable on an "
                                                                         "Ethernet (RoCE) port"}};
    const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
    struct fx_tp_config cfg            = verbs_cfg(NULL, 1);
    const char *log                    = log_to_file();
    struct fx_tp *tp                   = NULL;

    devices_env();
    for (int i = 0; i < 3; i++) {
        cfg.ib_gid_index = bad[i].index;
        cr_expect_eq(ops->init(&cfg, &tp), FX_ERR_INVALID_ARG, "GID index %d was accepted",
                     bad[i].index);
        cr_expect_eq(log_count(log, (const char *[]){bad[i].msg, NULL}), 1, "no '%s' in the log",
                     bad[i].msg);
    }
    cfg.ib_gid_index = 5;
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    ops->fini(tp);
    unlink(log);
}

/* A forced GID whose address is not the one rdma_cm bound (127.0.0.2, bound 127.0.0.1) is
 * still used, with one warning per instance naming both, however many QPs connect. */
Test(verbs_devices, a_forced_gid_of_another_address_warns_once_naming_both, .timeout = 30)
{
    struct fx_tp_config cfg = verbs_cfg(NULL, 3);
    const char *log         = log_to_file();
    struct pair p;

    devices_env();
    cfg.ib_gid_index = 5;
    pair_cfg(&p, &cfg);
    expect_sgid(&p, 5);
    exchange(&p);
    pair_fini(&p);
    cr_expect_eq(
        log_count(log, (const char *[]){"WARN", "FX_IB_GID_INDEX=5: GID 127.0.0.2",
                                        "is not the address rdma_cm bound", "127.0.0.1", NULL}),
        2, "not one warning for each of the two instances");
    unlink(log);
}
