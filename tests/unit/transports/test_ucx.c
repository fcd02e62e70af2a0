/*
 * The UCX transport against the ops-table contract (contract.h), plus what is its own: sizes up
 * to 16 MiB (UCX's rendezvous), garbage sent to the listener's tag by a foreign UCP worker, and
 * a peer process that dies, and payload registrations through the registration cache (once per
 * buffer, per operation without it, again after a free). meson runs this file twice: with
 * UCX_TLS=tcp (endpoints in error mode peer) and with UCX_TLS=shm,self (mode none, the peer watched
 * through a pidfd).
 */
#include <criterion/criterion.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include "transports/transport.h"
#include "transports/ucx/ucx_int.h"

#define TP_NAME    "ucx"
#define SUITE_NAME ucx

static bool names_accepted_peer(const char *s)
{
    return strstr(s, "pid ") != NULL;
}

static bool names_connected_peer(const char *s)
{
    return strstr(s, "pid ") != NULL;
}

#include "contract.h"

/* Sizes 0, 1, 8 KiB, 1 MiB and 16 MiB, each checked byte for byte, receives posted first. */
Test(ucx, sizes_up_to_16_mib_arrive_whole, .timeout = 60)
{
    static const size_t lens[] = {0, 1, 8 << 10, 1 << 20, 16 << 20};
    enum { N = sizeof(lens) / sizeof(lens[0]) };
    struct pair p;
    struct fx_tp_req *reqs[2 * N];
    fx_status st[2 * N];
    uint8_t *sbuf[N], *rbuf[N];
    uint64_t shdr[N], rhdr[N];

    pair_init(&p, 1, 0, false);
    pair_connect(&p, "sizes");
    for (int i = 0; i < N; i++) {
        sbuf[i] = malloc(lens[i] + 1);
        rbuf[i] = malloc(lens[i] + 1);
        cr_assert(sbuf[i] != NULL && rbuf[i] != NULL);
        pattern(sbuf[i], lens[i], 100u + (uint32_t)i);
        memset(rbuf[i], 0xa5, lens[i] + 1);
        shdr[i] = lens[i];
        rhdr[i] = 0;
        cr_assert_eq(p.ops->irecv(p.cb, &rhdr[i], 8, rbuf[i], lens[i], &reqs[i]), FX_OK);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_eq(p.ops->isend(p.ca, &shdr[i], 8, sbuf[i], lens[i], &reqs[N + i]), FX_OK);
    }
    drive(&p, reqs, st, 2 * N);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(st[i], FX_OK, "receive of %zu bytes: %s", lens[i], fx_strerror(st[i]));
        cr_expect_eq(st[N + i], FX_OK, "send of %zu bytes: %s", lens[i], fx_strerror(st[N + i]));
        cr_expect_eq(rhdr[i], lens[i], "header of the %zu-byte message", lens[i]);
        cr_expect(memcmp(rbuf[i], sbuf[i], lens[i]) == 0, "%zu-byte payload differs", lens[i]);
        cr_expect_eq(rbuf[i][lens[i]], 0xa5, "the %zu-byte message wrote past its end", lens[i]);
        free(sbuf[i]);
        free(rbuf[i]);
    }
    pair_fini(&p);
}

/* A foreign UCP worker sends garbage with the listener's tag (the transport's address layout:
 * u32 magic, u32 listener id, u32 pid, 24 bytes of host identity, the worker address): it is
 * dropped, and a real connection after it is accepted with its own hello. */
Test(ucx, garbage_at_the_listener_never_reaches_accept, .timeout = 30)
{
    ucp_params_t params    = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_TAG};
    ucp_worker_params_t wp = {.field_mask  = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucp_request_param_t rp = {.op_attr_mask = 0};
    static const char junk[3][40] = {"GET / HTTP/1.0", "FXCX but not really a hello", ""};
    ucp_context_h ctx;
    ucp_worker_h w;
    ucp_ep_h ep;
    ucp_ep_params_t ep_params = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS};
    uint32_t lst_id;
    struct pair p;

    pair_init(&p, 1, 0, false);
    memcpy(&lst_id, p.addr.data + 4, 4);
    cr_assert_eq(ucp_init(&params, NULL, &ctx), UCS_OK);
    cr_assert_eq(ucp_worker_create(ctx, &wp, &w), UCS_OK);
    ep_params.address = (const ucp_address_t *)(p.addr.data + 36);
    cr_assert_eq(ucp_ep_create(w, &ep_params, &ep), UCS_OK);
    for (int i = 0; i < 3; i++) {
        size_t len      = i == 2 ? 0 : strlen(junk[i]);
        void *req       = ucp_tag_send_nbx(ep, junk[i], len, (ucp_tag_t)lst_id << 32 | 1, &rp);
        int64_t until   = now_ms() + DRIVE_MS;
        ucs_status_t st = UCS_PTR_IS_PTR(req) ? UCS_INPROGRESS : UCS_PTR_STATUS(req);

        while (st == UCS_INPROGRESS && now_ms() < until) {
            ucp_worker_progress(w);
            progress_both(&p);
            st = ucp_request_check_status(req);
        }
        cr_assert_eq(st, UCS_OK, "garbage send %d: %s", i, ucs_status_string(st));
        if (UCS_PTR_IS_PTR(req)) {
            ucp_request_free(req);
        }
    }
    expect_no_accept(&p, 300);
    pair_connect(&p, "real");
    cr_expect_eq(p.hello_len, 4u);
    cr_expect(memcmp(p.hello, "real", 4) == 0);
    ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                              .flags        = UCP_EP_CLOSE_FLAG_FORCE};
    void *creq             = ucp_ep_close_nbx(ep, &cp);

    while (UCS_PTR_IS_PTR(creq) && ucp_request_check_status(creq) == UCS_INPROGRESS) {
        ucp_worker_progress(w);
    }
    if (UCS_PTR_IS_PTR(creq)) {
        ucp_request_free(creq);
    }
    ucp_worker_destroy(w);
    ucp_cleanup(ctx);
    pair_fini(&p);
}

/* The connecting process dies (SIGKILL, no goodbye): the survivor's pending receive fails with
 * FX_ERR_PEER_FAILED, naming the peer, within 5 s (a pidfd for a peer on this host, UCX's
 * keep-alive for others). The child is forked before the parent starts UCX (UCX does not
 * support a fork after its initialisation) and reads the address from a pipe. */
Test(ucx, a_killed_peer_fails_the_pending_receive_in_time, .timeout = 30)
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
        struct fx_tp_config cfg            = {.timeout_ms = 5000};
        const struct fx_transport_ops *ops = fx_transport_find(TP_NAME);
        struct fx_tp *tp;
        struct fx_tp_conn *conn = NULL;
        struct fx_tp_addr addr;
        fx_status cs = FX_INPROGRESS;

        if (read(to_child[0], &addr, sizeof(addr)) != (ssize_t)sizeof(addr) ||
            ops->init(&cfg, &tp) != FX_OK) {
            _exit(1);
        }
        while (cs == FX_INPROGRESS) {
            cs = ops->connect(tp, &addr, "child", 5, &conn);
            ops->progress(tp);
        }
        if (cs != FX_OK || write(ready[1], "r", 1) != 1) {
            _exit(1);
        }
        for (;;) { /* until killed, progressing like a live rank */
            ops->progress(tp);
            usleep(1000);
        }
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
        cr_assert_eq(p.ops->progress(p.b), FX_OK); /* the acknowledgement goes out */
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
    cr_expect_eq(s, FX_ERR_PEER_FAILED, "receive after the peer died: %s", fx_strerror(s));
    cr_expect_lt(now_ms() - killed_at, 5000, "noticed after %lld ms",
                 (long long)(now_ms() - killed_at));
    p.ops->conn_error(p.cb, why, sizeof(why));
    cr_expect(strstr(why, "pid ") != NULL, "the error names no peer: '%s'", why);
    close(ready[0]);
    close(to_child[0]);
    close(to_child[1]);
    pair_fini(&p);
}

/* Sends n payloads of len bytes from sbuf into rbuf, one at a time, each checked. */
static void send_from(struct pair *p, const uint8_t *sbuf, uint8_t *rbuf, size_t len, int n)
{
    for (int i = 0; i < n; i++) {
        struct fx_tp_req *reqs[2];
        fx_status st[2];

        memset(rbuf, 0, len);
        cr_assert_eq(p->ops->irecv(p->cb, NULL, 0, rbuf, len, &reqs[0]), FX_OK);
        cr_assert_eq(p->ops->isend(p->ca, NULL, 0, sbuf, len, &reqs[1]), FX_OK);
        drive(p, reqs, st, 2);
        cr_assert_eq(st[0], FX_OK, "receive %d: %s", i, fx_strerror(st[0]));
        cr_assert_eq(st[1], FX_OK, "send %d: %s", i, fx_strerror(st[1]));
        cr_assert_eq(memcmp(sbuf, rbuf, len), 0, "payload %d differs", i);
    }
}

static struct fx_rcache_stats cache_stats(struct fx_tp *tp)
{
    struct fx_rcache_stats st;

    fx_ucx_rcache_stats(tp, &st);
    return st;
}

static void pair_init_cache(struct pair *p, size_t max_bytes)
{
    struct fx_tp_config cfg = {.timeout_ms = 5000, .reg_cache_max = max_bytes};

    pair_init_cfg(p, &cfg);
}

/*
 * Repeated sends from one buffer into one buffer register each once, on each side (with shared
 * memory alone, error mode none, sends go from a copy and register nothing: ucx.c, post).
 */
Test(ucx, repeated_sends_from_one_buffer_register_once, .timeout = 60)
{
    enum { N = 8 };
    size_t len    = 1 << 20;
    uint8_t *sbuf = malloc(len);
    uint8_t *rbuf = malloc(len);
    struct pair p;

    cr_assert(sbuf != NULL && rbuf != NULL);
    pattern(sbuf, len, 7);
    pair_init_cache(&p, (size_t)1 << 30);
    pair_connect(&p, "cache");
    send_from(&p, sbuf, rbuf, len, N);
    if (p.ca->pid_watch) {
        cr_expect_eq(cache_stats(p.a).misses + cache_stats(p.a).hits, 0, "sends from a copy");
    } else {
        cr_expect_eq(cache_stats(p.a).misses, 1, "the send buffer registered once");
        cr_expect_eq(cache_stats(p.a).hits, N - 1);
        cr_expect_eq(cache_stats(p.a).entries, 1, "kept for the next collective");
    }
    cr_expect_eq(cache_stats(p.b).misses, 1, "the receive buffer registered once");
    cr_expect_eq(cache_stats(p.b).hits, N - 1);
    cr_expect_eq(cache_stats(p.b).entries, 1, "kept for the next collective");
    pair_fini(&p);
    free(sbuf);
    free(rbuf);
}

/* FX_REG_CACHE_MAX=0: every payload registered for its operation and deregistered after. */
Test(ucx, without_the_cache_each_operation_registers, .timeout = 60)
{
    enum { N = 4 };
    size_t len    = 1 << 20;
    uint8_t *sbuf = malloc(len);
    uint8_t *rbuf = malloc(len);
    struct pair p;

    cr_assert(sbuf != NULL && rbuf != NULL);
    pattern(sbuf, len, 8);
    pair_init_cache(&p, 0);
    pair_connect(&p, "nocache");
    send_from(&p, sbuf, rbuf, len, N);
    cr_expect_eq(cache_stats(p.a).misses, p.ca->pid_watch ? 0 : N);
    cr_expect_eq(cache_stats(p.b).misses, N);
    cr_expect_eq(cache_stats(p.a).hits, 0);
    cr_expect_eq(cache_stats(p.a).entries, 0, "nothing held after completion");
    cr_expect_eq(cache_stats(p.b).entries, 0);
    pair_fini(&p);
    free(sbuf);
    free(rbuf);
}

/* Payloads below UCX_REG_MIN go without a memory handle (UCX copies them). */
Test(ucx, small_payloads_are_not_registered, .timeout = 60)
{
    uint8_t sbuf[UCX_REG_MIN - 1];
    uint8_t rbuf[UCX_REG_MIN - 1];
    struct pair p;

    pattern(sbuf, sizeof(sbuf), 9);
    pair_init_cache(&p, (size_t)1 << 30);
    pair_connect(&p, "small");
    send_from(&p, sbuf, rbuf, sizeof(sbuf), 3);
    cr_expect_eq(cache_stats(p.a).misses + cache_stats(p.a).hits, 0);
    cr_expect_eq(cache_stats(p.b).misses + cache_stats(p.b).hits, 0);
    pair_fini(&p);
}

/*
 * A receive buffer freed and allocated again (malloc's own mmap, so free unmaps it) is
 * registered anew, never served the registration of the pages that went.
 */
Test(ucx, a_freed_receive_buffer_is_registered_again, .timeout = 60)
{
    size_t len = 4 << 20;
    uintptr_t page;
    uint8_t *rbuf;
    uint8_t *sbuf;
    struct pair p;

    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    sbuf = malloc(len);
    rbuf = malloc(len);
    cr_assert(sbuf != NULL && rbuf != NULL);
    pair_init_cache(&p, (size_t)1 << 30);
    pair_connect(&p, "free");
    pattern(sbuf, len, 10);
    send_from(&p, sbuf, rbuf, len, 2);
    page = ((uintptr_t)rbuf + 4095) & ~(uintptr_t)4095;
    free(rbuf);
    if (msync((void *)page, 4096, MS_ASYNC) == 0) {
        pair_fini(&p);
        cr_skip_test("the allocator kept the freed buffer mapped (a sanitizer's quarantine)");
    }
    rbuf = malloc(len);
    cr_assert_not_null(rbuf);
    pattern(sbuf, len, 11);
    send_from(&p, sbuf, rbuf, len, 1);
    cr_expect_eq(cache_stats(p.b).invalidations, 1);
    cr_expect_eq(cache_stats(p.b).misses, 2, "registered again after the free");
    cr_expect_eq(cache_stats(p.b).hits, 1);
    pair_fini(&p);
    free(sbuf);
    free(rbuf);
}
