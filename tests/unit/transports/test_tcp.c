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

#define TP_NAME    "tcp"
#define SUITE_NAME tcp

static bool names_accepted_peer(const char *s)
{
    return strstr(s, "127.0.0.1:") != NULL || strstr(s, "::1") != NULL;
}

static bool names_connected_peer(const char *s)
{
    return strchr(s, ':') != NULL;
}

#include "contract.h"

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
    expect_no_accept(&p, 300);
    close(junk);
    close(silent);
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
