/*
 * The TCP transport against the ops-table contract (transports/transport.h), in one process
 * over loopback: two transport instances, one connecting and one accepting, driven by hand.
 * Ordering, striping over 1..8 sockets, headers, zero-length and odd-sized payloads, both
 * directions, length mismatches (no write past the posted buffer), a peer that closes, garbage
 * and silent connections at the listener, and refused connects. Every loop is bounded in time.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "transports/transport.h"

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

static void pair_init(struct pair *p, int nsocks, size_t min_stripe, bool zerocopy)
{
    struct fx_tp_config cfg = {.ifname     = "lo",
                               .nsocks     = nsocks,
                               .timeout_ms = 5000,
                               .min_stripe = min_stripe,
                               .zerocopy   = zerocopy};

    memset(p, 0, sizeof(*p));
    p->ops = fx_transport_find("tcp");
    cr_assert_not_null(p->ops, "the tcp transport is not built");
    cr_assert_eq(p->ops->init(&cfg, &p->a), FX_OK);
    cr_assert_eq(p->ops->init(&cfg, &p->b), FX_OK);
    cr_assert_eq(p->ops->listen(p->b, &p->addr, &p->lst), FX_OK);
    cr_assert_gt(p->addr.len, 0);
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

Test(tcp, hello_reaches_the_acceptor_and_peers_are_named, .timeout = 30)
{
    struct pair p;
    char peer[64];

    pair_init(&p, 2, 0, false);
    pair_connect(&p, "rank 3 says hi");
    cr_expect_eq(p.hello_len, strlen("rank 3 says hi"));
    cr_expect(memcmp(p.hello, "rank 3 says hi", p.hello_len) == 0, "hello arrived as '%.*s'",
              (int)p.hello_len, p.hello);
    p.ops->conn_peer(p.cb, peer, sizeof(peer));
    cr_expect(strstr(peer, "127.0.0.1:") != NULL || strstr(peer, "::1") != NULL,
              "accepted peer named '%s'", peer);
    p.ops->conn_peer(p.ca, peer, sizeof(peer));
    cr_expect(strchr(peer, ':') != NULL, "connected peer named '%s'", peer);
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

Test(tcp, messages_arrive_in_order_one_socket, .timeout = 60)
{
    ordered_messages(1, true, false);
}

Test(tcp, messages_arrive_in_order_striped_over_two_sockets, .timeout = 60)
{
    ordered_messages(2, true, false);
}

Test(tcp, messages_arrive_in_order_striped_over_four_sockets_sends_first, .timeout = 60)
{
    ordered_messages(4, false, false);
}

Test(tcp, messages_arrive_in_order_striped_over_eight_sockets, .timeout = 60)
{
    ordered_messages(8, true, false);
}

/* MSG_ZEROCOPY: a send completes only once the kernel released its pages. On loopback the
 * kernel copies anyway and says so, and the transport turns zerocopy off per socket: either
 * way every message arrives whole and in order. */
Test(tcp, zerocopy_sends_arrive_in_order, .timeout = 60)
{
    ordered_messages(2, true, true);
}

Test(tcp, zerocopy_sends_posted_before_receives, .timeout = 60)
{
    ordered_messages(3, false, true);
}

/* Small stripes (4 KiB) make every megabyte message use all sockets in rotation. */
Test(tcp, small_stripes_rotate_over_all_sockets, .timeout = 60)
{
    struct pair p;
    enum { N = 24 };
    struct fx_tp_req *reqs[2 * N];
    fx_status st[2 * N];
    static uint8_t sbuf[N][300000], rbuf[N][300000];
    int n = 0;

    pair_init(&p, 5, 4096, false);
    pair_connect(&p, "stripes");
    for (int m = 0; m < N; m++) {
        size_t len = 8192 + (size_t)m * 12007;

        pattern(sbuf[m], len, (uint32_t)m + 100);
        cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, rbuf[m], len, &reqs[n++]), FX_OK);
        cr_assert_eq(p.ops->isend(p.ca, NULL, 0, sbuf[m], len, &reqs[n++]), FX_OK);
    }
    drive(&p, reqs, st, n);
    for (int m = 0; m < N; m++) {
        size_t len = 8192 + (size_t)m * 12007;

        cr_expect_eq(st[2 * m], FX_OK);
        cr_expect(memcmp(rbuf[m], sbuf[m], len) == 0, "message %d of %zu bytes differs", m, len);
    }
    pair_fini(&p);
}

Test(tcp, many_small_messages_keep_their_order, .timeout = 60)
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

Test(tcp, a_connection_carries_both_directions_sends_first, .timeout = 30)
{
    both_directions(false);
}

Test(tcp, a_connection_carries_both_directions_receives_first, .timeout = 30)
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

Test(tcp, longer_payload_than_posted_is_a_mismatch, .timeout = 30)
{
    mismatch(100000, 50000, 16, 16);
}

Test(tcp, shorter_payload_than_posted_is_a_mismatch, .timeout = 30)
{
    mismatch(1000, 300000, 16, 16);
}

Test(tcp, different_header_length_is_a_mismatch, .timeout = 30)
{
    mismatch(4096, 4096, 32, 16);
}

/* Message 1 mismatches while message 0 (striped over other sockets) may still be in flight:
 * only message 1 reports FX_ERR_MISMATCH, with its header; message 0 completes or reports a
 * broken connection. */
Test(tcp, only_the_mismatched_message_reports_mismatch, .timeout = 30)
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

Test(tcp, closed_peer_fails_the_pending_receive, .timeout = 30)
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
    cr_expect(strstr(why, "127.0.0.1") != NULL || strstr(why, "::1") != NULL,
              "the error names no peer address: '%s'", why);
    pair_fini(&p);
}

/* The listener's IPv4 loopback port from the published address (u8 count, then records of
 * u8 family, 16 address bytes, u16 port little-endian). */
static uint16_t listener_port(const struct fx_tp_addr *addr)
{
    cr_assert_geq(addr->len, 20u);
    return (uint16_t)(addr->data[18] | (addr->data[19] << 8));
}

static int raw_connect(uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd                = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

Test(tcp, garbage_and_silent_connections_never_reach_accept, .timeout = 30)
{
    struct pair p;
    uint16_t port;
    int junk, silent, shortie;
    uint8_t noise[64];
    struct fx_tp_conn *extra = NULL;
    char hello[FX_TP_HELLO_MAX];
    size_t hlen;
    int64_t deadline;

    pair_init(&p, 2, 0, false);
    port = listener_port(&p.addr);
    junk = raw_connect(port);
    pattern(noise, sizeof(noise), 99);
    cr_assert_eq(write(junk, noise, sizeof(noise)), (ssize_t)sizeof(noise));
    silent  = raw_connect(port);
    shortie = raw_connect(port);
    cr_assert_eq(write(shortie, "FXTH", 4), 4);
    close(shortie);
    /* The junk is dropped while a real connection still gets through. */
    pair_connect(&p, "real");
    cr_expect_eq(p.hello_len, 4u);
    deadline = now_ms() + 300;
    while (now_ms() < deadline) {
        hlen = sizeof(hello);
        cr_assert_eq(p.ops->accept(p.lst, &extra, hello, &hlen), FX_INPROGRESS,
                     "a garbage connection was accepted");
        progress_both(&p);
    }
    close(junk);
    close(silent);
    pair_fini(&p);
}

Test(tcp, connect_to_a_closed_listener_fails, .timeout = 30)
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

Test(tcp, unknown_interface_fails_listen, .timeout = 10)
{
    const struct fx_transport_ops *ops = fx_transport_find("tcp");
    struct fx_tp_config cfg = {.ifname = "=no-such-if0", .nsocks = 1, .timeout_ms = 1000};
    struct fx_tp *tp;
    struct fx_tp_listener *lst = NULL;
    struct fx_tp_addr addr;

    cr_assert_not_null(ops);
    cr_assert_eq(ops->init(&cfg, &tp), FX_OK);
    cr_expect_neq(ops->listen(tp, &addr, &lst), FX_OK, "listening on a missing interface");
    if (lst != NULL) {
        ops->listen_close(lst);
    }
    ops->fini(tp);
    cr_expect_null(fx_transport_find("carrier-pigeon"));
}
