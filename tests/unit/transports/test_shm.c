/*
 * The shared-memory transport against the ops-table contract (contract.h), plus what is its
 * own: garbage on the listening socket, a peer process that dies, and no trace in /dev/shm.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "transports/transport.h"

#define TP_NAME    "shm"
#define SUITE_NAME shm

static bool names_accepted_peer(const char *s)
{
    return strstr(s, "pid ") != NULL;
}

static bool names_connected_peer(const char *s)
{
    return s[0] == '@' || strstr(s, "pid ") != NULL;
}

#include "contract.h"

/* A raw SEQPACKET connection to the listener's abstract name (u32 magic, u8 length, name). */
static int raw_connect(const struct fx_tp_addr *addr)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len             = addr->data[4];
    int fd                 = socket(AF_UNIX, SOCK_SEQPACKET, 0);

    cr_assert_geq(fd, 0);
    memcpy(sun.sun_path + 1, addr->data + 5, len);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sun,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)),
                 0, "connect: %s", strerror(errno));
    return fd;
}

Test(shm, garbage_and_silent_connections_never_reach_accept, .timeout = 30)
{
    struct pair p;
    int junk, silent;

    pair_init(&p, 1, 0, false);
    junk = raw_connect(&p.addr);
    cr_assert_eq(write(junk, "FXSH but not really, and no descriptors", 39), 39);
    silent = raw_connect(&p.addr);
    pair_connect(&p, "real");
    cr_expect_eq(p.hello_len, 4u);
    expect_no_accept(&p, 300);
    close(junk);
    close(silent);
    pair_fini(&p);
}

/* The connecting process dies (SIGKILL, no goodbye): the survivor's pending receive fails with
 * FX_ERR_PEER_FAILED, naming the peer, well within 2 s. */
Test(shm, a_killed_peer_fails_the_pending_receive_quickly, .timeout = 30)
{
    struct pair p;
    struct fx_tp_req *req;
    static uint8_t buf[1 << 16];
    fx_status s = FX_INPROGRESS;
    int64_t deadline, killed_at;
    int ready[2];
    char c;
    char why[256];
    pid_t pid;

    pair_init(&p, 1, 0, false);
    cr_assert_eq(pipe(ready), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct fx_tp_config cfg = {.timeout_ms = 5000};
        struct fx_tp *tp;
        struct fx_tp_conn *conn = NULL;

        if (p.ops->init(&cfg, &tp) != FX_OK ||
            p.ops->connect(tp, &p.addr, "child", 5, &conn) != FX_OK) {
            _exit(1);
        }
        if (write(ready[1], "r", 1) != 1) {
            _exit(1);
        }
        pause(); /* until killed */
        _exit(0);
    }
    cr_assert_eq(read(ready[0], &c, 1), 1, "the child could not connect");
    deadline = now_ms() + DRIVE_MS;
    while (p.cb == NULL && now_ms() < deadline) {
        p.hello_len = sizeof(p.hello);
        if (p.ops->accept(p.lst, &p.cb, p.hello, &p.hello_len) != FX_OK) {
            p.cb = NULL;
        }
    }
    cr_assert_not_null(p.cb, "the child's connection never arrived");
    cr_assert_eq(p.ops->irecv(p.cb, NULL, 0, buf, sizeof(buf), &req), FX_OK);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    killed_at = now_ms();
    while (s == FX_INPROGRESS && now_ms() < deadline) {
        cr_assert_eq(p.ops->progress(p.b), FX_OK);
        s = p.ops->test(req);
    }
    cr_expect_eq(s, FX_ERR_PEER_FAILED, "receive after the peer died: %s", fx_strerror(s));
    cr_expect_lt(now_ms() - killed_at, 2000, "noticed after %lld ms",
                 (long long)(now_ms() - killed_at));
    p.ops->conn_error(p.cb, why, sizeof(why));
    cr_expect(strstr(why, "pid ") != NULL, "the error names no peer: '%s'", why);
    close(ready[0]);
    close(ready[1]);
    pair_fini(&p);
}

/* Segments are memfds: nothing of the job ever appears in /dev/shm. */
Test(shm, no_trace_in_dev_shm, .timeout = 30)
{
    struct pair p;
    DIR *d;
    struct dirent *e;
    int found = 0;

    pair_init(&p, 1, 0, false);
    pair_connect(&p, "trace");
    d = opendir("/dev/shm");
    if (d != NULL) {
        while ((e = readdir(d)) != NULL) {
            found += strstr(e->d_name, "fabricx") != NULL;
        }
        closedir(d);
    }
    cr_expect_eq(found, 0, "%d libfabricx entries in /dev/shm", found);
    pair_fini(&p);
}

/* Messages that fit one slot go with only the header words that changed since the last such
 * message (docs/shm.md): headers of every length from 0 to 64 bytes, some words changing and
 * some not, small messages interleaved with framed ones (payloads over 64 KiB, which do not
 * touch the reference header), must all arrive exactly, in order. */
Test(shm, compact_frames_carry_changing_headers_exactly, .timeout = 60)
{
    enum { NMSG = 240 };
    static const size_t lens[] = {0, 8, 100, 4096, 65000, 70000, 1, 300 << 10};
    struct pair p;
    struct fx_tp_req *reqs[2 * NMSG];
    fx_status st[2 * NMSG];
    uint8_t *sbuf[NMSG], *rbuf[NMSG];
    uint8_t shdr[NMSG][FX_TP_HDR_MAX], rhdr[NMSG][FX_TP_HDR_MAX + 8];
    size_t hlen[NMSG];
    uint32_t x = 12345;

    pair_init(&p, 1, 0, false);
    pair_connect(&p, "compact");
    for (int m = 0; m < NMSG; m++) {
        size_t len = lens[m % (sizeof(lens) / sizeof(lens[0]))];

        hlen[m] = (size_t)(m * 7 % (FX_TP_HDR_MAX + 1));
        if (m > 0) {
            memcpy(shdr[m], shdr[m - 1], FX_TP_HDR_MAX);
        } else {
            memset(shdr[m], 0x11, FX_TP_HDR_MAX);
        }
        for (int k = 0; k < m % 4; k++) { /* 0 to 3 bytes change, in random words */
            x = x * 1103515245u + 12345u;
            shdr[m][(x >> 8) % FX_TP_HDR_MAX] ^= (uint8_t)(1 + (x >> 20) % 255);
        }
        sbuf[m] = malloc(len + 1);
        rbuf[m] = malloc(len + 1);
        cr_assert(sbuf[m] != NULL && rbuf[m] != NULL);
        pattern(sbuf[m], len, (uint32_t)m + 99);
        memset(rbuf[m], 0xa5, len + 1);
        memset(rhdr[m], 0xa5, sizeof(rhdr[m]));
        cr_assert_eq(p.ops->irecv(p.cb, rhdr[m], hlen[m], rbuf[m], len, &reqs[2 * m]), FX_OK);
        cr_assert_eq(p.ops->isend(p.ca, shdr[m], hlen[m], sbuf[m], len, &reqs[2 * m + 1]), FX_OK);
        if (m % 16 == 15) { /* keep the ring from filling with unreceived messages */
            drive(&p, reqs + 2 * (m - 15), st, 32);
        }
    }
    for (int m = 0; m < NMSG; m++) {
        size_t len = lens[m % (sizeof(lens) / sizeof(lens[0]))];

        cr_expect(memcmp(rhdr[m], shdr[m], hlen[m]) == 0, "header of message %d (%zu bytes)", m,
                  hlen[m]);
        cr_expect_eq(rhdr[m][hlen[m]], 0xa5, "message %d wrote past its %zu-byte header", m,
                     hlen[m]);
        cr_expect(memcmp(rbuf[m], sbuf[m], len) == 0, "payload of message %d (%zu bytes)", m, len);
        cr_expect_eq(rbuf[m][len], 0xa5, "message %d wrote past its %zu bytes", m, len);
        free(sbuf[m]);
        free(rbuf[m]);
    }
    pair_fini(&p);
}
