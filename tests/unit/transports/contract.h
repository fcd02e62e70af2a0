/*
 * The transport contract (transports/transport.h), shared by the transports' unit tests: each
 * test file defines TP_NAME ("tcp"), SUITE_NAME (its Criterion suite) and
 * names_accepted_peer() / names_connected_peer() (how that transport names a peer), then
 * includes this file. Two instances of the transport in one process, driven by hand; every
 * loop is bounded in time.
 */
#ifndef FX_TEST_CONTRACT_H
#define FX_TEST_CONTRACT_H

#define CONTRACT_TEST2(suite, name, ...) Test(suite, name, __VA_ARGS__)
#define CONTRACT_TEST(name, ...)         CONTRACT_TEST2(SUITE_NAME, name, __VA_ARGS__)

#define DRIVE_MS 20000
#define MAXREQ   256

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct pair {
    const struct fx_transport_ops *ops;
    struct fx_tp *a; /* connects (sends) */
    struct fx_tp *b; /* accepts (receives) */
    struct fx_tp_listener *lst;
    struct fx_tp_addr addr;
    struct fx_tp_conn *ca;
    struct fx_tp_conn *cb;
    char hello[FX_TP_HELLO_MAX];
    size_t hello_len;
};

static void progress_both(struct pair *p)
{
    cr_assert_eq(p->ops->progress(p->a), FX_OK);
    cr_assert_eq(p->ops->progress(p->b), FX_OK);
}

/* Two instances with this configuration, b listening. */
static void pair_init_cfg(struct pair *p, const struct fx_tp_config *cfg)
{
    memset(p, 0, sizeof(*p));
    p->ops = fx_transport_find(TP_NAME);
    cr_assert_not_null(p->ops, "the %s transport is not built", TP_NAME);
    cr_assert_eq(p->ops->init(cfg, &p->a), FX_OK);
    cr_assert_eq(p->ops->init(cfg, &p->b), FX_OK);
    cr_assert_eq(p->ops->listen(p->b, &p->addr, &p->lst), FX_OK);
    cr_assert_gt(p->addr.len, 0);
}

/* With the core's default registration cache bound (FX_REG_CACHE_MAX, 1 GiB). */
static void pair_init(struct pair *p, int nsocks, size_t min_stripe, bool zerocopy)
{
    struct fx_tp_config cfg = {.ifname        = "lo",
                               .nsocks        = nsocks,
                               .timeout_ms    = 5000,
                               .min_stripe    = min_stripe,
                               .zerocopy      = zerocopy,
                               .reg_cache_max = (size_t)1 << 30};

    pair_init_cfg(p, &cfg);
}

/* Connects a to b's listener with the given hello; both sides established. */
static void pair_connect(struct pair *p, const char *hello)
{
    int64_t deadline = now_ms() + DRIVE_MS;
    fx_status cs     = FX_INPROGRESS;
    fx_status as     = FX_INPROGRESS;

    while ((cs == FX_INPROGRESS || as == FX_INPROGRESS) && now_ms() < deadline) {
        if (cs == FX_INPROGRESS) {
            cs = p->ops->connect(p->a, &p->addr, hello, strlen(hello), &p->ca);
        }
        if (as == FX_INPROGRESS) {
            p->hello_len = sizeof(p->hello);
            as           = p->ops->accept(p->lst, &p->cb, p->hello, &p->hello_len);
        }
        progress_both(p);
    }
    cr_assert_eq(cs, FX_OK, "connect: %s", fx_strerror(cs));
    cr_assert_eq(as, FX_OK, "accept: %s", fx_strerror(as));
}

static void pair_fini(struct pair *p)
{
    if (p->ca != NULL) {
        p->ops->close(p->ca);
    }
    if (p->cb != NULL) {
        p->ops->close(p->cb);
    }
    if (p->lst != NULL) {
        p->ops->listen_close(p->lst);
    }
    p->ops->fini(p->a);
    p->ops->fini(p->b);
}

/* Tests every request until all completed (status[i] != FX_INPROGRESS) or DRIVE_MS passed. */
/* For ms milliseconds, the listener hands up no further connection (garbage is dropped inside). */
static void expect_no_accept(struct pair *p, int ms)
{
    struct fx_tp_conn *extra = NULL;
    char hello[FX_TP_HELLO_MAX];
    size_t hlen;
    int64_t deadline = now_ms() + ms;

    while (now_ms() < deadline) {
        hlen = sizeof(hello);
        cr_assert_eq(p->ops->accept(p->lst, &extra, hello, &hlen), FX_INPROGRESS,
                     "a garbage connection was accepted");
        progress_both(p);
    }
}

static void drive(struct pair *p, struct fx_tp_req **reqs, fx_status *status, int n)
{
    int64_t deadline = now_ms() + DRIVE_MS;
    int left         = 0;

    for (int i = 0; i < n; i++) {
        status[i] = FX_INPROGRESS;
    }
    do {
        progress_both(p);
        left = 0;
        for (int i = 0; i < n; i++) {
            if (status[i] == FX_INPROGRESS) {
                status[i] = p->ops->test(reqs[i]);
                left += status[i] == FX_INPROGRESS;
            }
        }
    } while (left > 0 && now_ms() < deadline);
    cr_assert_eq(left, 0, "%d of %d requests did not complete in %d ms", left, n, DRIVE_MS);
}

static void pattern(uint8_t *buf, size_t len, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;

    for (size_t i = 0; i < len; i++) {
        x      = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
}

/* ------------------------------------------------------------------ tests */

CONTRACT_TEST(hello_reaches_the_acceptor_and_peers_are_named, .timeout = 30)
{
    struct pair p;
    char peer[64];

    pair_init(&p, 2, 0, false);
    pair_connect(&p, "rank 3 says hi");
    cr_expect_eq(p.hello_len, strlen("rank 3 says hi"));
    cr_expect(memcmp(p.hello, "rank 3 says hi", p.hello_len) == 0, "hello arrived as '%.*s'",
              (int)p.hello_len, p.hello);
    p.ops->conn_peer(p.cb, peer, sizeof(peer));
    cr_expect(names_accepted_peer(peer), "accepted peer named '%s'", peer);
    p.ops->conn_peer(p.ca, peer, sizeof(peer));
    cr_expect(names_connected_peer(peer), "connected peer named '%s'", peer);
    pair_fini(&p);
}

static const size_t sizes[] = {
    0, 1, 63, 4096, 65535, 128 << 10, (128 << 10) + 1, (1 << 20) + 7, 3 << 20, (9 << 20) + 13};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* Sends every size twice in order, with a header naming the message; receives posted before
 * (recv_first) or after the sends. */
static void ordered_messages(int nsocks, bool recv_first, bool zerocopy)
{
    struct pair p;
    struct fx_tp_req *reqs[2 * 2 * NSIZES];
    fx_status st[2 * 2 * NSIZES];
    uint8_t *sbuf[2 * NSIZES], *rbuf[2 * NSIZES];
    char shdr[2 * NSIZES][32], rhdr[2 * NSIZES][32];
    int nmsg = 2 * NSIZES, n = 0;

    pair_init(&p, nsocks, 0, zerocopy);
    pair_connect(&p, "order");
    for (int m = 0; m < nmsg; m++) {
        size_t len = sizes[m % NSIZES];

        sbuf[m] = malloc(len + 1);
        rbuf[m] = malloc(len + 1);
        cr_assert(sbuf[m] != NULL && rbuf[m] != NULL);
        pattern(sbuf[m], len, (uint32_t)m);
        memset(rbuf[m], 0xa5, len + 1);
        memset(shdr[m], 0, sizeof(shdr[m]));
        snprintf(shdr[m], sizeof(shdr[m]), "message %d of %zu bytes", m, len);
        memset(rhdr[m], 0, sizeof(rhdr[m]));
    }
    for (int pass = 0; pass < 2; pass++) {
        bool recv_pass = (pass == 0) == recv_first;

        for (int m = 0; m < nmsg; m++) {
            size_t len = sizes[m % NSIZES];
            fx_status s;

            if (recv_pass) {
                s = p.ops->irecv(p.cb, rhdr[m], sizeof(rhdr[m]), rbuf[m], len, &reqs[n++]);
            } else {
                s = p.ops->isend(p.ca, shdr[m], sizeof(shdr[m]), sbuf[m], len, &reqs[n++]);
            }
            cr_assert_eq(s, FX_OK, "posting message %d: %s", m, fx_strerror(s));
        }
    }
    drive(&p, reqs, st, n);
    for (int i = 0; i < n; i++) {
        cr_expect_eq(st[i], FX_OK, "request %d: %s", i, fx_strerror(st[i]));
    }
    for (int m = 0; m < nmsg; m++) {
        size_t len = sizes[m % NSIZES];

        cr_expect_str_eq(rhdr[m], shdr[m], "header of message %d", m);
        cr_expect(memcmp(rbuf[m], sbuf[m], len) == 0, "payload of message %d (%zu bytes) differs",
                  m, len);
        cr_expect_eq(rbuf[m][len], 0xa5, "message %d wrote past its %zu bytes", m, len);
        free(sbuf[m]);
        free(rbuf[m]);
    }
    pair_fini(&p);
}

CONTRACT_TEST(messages_arrive_in_order_receives_posted_first, .timeout = 60)
{
    ordered_messages(1, true, false);
}

CONTRACT_TEST(messages_arrive_in_order_sends_posted_first, .timeout = 60)
{
    ordered_messages(1, false, false);
}

CONTRACT_TEST(many_small_messages_keep_their_order, .timeout = 60)
{
    struct pair p;
    enum { N = 2000, WINDOW = 64 };
    struct fx_tp_req *reqs[2 * WINDOW];
    fx_status st[2 * WINDOW];
    uint32_t out[WINDOW], in[WINDOW];
    int wrong = 0;

    pair_init(&p, 3, 0, false);
    pair_connect(&p, "small");
    for (int base = 0; base < N; base += WINDOW) {
        int n = 0;

        for (int i = 0; i < WINDOW; i++) {
            out[i] = (uint32_t)(base + i);
            in[i]  = UINT32_MAX;
            cr_assert_eq(p.ops->isend(p.ca, NULL, 0, &out[i], 4, &reqs[n++]), FX_OK);
            cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, &in[i], 4, &reqs[n++]), FX_OK);
        }
        drive(&p, reqs, st, n);
        for (int i = 0; i < WINDOW; i++) {
            wrong += in[i] != (uint32_t)(base + i) || st[2 * i] != FX_OK || st[2 * i + 1] != FX_OK;
        }
    }
    cr_expect_eq(wrong, 0, "%d of %d messages out of order or failed", wrong, N);
    pair_fini(&p);
}

/* The core uses a connection one way, but the contract says both ways work: full duplex, with
 * the receives posted before or after the sends (a receive waiting on a socket must not hold
 * back the sends queued behind it). */
static void both_directions(bool recv_first)
{
    struct pair p;
    struct fx_tp_req *reqs[4];
    fx_status st[4];
    static uint8_t x[1 << 20], y[1 << 20], rx[1 << 20], ry[1 << 20];
    int n = 0;

    pair_init(&p, 2, 0, false);
    pair_connect(&p, "both");
    pattern(x, sizeof(x), 1);
    pattern(y, sizeof(y), 2);
    memset(rx, 0, sizeof(rx));
    memset(ry, 0, sizeof(ry));
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) == recv_first) {
            cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, rx, sizeof(rx), &reqs[n++]), FX_OK);
            cr_assert_eq(p.ops->irecv(p.ca, NULL, 0, ry, sizeof(ry), &reqs[n++]), FX_OK);
        } else {
            cr_assert_eq(p.ops->isend(p.ca, NULL, 0, x, sizeof(x), &reqs[n++]), FX_OK);
            cr_assert_eq(p.ops->isend(p.cb, NULL, 0, y, sizeof(y), &reqs[n++]), FX_OK);
        }
    }
    drive(&p, reqs, st, 4);
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(st[i], FX_OK, "request %d: %s", i, fx_strerror(st[i]));
    }
    cr_expect(memcmp(rx, x, sizeof(x)) == 0, "a -> b differs");
    cr_expect(memcmp(ry, y, sizeof(y)) == 0, "b -> a differs");
    pair_fini(&p);
}

CONTRACT_TEST(a_connection_carries_both_directions_sends_first, .timeout = 30)
{
    both_directions(false);
}

CONTRACT_TEST(a_connection_carries_both_directions_receives_first, .timeout = 30)
{
    both_directions(true);
}

/* A payload longer than the posted receive: FX_ERR_MISMATCH, the sender's header copied out,
 * nothing written past the buffer, the connection failed for later requests. */
static void mismatch(size_t send_len, size_t recv_len, size_t send_hdr, size_t recv_hdr)
{
    struct pair p;
    struct fx_tp_req *reqs[2];
    fx_status st[2];
    uint8_t *sbuf = malloc(send_len + 1);
    uint8_t *rbuf = malloc(recv_len + 64);
    char shdr[64], rhdr[64 + 16];
    struct fx_tp_req *later;
    fx_status s;
    char why[256];
    int64_t deadline;

    cr_assert(sbuf != NULL && rbuf != NULL);
    pair_init(&p, 4, 4096, false);
    pair_connect(&p, "mismatch");
    pattern(sbuf, send_len, 7);
    memset(rbuf, 0x5c, recv_len + 64);
    memset(shdr, 'S', sizeof(shdr));
    memset(rhdr, 0x5c, sizeof(rhdr));
    cr_assert_eq(p.ops->irecv(p.cb, rhdr, recv_hdr, rbuf, recv_len, &reqs[0]), FX_OK);
    cr_assert_eq(p.ops->isend(p.ca, shdr, send_hdr, sbuf, send_len, &reqs[1]), FX_OK);
    deadline = now_ms() + DRIVE_MS;
    st[0]    = FX_INPROGRESS;
    while (st[0] == FX_INPROGRESS && now_ms() < deadline) {
        progress_both(&p);
        st[0] = p.ops->test(reqs[0]);
    }
    cr_expect_eq(st[0], FX_ERR_MISMATCH, "receive of %zu+%zu bytes for a %zu+%zu-byte message: %s",
                 recv_hdr, recv_len, send_hdr, send_len, fx_strerror(st[0]));
    for (size_t i = recv_len; i < recv_len + 64; i++) {
        cr_assert_eq(rbuf[i], 0x5c, "byte %zu past the %zu-byte buffer was written", i - recv_len,
                     recv_len);
    }
    for (size_t i = recv_hdr; i < sizeof(rhdr); i++) {
        cr_assert_eq((uint8_t)rhdr[i], 0x5c, "header byte %zu past %zu was written", i, recv_hdr);
    }
    if (recv_hdr > 0 && recv_hdr <= send_hdr) {
        cr_expect_eq(rhdr[0], 'S', "the sender's header was not copied out");
    }
    p.ops->conn_error(p.cb, why, sizeof(why));
    cr_expect(strlen(why) > 0 && strcmp(why, "no error") != 0, "conn_error after a mismatch: '%s'",
              why);
    s = p.ops->irecv(p.cb, NULL, 0, rbuf, 8, &later);
    if (s == FX_OK) {
        deadline = now_ms() + DRIVE_MS;
        do {
            progress_both(&p);
            s = p.ops->test(later);
        } while (s == FX_INPROGRESS && now_ms() < deadline);
    }
    cr_expect(s != FX_OK && s != FX_INPROGRESS, "a receive after the mismatch gave %s",
              fx_strerror(s));
    free(sbuf);
    free(rbuf);
    pair_fini(&p);
}

CONTRACT_TEST(longer_payload_than_posted_is_a_mismatch, .timeout = 30)
{
    mismatch(100000, 50000, 16, 16);
}

CONTRACT_TEST(shorter_payload_than_posted_is_a_mismatch, .timeout = 30)
{
    mismatch(1000, 300000, 16, 16);
}

CONTRACT_TEST(different_header_length_is_a_mismatch, .timeout = 30)
{
    mismatch(4096, 4096, 32, 16);
}

/* Message 1 mismatches while message 0 (striped over other sockets) may still be in flight:
 * only message 1 reports FX_ERR_MISMATCH, with its header; message 0 completes or reports a
 * broken connection. */
CONTRACT_TEST(only_the_mismatched_message_reports_mismatch, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *reqs[4];
    fx_status st[4];
    static uint8_t big[4 << 20], rbig[4 << 20], small[300], rsmall[200];
    char h0[16] = "zero", h1[16] = "one", r0[16], r1[16];

    pair_init(&p, 4, 0, false);
    pair_connect(&p, "late mismatch");
    cr_assert_eq(p.ops->irecv(p.cb, r0, 16, rbig, sizeof(rbig), &reqs[0]), FX_OK);
    cr_assert_eq(p.ops->irecv(p.cb, r1, 16, rsmall, sizeof(rsmall), &reqs[1]), FX_OK);
    cr_assert_eq(p.ops->isend(p.ca, h0, 16, big, sizeof(big), &reqs[2]), FX_OK);
    cr_assert_eq(p.ops->isend(p.ca, h1, 16, small, sizeof(small), &reqs[3]), FX_OK);
    drive(&p, reqs, st, 2);
    cr_expect(st[0] == FX_OK || st[0] == FX_ERR_CONNECTION, "message 0: %s", fx_strerror(st[0]));
    cr_expect_eq(st[1], FX_ERR_MISMATCH, "message 1: %s", fx_strerror(st[1]));
    cr_expect_str_eq(r1, "one", "message 1's header was not copied out");
    pair_fini(&p);
}

/* A peer whose sends completed may close at once (a rank that finished its last collective):
 * the receiver still gets every message it sent, and only a receive beyond them fails. */
CONTRACT_TEST(messages_sent_before_close_are_still_received, .timeout = 30)
{
    enum { NMSG = 6, LEN = 3000 };
    struct pair p;
    struct fx_tp_req *reqs[NMSG];
    fx_status st[NMSG];
    static uint8_t sbuf[NMSG][LEN], rbuf[NMSG][LEN], extra[16];
    char shdr[NMSG][8], rhdr[NMSG][8];
    fx_status s = FX_INPROGRESS;
    int64_t deadline;

    pair_init(&p, 1, 0, false);
    pair_connect(&p, "bye");
    for (int i = 0; i < NMSG; i++) {
        pattern(sbuf[i], LEN, 40u + (uint32_t)i);
        snprintf(shdr[i], sizeof(shdr[i]), "m%d", i);
        cr_assert_eq(p.ops->isend(p.ca, shdr[i], sizeof(shdr[i]), sbuf[i], LEN, &reqs[i]), FX_OK);
    }
    drive(&p, reqs, st, NMSG);
    for (int i = 0; i < NMSG; i++) {
        cr_assert_eq(st[i], FX_OK, "send %d: %s", i, fx_strerror(st[i]));
    }
    p.ops->close(p.ca);
    p.ca = NULL;
    for (int i = 0; i < 20; i++) { /* let the receiver notice the hang-up first */
        progress_both(&p);
        usleep(1000);
    }
    for (int i = 0; i < NMSG; i++) {
        cr_assert_eq(p.ops->irecv(p.cb, rhdr[i], sizeof(rhdr[i]), rbuf[i], LEN, &reqs[i]), FX_OK);
    }
    drive(&p, reqs, st, NMSG);
    for (int i = 0; i < NMSG; i++) {
        cr_expect_eq(st[i], FX_OK, "message %d sent before the close: %s", i, fx_strerror(st[i]));
        cr_expect_str_eq(rhdr[i], shdr[i]);
        cr_expect(memcmp(rbuf[i], sbuf[i], LEN) == 0, "message %d arrived damaged", i);
    }
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, extra, sizeof(extra), &reqs[0]), FX_OK);
    deadline = now_ms() + DRIVE_MS;
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        progress_both(&p);
        s = p.ops->test(reqs[0]);
    }
    cr_expect(s == FX_ERR_PEER_FAILED || s == FX_ERR_CONNECTION,
              "a receive beyond what the closed peer sent: %s", fx_strerror(s));
    pair_fini(&p);
}

CONTRACT_TEST(closed_peer_fails_the_pending_receive, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *req;
    static uint8_t buf[1 << 20];
    fx_status s = FX_INPROGRESS;
    int64_t deadline;
    char why[256];

    pair_init(&p, 3, 0, false);
    pair_connect(&p, "close");
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, buf, sizeof(buf), &req), FX_OK);
    p.ops->close(p.ca);
    p.ca     = NULL;
    deadline = now_ms() + DRIVE_MS;
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        progress_both(&p);
        s = p.ops->test(req);
    }
    cr_expect(s == FX_ERR_PEER_FAILED || s == FX_ERR_CONNECTION,
              "receive after the peer closed: %s", fx_strerror(s));
    p.ops->conn_error(p.cb, why, sizeof(why));
    cr_expect(names_accepted_peer(why), "the error names no peer: '%s'", why);
    pair_fini(&p);
}

CONTRACT_TEST(connect_to_a_closed_listener_fails, .timeout = 30)
{
    struct pair p;
    struct fx_tp_conn *c = NULL;
    fx_status s          = FX_INPROGRESS;
    int64_t deadline;

    pair_init(&p, 2, 0, false);
    p.ops->listen_close(p.lst);
    p.lst    = NULL;
    deadline = now_ms() + DRIVE_MS;
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        s = p.ops->connect(p.a, &p.addr, "x", 1, &c);
        progress_both(&p);
    }
    cr_expect_eq(s, FX_ERR_CONNECTION, "connect to a closed port: %s", fx_strerror(s));
    if (s == FX_INPROGRESS && c != NULL) {
        p.ops->close(c);
    }
    pair_fini(&p);
}

#endif /* FX_TEST_CONTRACT_H */
