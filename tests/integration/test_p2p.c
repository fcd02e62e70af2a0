/*
 * Point-to-point messages over real rank processes: fx_send and fx_recv between every pair of
 * 1 to 6 ranks (so connections are made on demand to ranks that are not ring neighbours), in
 * order; fx_sendrecv around rings and between pairs, 64 MiB each way at once; many messages of
 * distinct contents in order; empty messages; every datatype bitwise; count and datatype
 * mismatches; the non-blocking forms (isend before irecv on both sides, many outstanding calls
 * waited for newest first, fx_wait timeouts, a mismatch inside a batch); a peer that dies or
 * leaves; bad arguments; collectives after p2p traffic.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "refdata.h"

#define BIG_BYTES           (64u << 20) /* the pair exchange: 64 MiB each way */
#define CHUNK_ELEMS         131072      /* float elements in the default 512 KiB chunk */
#define MISMATCH_TIMEOUT_MS 10000
#define MISMATCH_BOUND_MS   3000

/* ---- data: each message's bytes follow from (seed, sender, receiver, index) ---- */

static uint64_t msg_seed(uint64_t seed, int from, int to, size_t index)
{
    return ref_mix(seed ^ (uint64_t)from << 48 ^ (uint64_t)to << 40 ^ (uint64_t)index << 8);
}

static void fill(void *buf, size_t bytes, uint64_t seed)
{
    unsigned char *p = buf;
    size_t i         = 0;

    for (; i + 8 <= bytes; i += 8) {
        uint64_t v = ref_mix(seed + i);

        memcpy(p + i, &v, 8);
    }
    for (; i < bytes; i++) {
        p[i] = (unsigned char)(ref_mix(seed + i) >> 56);
    }
}

/* Number of bytes of buf that differ from fill(seed); logs the first. */
static size_t check(struct harness_child *c, const void *buf, size_t bytes, uint64_t seed,
                    const char *what)
{
    unsigned char *want = malloc(bytes ? bytes : 1);
    size_t wrong        = 0;

    if (want == NULL) {
        harness_logf(c, "%s: out of memory for the check", what);
        return 1;
    }
    fill(want, bytes, seed);
    for (size_t i = 0; i < bytes; i++) {
        if (((const unsigned char *)buf)[i] != want[i] && wrong++ == 0) {
            harness_logf(c, "%s: first wrong byte at %zu of %zu: got 0x%02x want 0x%02x", what, i,
                         bytes, ((const unsigned char *)buf)[i], want[i]);
        }
    }
    free(want);
    c->res->wrong += (long long)wrong;
    return wrong;
}

/* Records a failed call and returns 1 (the communicator is broken: the child stops). */
static int failed(struct harness_child *c, fx_comm_t comm, fx_status status, const char *what)
{
    harness_set_status(c, comm, status);
    harness_logf(c, "%s: %s", what, fx_strerror(status));
    return 1;
}

/* Sends count floats of message (from me to `to`, index) and returns 0, or 1 on failure. */
static int send_msg(fx_comm_t comm, struct harness_child *c, int to, size_t count, size_t index,
                    uint64_t seed)
{
    size_t bytes = count * sizeof(float);
    void *buf    = malloc(bytes ? bytes : 1);
    char what[96];
    fx_status status;

    if (buf == NULL) {
        return failed(c, comm, FX_ERR_NO_MEMORY, "send buffer");
    }
    fill(buf, bytes, msg_seed(seed, c->index, to, index));
    status = fx_send(buf, count, FX_FLOAT32, to, comm);
    free(buf);
    snprintf(what, sizeof(what), "fx_send #%zu of %zu floats to rank %d", index, count, to);
    return status == FX_OK ? 0 : failed(c, comm, status, what);
}

/* Receives message (from `from` to me, index) of count floats and checks it. */
static int recv_msg(fx_comm_t comm, struct harness_child *c, int from, size_t count, size_t index,
                    uint64_t seed)
{
    size_t bytes = count * sizeof(float);
    void *buf    = malloc(bytes + 4);
    char what[96];
    fx_status status;

    if (buf == NULL) {
        return failed(c, comm, FX_ERR_NO_MEMORY, "receive buffer");
    }
    memset(buf, 0xcd, bytes + 4);
    status = fx_recv(buf, count, FX_FLOAT32, from, comm);
    snprintf(what, sizeof(what), "fx_recv #%zu of %zu floats from rank %d", index, count, from);
    if (status == FX_OK) {
        check(c, buf, bytes, msg_seed(seed, from, c->index, index), what);
        if (memcmp((char *)buf + bytes, "\xcd\xcd\xcd\xcd", 4) != 0) {
            c->res->wrong++;
            harness_logf(c, "%s: written past the message", what);
        }
    }
    free(buf);
    return status == FX_OK ? 0 : failed(c, comm, status, what);
}

/* A float SUM allreduce and an allgather, checked: the communicator still runs collectives. */
static int collectives_still_work(fx_comm_t comm, struct harness_child *c)
{
    struct ref_case k = {FX_FLOAT32, FX_SUM, 4099, c->nranks, 77};
    float *send       = malloc(k.count * sizeof(float));
    float *recv       = malloc(k.count * sizeof(float) * (size_t)c->nranks);
    uint64_t *expect  = malloc(k.count * sizeof(uint64_t) * 2);
    fx_status status  = FX_ERR_NO_MEMORY;
    char first[160];
    size_t wrong = 0;

    if (send != NULL && recv != NULL && expect != NULL) {
        ref_fill(&k, c->index, send);
        status = fx_allreduce(send, recv, k.count, k.dt, k.op, comm);
    }
    if (status == FX_OK) {
        ref_expect(&k, expect, expect + k.count);
        wrong = ref_compare(&k, recv, expect, first, sizeof(first));
        ref_fill_gather(&k, c->index, send);
        status = fx_allgather(send, recv, k.count, k.dt, comm);
    }
    if (status == FX_OK) {
        wrong += ref_check_gather(&k, recv, first, sizeof(first));
    }
    if (wrong != 0) {
        c->res->wrong += (long long)wrong;
        harness_logf(c, "collectives after p2p: %zu wrong, %s", wrong, first);
    }
    free(send);
    free(recv);
    free(expect);
    return status == FX_OK ? 0 : failed(c, comm, status, "collectives after p2p");
}

/* ---- running and judging ---- */

static void expect_clean(const struct harness_run_info *info, const char *what)
{
    cr_expect(!info->deadline_hit, "%s: the run hit its deadline after %.0f ms", what,
              info->elapsed_ms);
    for (int i = 0; i < info->nprocs; i++) {
        const struct harness_result *res = &info->shared->res[i];

        cr_expect_eq(res->init_status, FX_OK, "%s rank %d: init returned %d (%s): %s", what, i,
                     res->init_status, fx_strerror(res->init_status), res->err);
        cr_expect_eq(res->status, FX_OK, "%s rank %d: status %d (%s): %s\n%s", what, i, res->status,
                     fx_strerror(res->status), res->err, res->log);
        cr_expect_eq(res->wrong, 0, "%s rank %d: %lld wrong\n%s", what, i, res->wrong, res->log);
        cr_expect(res->exit_code == 0 && res->term_signal == 0,
                  "%s rank %d: exit code %d, signal %d%s", what, i, res->exit_code,
                  res->term_signal, res->killed ? " (killed by the harness)" : "");
    }
}

static void run_clean(int nranks, harness_rank_fn fn, void *arg, int deadline_ms, const char *what)
{
    struct harness_opts opts = {
        .nranks = nranks, .deadline_ms = deadline_ms, .sync_destroy = 1, .rank_fn = fn, .arg = arg};
    struct harness_run_info info;

    cr_assert_eq(harness_run(&opts, &info), 0, "%s: harness could not start", what);
    expect_clean(&info, what);
    fprintf(stderr, "%s: %.0f ms, %lld messages on rank 0\n", what, info.elapsed_ms,
            info.shared->res[0].ops);
    harness_free(&info);
}

/* Ends a child that ran clean: the final status is FX_OK. */
static int done(fx_comm_t comm, struct harness_child *c)
{
    harness_set_status(c, comm, FX_OK);
    return c->res->wrong != 0;
}

/* ---- every pair, in order ---- */

/* Every ordered pair (a, b) in turn: a sends b one message (sizes from 0 to three chunks),
 * then b answers a; ranks outside the pair go on to the next. Then collectives. */
static int every_pair(fx_comm_t comm, struct harness_child *c)
{
    static const size_t sizes[] = {1, 0, 1021, CHUNK_ELEMS, CHUNK_ELEMS + 1, 3 * CHUNK_ELEMS - 1};
    int n                       = c->nranks;
    size_t index                = 0;

    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++, index++) {
            size_t count = sizes[index % 6];
            int err      = 0;

            if (a == b || (c->index != a && c->index != b)) {
                continue;
            }
            if (c->index == a) {
                err = send_msg(comm, c, b, count, index, 1) || recv_msg(comm, c, b, 7, index, 2);
            } else {
                err = recv_msg(comm, c, a, count, index, 1) || send_msg(comm, c, a, 7, index, 2);
            }
            if (err) {
                return 1;
            }
            c->res->ops += 2;
        }
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

static int nranks_1_to_6[] = {1, 2, 3, 4, 5, 6};

ParameterizedTestParameters(p2p, every_pair_exchanges_in_order_connecting_on_demand)
{
    return cr_make_param_array(int, nranks_1_to_6, 6);
}

ParameterizedTest(int *nranks, p2p, every_pair_exchanges_in_order_connecting_on_demand,
                  .timeout = 120, .fini = harness_kill_all)
{
    char what[64];

    snprintf(what, sizeof(what), "every pair of %d ranks", *nranks);
    run_clean(*nranks, every_pair, NULL, 100000, what);
}

/* ---- connections only where messages go ---- */

/* Sockets this process holds: each data connection holds at least one at each end (a TCP
 * stream, or the shared-memory connection's UNIX socket). */
static int count_sockets(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (d == NULL) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        char path[300];
        char target[64];
        ssize_t len;

        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        n += len > 7 && strncmp(target, "socket:", 7) == 0;
    }
    closedir(d);
    return n;
}

/* On one host the ring is rank order: rank r sends to r + 1 and receives from r - 1 over the
 * connections made at init. Messages along the ring must open no socket; messages to r + 2 (no
 * neighbour of 4 ranks) must open one connection out and accept one in. */
static int connects_on_demand_only(fx_comm_t comm, struct harness_child *c)
{
    int n        = c->nranks;
    float out    = (float)c->index;
    float in[2]  = {-1, -1};
    int at_init  = count_sockets();
    int far      = (c->index + 2) % n;
    int on_ring  = 0;
    int off_ring = 0;
    fx_status s  = fx_sendrecv(&out, 1, (c->index + 1) % n, &in[0], 1, (c->index + n - 1) % n,
                               FX_FLOAT32, comm);

    /* Then blocking calls around the ring, even ranks sending first (the shared-memory
     * transport may complete a send only once the receive is posted). */
    for (int half = 0; half < 2 && s == FX_OK; half++) {
        if ((c->index + half) % 2 == 0) {
            s = fx_send(&out, 1, FX_FLOAT32, (c->index + 1) % n, comm);
        } else {
            s = fx_recv(&in[0], 1, FX_FLOAT32, (c->index + n - 1) % n, comm);
        }
    }
    on_ring = count_sockets();
    if (s == FX_OK) {
        s = fx_sendrecv(&out, 1, far, &in[1], 1, far, FX_FLOAT32, comm);
    }
    off_ring = count_sockets();
    if (s != FX_OK) {
        return failed(c, comm, s, "messages along and across the ring");
    }
    /* UCX opens and closes sockets of its own (its tcp lanes are wired up by its progress
     * thread after init, its shared memory signals through sockets), and the fake verbs
     * provider's wire is UNIX sockets that its NIC threads accept in their own time, so over
     * FX_TRANSPORT=ucx or verbs only the messages are checked. */
    if (getenv("FX_TRANSPORT") != NULL && (strcmp(getenv("FX_TRANSPORT"), "ucx") == 0 ||
                                           strcmp(getenv("FX_TRANSPORT"), "verbs") == 0)) {
        at_init = on_ring = 0;
        off_ring          = 2;
    }
    if (at_init < 0 || on_ring != at_init || off_ring < on_ring + 2 ||
        in[0] != (float)((c->index + n - 1) % n) || in[1] != (float)far) {
        c->res->wrong++;
        harness_logf(c,
                     "sockets: %d at init, %d after ring messages (want the same), %d after "
                     "messages to rank %d (want 2 more); got %g and %g",
                     at_init, on_ring, off_ring, far, (double)in[0], (double)in[1]);
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, only_messages_off_the_ring_open_connections, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks       = 4,
                                .deadline_ms  = 50000,
                                .one_host     = 1, /* the ring is rank order */
                                .sync_destroy = 1,
                                .rank_fn      = connects_on_demand_only};
    struct harness_run_info info;

    setenv("FX_SOCKET_IFNAME", "lo", 1); /* one host: loopback, whatever the set-up */
    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    expect_clean(&info, "connections on demand only");
    harness_free(&info);
}

/* ---- sendrecv: ring shifts and pair exchanges ---- */

/* Every rank sends to rank + shift and receives from rank - shift, for every shift, with
 * different send and receive counts per shift (the receive count is the sender's). */
static int ring_shifts(fx_comm_t comm, struct harness_child *c)
{
    int n = c->nranks;

    for (int shift = 1; shift < n; shift++) {
        int to        = (c->index + shift) % n;
        int from      = (c->index - shift + n) % n;
        size_t scount = 100003 + (size_t)c->index * 1000 + (size_t)shift;
        size_t rcount = 100003 + (size_t)from * 1000 + (size_t)shift;
        float *send   = malloc(scount * sizeof(float));
        float *recv   = malloc(rcount * sizeof(float));
        fx_status status;

        if (send == NULL || recv == NULL) {
            free(send);
            free(recv);
            return failed(c, comm, FX_ERR_NO_MEMORY, "buffers");
        }
        fill(send, scount * sizeof(float), msg_seed(3, c->index, to, (size_t)shift));
        status = fx_sendrecv(send, scount, to, recv, rcount, from, FX_FLOAT32, comm);
        if (status == FX_OK) {
            check(c, recv, rcount * sizeof(float), msg_seed(3, from, c->index, (size_t)shift),
                  "sendrecv ring shift");
            c->res->ops++;
        }
        free(send);
        free(recv);
        if (status != FX_OK) {
            return failed(c, comm, status, "fx_sendrecv ring shift");
        }
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

static int nranks_ring[] = {2, 3, 5};

ParameterizedTestParameters(p2p, sendrecv_ring_shifts_deliver_to_every_rank)
{
    return cr_make_param_array(int, nranks_ring, 3);
}

ParameterizedTest(int *nranks, p2p, sendrecv_ring_shifts_deliver_to_every_rank, .timeout = 120,
                  .fini = harness_kill_all)
{
    char what[64];

    snprintf(what, sizeof(what), "sendrecv ring shifts on %d ranks", *nranks);
    run_clean(*nranks, ring_shifts, NULL, 100000, what);
}

/* Ranks pair up (rank ^ 1, then, with 4 ranks, rank ^ 2: not ring neighbours) and both sides
 * of a pair send each other 64 MiB at once: on shared memory a large send completes only once
 * the peer has read it, so this deadlocks unless both directions progress independently. */
static int pair_exchange(fx_comm_t comm, struct harness_child *c)
{
    size_t count = BIG_BYTES / sizeof(float);
    float *send  = malloc(BIG_BYTES);
    float *recv  = malloc(BIG_BYTES);
    int err      = 0;

    if (send == NULL || recv == NULL) {
        free(send);
        free(recv);
        return failed(c, comm, FX_ERR_NO_MEMORY, "64 MiB buffers");
    }
    for (int mask = 1; mask < c->nranks && !err; mask <<= 1) {
        int peer = c->index ^ mask;
        fx_status status;

        fill(send, BIG_BYTES, msg_seed(4, c->index, peer, (size_t)mask));
        status = fx_sendrecv(send, count, peer, recv, count, peer, FX_FLOAT32, comm);
        if (status != FX_OK) {
            err = failed(c, comm, status, "fx_sendrecv of 64 MiB with the pair's other rank");
        } else {
            check(c, recv, BIG_BYTES, msg_seed(4, peer, c->index, (size_t)mask), "64 MiB pair");
            c->res->ops++;
        }
    }
    free(send);
    free(recv);
    return err || collectives_still_work(comm, c) || done(comm, c);
}

static int nranks_pairs[] = {2, 4};

ParameterizedTestParameters(p2p, sendrecv_pairs_exchange_64_mib_without_deadlock)
{
    return cr_make_param_array(int, nranks_pairs, 2);
}

ParameterizedTest(int *nranks, p2p, sendrecv_pairs_exchange_64_mib_without_deadlock, .timeout = 150,
                  .fini = harness_kill_all)
{
    char what[64];

    snprintf(what, sizeof(what), "64 MiB pair exchange on %d ranks", *nranks);
    run_clean(*nranks, pair_exchange, NULL, 130000, what);
}

/* ---- order, empty messages, datatypes ---- */

#define NMESSAGES 300

/* Message i's size: small and varied, an empty one now and then, past a chunk every 50th. */
static size_t stream_count(size_t i)
{
    if (i % 50 == 49) {
        return CHUNK_ELEMS + 17 * i;
    }
    return i % 13 == 5 ? 0 : (i * 7919) % 2053 + 1;
}

/* Rank 0 sends NMESSAGES messages to each other rank, interleaved between them; each receiver
 * checks that message i is the i-th one sent to it. */
static int message_stream(fx_comm_t comm, struct harness_child *c)
{
    for (size_t i = 0; i < NMESSAGES; i++) {
        for (int r = 1; r < c->nranks; r++) {
            int err = 0;

            if (c->index == 0) {
                err = send_msg(comm, c, r, stream_count(i + (size_t)r), i, 5);
            } else if (c->index == r) {
                err = recv_msg(comm, c, 0, stream_count(i + (size_t)r), i, 5);
            }
            if (err) {
                return 1;
            }
            c->res->ops += c->index == 0 || c->index == r;
        }
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, many_messages_arrive_in_order, .timeout = 120, .fini = harness_kill_all)
{
    run_clean(3, message_stream, NULL, 100000, "300 messages in order to each of 2 ranks");
}

/* One step of the empty-message exchange: the lower rank of the pair calls low, the other high. */
#define PAIR_STEP(low, high) (c->index < peer ? (low) : (high))

/* Pairs 0-2 and 1-3 (not ring neighbours): empty messages with NULL buffers and into a buffer
 * that must stay untouched, in fx_send/fx_recv and in fx_sendrecv with either count 0, then a
 * non-empty message that must still be the next one of the pair. */
static int empty_messages(fx_comm_t comm, struct harness_child *c)
{
    int peer    = c->index ^ 2;
    float mine  = 10.0f + (float)c->index;
    float got   = -1;
    float still = -1;
    fx_status s;

    s = PAIR_STEP(fx_send(NULL, 0, FX_FLOAT32, peer, comm),
                  fx_recv(&still, 0, FX_FLOAT32, peer, comm));
    if (s == FX_OK) {
        s = PAIR_STEP(fx_recv(&still, 0, FX_FLOAT32, peer, comm),
                      fx_send(NULL, 0, FX_FLOAT32, peer, comm));
    }
    if (s == FX_OK) {
        s = fx_sendrecv(NULL, 0, peer, NULL, 0, peer, FX_FLOAT32, comm);
    }
    if (s == FX_OK) {
        s = PAIR_STEP(fx_sendrecv(NULL, 0, peer, &got, 1, peer, FX_FLOAT32, comm),
                      fx_sendrecv(&mine, 1, peer, &still, 0, peer, FX_FLOAT32, comm));
    }
    if (s == FX_OK) {
        s = PAIR_STEP(fx_sendrecv(&mine, 1, peer, &still, 0, peer, FX_FLOAT32, comm),
                      fx_sendrecv(NULL, 0, peer, &got, 1, peer, FX_FLOAT32, comm));
    }
    if (s != FX_OK) {
        return failed(c, comm, s, "empty messages");
    }
    if (got != 10.0f + (float)peer || still != -1) {
        c->res->wrong++;
        harness_logf(c, "got %g from rank %d (want %g); an empty receive left %g (want -1)",
                     (double)got, peer, 10.0 + peer, (double)still);
    }
    if (PAIR_STEP(send_msg(comm, c, peer, 1021, 0, 6), recv_msg(comm, c, peer, 1021, 0, 6))) {
        return 1;
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, empty_messages_are_matched_like_others, .timeout = 60, .fini = harness_kill_all)
{
    run_clean(4, empty_messages, NULL, 50000, "empty messages on 4 ranks");
}

/* Every datatype, small and past a chunk: random bits (NaN and infinity patterns included for
 * the floating-point types) arrive bitwise, rank 0 to rank 2 and back with sendrecv. */
static int every_datatype(fx_comm_t comm, struct harness_child *c)
{
    static const size_t counts[] = {1, 1021, 3 * CHUNK_ELEMS + 5};
    int peer                     = c->index == 0 ? 2 : 0;

    if (c->index == 1) {
        return collectives_still_work(comm, c) || done(comm, c);
    }
    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (size_t k = 0; k < 3; k++) {
            size_t count = counts[k] + (size_t)dt;
            size_t bytes = count * fx_datatype_size((fx_datatype)dt);
            size_t index = (size_t)dt * 3 + k;
            void *send   = malloc(bytes);
            void *recv   = malloc(bytes);
            fx_status s  = FX_ERR_NO_MEMORY;

            if (send != NULL && recv != NULL) {
                fill(send, bytes, msg_seed(8, c->index, peer, index));
                memset(recv, 0, bytes);
                s = fx_sendrecv(send, count, peer, recv, count, peer, (fx_datatype)dt, comm);
            }
            if (s == FX_OK) {
                check(c, recv, bytes, msg_seed(8, peer, c->index, index),
                      fx_datatype_name((fx_datatype)dt));
                c->res->ops++;
            }
            free(send);
            free(recv);
            if (s != FX_OK) {
                return failed(c, comm, s, fx_datatype_name((fx_datatype)dt));
            }
        }
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, every_datatype_arrives_bitwise, .timeout = 60, .fini = harness_kill_all)
{
    run_clean(3, every_datatype, NULL, 50000, "every datatype, rank 0 <-> rank 2");
}

/* Uneven traffic: rank 0 sends rank 3 five messages, rank 1 sends rank 2 one, and nobody else
 * talks; then collectives, whose operation numbers must not count the messages. */
static int uneven_then_collectives(fx_comm_t comm, struct harness_child *c)
{
    int err = 0;

    for (size_t i = 0; i < 5 && !err; i++) {
        if (c->index == 0) {
            err = send_msg(comm, c, 3, 333 + i, i, 9);
        } else if (c->index == 3) {
            err = recv_msg(comm, c, 0, 333 + i, i, 9);
        }
    }
    if (!err && c->index == 1) {
        err = send_msg(comm, c, 2, 5000, 0, 9);
    } else if (!err && c->index == 2) {
        err = recv_msg(comm, c, 1, 5000, 0, 9);
    }
    for (int round = 0; round < 3 && !err; round++) {
        err = collectives_still_work(comm, c);
    }
    return err || done(comm, c);
}

Test(p2p, collectives_work_after_uneven_p2p_traffic, .timeout = 60, .fini = harness_kill_all)
{
    run_clean(4, uneven_then_collectives, NULL, 50000, "collectives after uneven p2p");
}

/* ---- non-blocking ---- */

/* As the pair exchange, but each rank starts its fx_isend of 64 MiB before its fx_irecv from the
 * same peer and waits for the receive first: on shared memory a large send completes only once
 * the peer has read it, so this hangs unless the two calls run at once. */
static int isend_first(fx_comm_t comm, struct harness_child *c)
{
    size_t count = BIG_BYTES / sizeof(float);
    float *send  = malloc(BIG_BYTES);
    float *recv  = malloc(BIG_BYTES);
    int err      = 0;

    if (send == NULL || recv == NULL) {
        free(send);
        free(recv);
        return failed(c, comm, FX_ERR_NO_MEMORY, "64 MiB buffers");
    }
    for (int mask = 1; mask < c->nranks && !err; mask <<= 1) {
        int peer = c->index ^ mask;
        fx_request_t sr;
        fx_request_t rr;
        fx_status status;

        fill(send, BIG_BYTES, msg_seed(6, c->index, peer, (size_t)mask));
        status = fx_isend(send, count, FX_FLOAT32, peer, comm, &sr);
        if (status != FX_OK) {
            err = failed(c, comm, status, "fx_isend of 64 MiB");
            break;
        }
        status = fx_irecv(recv, count, FX_FLOAT32, peer, comm, &rr);
        if (status != FX_OK) {
            fx_wait(sr, 1000);
            err = failed(c, comm, status, "fx_irecv of 64 MiB");
            break;
        }
        status = fx_wait(rr, -1);
        if (status != FX_OK) {
            fx_wait(sr, 1000);
            err = failed(c, comm, status, "waiting for the fx_irecv of 64 MiB");
            break;
        }
        status = fx_wait(sr, -1);
        if (status != FX_OK) {
            err = failed(c, comm, status, "waiting for the fx_isend of 64 MiB");
        } else {
            check(c, recv, BIG_BYTES, msg_seed(6, peer, c->index, (size_t)mask), "64 MiB isend");
            c->res->ops += 2;
        }
    }
    free(send);
    free(recv);
    return err || collectives_still_work(comm, c) || done(comm, c);
}

ParameterizedTestParameters(p2p, isend_before_irecv_both_ways_64_mib_without_deadlock)
{
    return cr_make_param_array(int, nranks_pairs, 2);
}

ParameterizedTest(int *nranks, p2p, isend_before_irecv_both_ways_64_mib_without_deadlock,
                  .timeout = 150, .fini = harness_kill_all)
{
    char what[64];

    snprintf(what, sizeof(what), "64 MiB isend/irecv pairs on %d ranks", *nranks);
    run_clean(*nranks, isend_first, NULL, 130000, what);
}

#define NB_MSGS 40 /* non-blocking messages from every rank to every other */

/* Message i from `from` to `to`: empty now and then, small, past a chunk every 10th. */
static size_t nb_count(int from, int to, size_t i)
{
    if (i % 7 == 3) {
        return 0;
    }
    return i % 10 == 9 ? CHUNK_ELEMS + 31 * i
                       : (i * 131 + (size_t)from * 17 + (size_t)to * 5) % 3001 + 1;
}

struct nb_call {
    int peer;
    int sends;
    size_t index;
    float *buf;
    fx_request_t req;
};

/* Every rank starts NB_MSGS messages to every other rank and the receives of theirs, all before
 * it waits for any, interleaved in a random order of its own that keeps each (peer, direction)
 * stream in order; then it waits for them newest first and checks what arrived. */
static int many_outstanding(fx_comm_t comm, struct harness_child *c)
{
    int n                 = c->nranks;
    size_t total          = 2 * (size_t)(n - 1) * NB_MSGS;
    struct nb_call *calls = calloc(total, sizeof(*calls));
    size_t *next          = calloc(2 * (size_t)n, sizeof(size_t)); /* per (peer, sends) stream */
    uint64_t rnd          = ref_mix(0x5eed + (uint64_t)c->index);
    size_t posted         = 0;
    int err               = 0;

    if (calls == NULL || next == NULL) {
        free(calls);
        free(next);
        return failed(c, comm, FX_ERR_NO_MEMORY, "call table");
    }
    while (posted < total && !err) {
        int stream = (int)((rnd = ref_mix(rnd)) % (uint64_t)(2 * n));
        int peer   = stream / 2;
        struct nb_call *k;
        size_t count;
        fx_status status;

        if (peer == c->index || next[stream] == NB_MSGS) {
            continue;
        }
        k        = &calls[posted];
        k->peer  = peer;
        k->sends = stream % 2;
        k->index = next[stream]++;
        count  = k->sends ? nb_count(c->index, peer, k->index) : nb_count(peer, c->index, k->index);
        k->buf = malloc(count * sizeof(float) + 1);
        if (k->buf == NULL) {
            err = failed(c, comm, FX_ERR_NO_MEMORY, "message buffer");
            break;
        }
        if (k->sends) {
            fill(k->buf, count * sizeof(float), msg_seed(7, c->index, peer, k->index));
            status = fx_isend(k->buf, count, FX_FLOAT32, peer, comm, &k->req);
        } else {
            status = fx_irecv(k->buf, count, FX_FLOAT32, peer, comm, &k->req);
        }
        if (status != FX_OK) {
            free(k->buf);
            err = failed(c, comm, status, k->sends ? "fx_isend" : "fx_irecv");
            break;
        }
        posted++;
    }
    for (size_t j = posted; j-- > 0;) {
        struct nb_call *k = &calls[j];
        fx_status status  = fx_wait(k->req, -1);
        char what[96];

        snprintf(what, sizeof(what), "%s #%zu %s rank %d", k->sends ? "fx_isend" : "fx_irecv",
                 k->index, k->sends ? "to" : "from", k->peer);
        if (status != FX_OK && !err) {
            err = failed(c, comm, status, what);
        } else if (status == FX_OK && !k->sends) {
            check(c, k->buf, nb_count(k->peer, c->index, k->index) * sizeof(float),
                  msg_seed(7, k->peer, c->index, k->index), what);
        }
        c->res->ops += status == FX_OK;
        free(k->buf);
    }
    free(calls);
    free(next);
    return err || collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, many_outstanding_isends_and_irecvs_match_in_order, .timeout = 120,
     .fini = harness_kill_all)
{
    run_clean(4, many_outstanding, NULL, 100000, "40 non-blocking messages each way per pair");
}

/* fx_wait with a timeout returns FX_INPROGRESS while the peer has not sent yet; the request
 * stays valid and completes later. */
static int wait_times_out(fx_comm_t comm, struct harness_child *c)
{
    float buf[1000];
    fx_request_t req;
    fx_status status;

    if (c->index == 1) {
        harness_sleep_ms(400);
        fill(buf, sizeof(buf), msg_seed(8, 1, 0, 0));
        status = fx_send(buf, 1000, FX_FLOAT32, 0, comm);
        return status == FX_OK ? done(comm, c) : failed(c, comm, status, "fx_send");
    }
    status = fx_irecv(buf, 1000, FX_FLOAT32, 1, comm, &req);
    if (status != FX_OK) {
        return failed(c, comm, status, "fx_irecv");
    }
    double t0 = harness_now_ms();

    status = fx_wait(req, 50);
    if (status != FX_INPROGRESS || harness_now_ms() - t0 < 45) {
        c->res->wrong++;
        harness_logf(c, "fx_wait(50 ms) before the send: %s after %.0f ms, want FX_INPROGRESS",
                     fx_strerror(status), harness_now_ms() - t0);
    }
    if (status == FX_INPROGRESS) {
        status = fx_wait(req, -1);
    }
    if (status != FX_OK) {
        return failed(c, comm, status, "fx_wait for the fx_irecv");
    }
    check(c, buf, sizeof(buf), msg_seed(8, 1, 0, 0), "the late message");
    return done(comm, c);
}

Test(p2p, wait_with_a_timeout_returns_in_progress_then_completes, .timeout = 60,
     .fini = harness_kill_all)
{
    run_clean(2, wait_times_out, NULL, 30000, "fx_wait timeout on an fx_irecv");
}

/* Rank 0 starts three messages to rank 2; rank 2 posts the second with one element more. Its
 * wait for that one (or its post, when the mismatch was seen first) fails with FX_ERR_MISMATCH
 * naming both counts and the message number. */
static int batch_mismatch(fx_comm_t comm, struct harness_child *c)
{
    static const size_t counts[3] = {10, 4099, 10};
    float *buf                    = calloc(3 * 4100, sizeof(float));
    fx_request_t req[3];
    fx_status first = FX_OK;
    int started     = 0;

    if (buf == NULL) {
        return failed(c, comm, FX_ERR_NO_MEMORY, "buffers");
    }
    /* A post may already fail, once progress inside it saw the mismatch: then it made no
     * request, and only the ones made before it are waited for. */
    for (int i = 0; i < 3 && c->index != 1 && first == FX_OK; i++) {
        float *b = buf + 4100 * i;

        first = c->index == 0 ? fx_isend(b, counts[i], FX_FLOAT32, 2, comm, &req[i])
                              : fx_irecv(b, counts[i] + (i == 1), FX_FLOAT32, 0, comm, &req[i]);
        if (first == FX_OK) {
            started++;
        } else if (i == 1 && c->index == 2) {
            c->res->aux = first == FX_ERR_MISMATCH;
        }
    }
    for (int i = 0; i < started; i++) {
        fx_status s = fx_wait(req[i], -1);

        if (i == 1 && c->index == 2) {
            c->res->aux = s == FX_ERR_MISMATCH;
        }
        first = first == FX_OK ? s : first;
    }
    if (first == FX_OK) {
        first = fx_allreduce(buf, buf, 4, FX_FLOAT32, FX_SUM, comm);
    }
    harness_set_status(c, comm, first);
    free(buf);
    return 0;
}

Test(p2p, count_mismatch_inside_a_batch_names_the_message, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks        = 3,
                                .deadline_ms   = MISMATCH_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = MISMATCH_TIMEOUT_MS,
                                .rank_fn       = batch_mismatch};
    struct harness_run_info info;
    const struct harness_result *res;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    harness_dump(&info, "mismatch inside a batch");
    res = info.shared->res;
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(res[i].status, FX_ERR_MISMATCH, "rank %d: %s: %s", i,
                     fx_strerror(res[i].status), res[i].err);
    }
    cr_expect_eq(res[2].aux, 1, "the receiver's second request must fail with FX_ERR_MISMATCH");
    cr_expect(strstr(res[2].err, "sent count 4099") != NULL &&
                  strstr(res[2].err, "receives count 4100") != NULL &&
                  strstr(res[2].err, "#2") != NULL,
              "the receiver's error must name both counts and message #2: '%s'", res[2].err);
    harness_free(&info);
}

/* ---- faults ---- */

/* Every process of the run has been reaped and no longer exists. */
static void expect_no_process_left(const struct harness_run_info *info)
{
    for (int i = 0; i < info->nprocs; i++) {
        pid_t pid = info->shared->res[i].pid;

        cr_expect(info->shared->res[i].reaped && harness_pid_gone(pid),
                  "process %d (pid %d) outlived the test", i, (int)pid);
    }
}

/* res got want no later than bound_ms after since_ms, names every rank in names (-1 ends),
 * mentions word (unless NULL), and exited by itself. */
static void expect_failure(const struct harness_result *res, int i, fx_status want, double since_ms,
                           double bound_ms, const int *names, const char *word)
{
    cr_expect_eq(res->status, want, "process %d: got %d (%s), want %d (%s): %s\n%s", i, res->status,
                 fx_strerror(res->status), want, fx_strerror(want), res->err, res->log);
    cr_expect(res->t_status_ms > 0 && since_ms > 0 && res->t_status_ms - since_ms <= bound_ms,
              "process %d: the status came %.0f ms after the fault, the bound is %.0f ms", i,
              res->t_status_ms - since_ms, bound_ms);
    for (int k = 0; names[k] >= 0; k++) {
        cr_expect(harness_names_rank(res->err, names[k]),
                  "process %d: error text does not name rank %d: '%s'", i, names[k], res->err);
    }
    cr_expect(word == NULL || strstr(res->err, word) != NULL,
              "process %d: error text does not say '%s': '%s'", i, word, res->err);
    cr_expect(res->exit_code == 0 && !res->killed, "process %d: exit code %d, signal %d%s", i,
              res->exit_code, res->term_signal, res->killed ? ", killed by the harness" : "");
}

/* What the mismatch tests vary: the receiver's datatype or count, and the message size. */
struct mismatch {
    int by_dtype;      /* the receiver passes FX_INT64 (a different size) for FX_FLOAT32 */
    size_t count;      /* the sender's count */
    size_t recv_count; /* the receiver's count */
};

/* Rank 0 sends rank 2 (not a ring neighbour of 3 ranks in that direction) count floats; rank 2
 * receives recv_count floats, or recv_count int64s when by_dtype. Then everyone
 * runs an allreduce: the sender's send may have completed before the receiver looked, but its
 * next call must fail, and so must the bystander's. The first error is recorded. */
static int mismatched_p2p(fx_comm_t comm, struct harness_child *c)
{
    const struct mismatch *m = c->arg;
    size_t bytes             = (m->count > m->recv_count ? m->count : m->recv_count) * 8;
    void *buf                = calloc(1, bytes);
    fx_status s              = FX_ERR_NO_MEMORY;

    c->res->t_mark_ms = harness_now_ms();
    if (buf != NULL) {
        s = FX_OK;
        if (c->index == 0) {
            s = fx_send(buf, m->count, FX_FLOAT32, 2, comm);
        } else if (c->index == 2) {
            s = fx_recv(buf, m->recv_count, m->by_dtype ? FX_INT64 : FX_FLOAT32, 0, comm);
        }
        c->res->aux = s != FX_OK; /* failed in the p2p call itself */
        if (s == FX_OK) {
            s = fx_allreduce(buf, buf, m->count, FX_FLOAT32, FX_SUM, comm);
        }
    }
    harness_set_status(c, comm, s);
    free(buf);
    return 0;
}

static void expect_mismatch(struct mismatch m)
{
    static const int both[]  = {0, 2, -1};
    struct harness_opts opts = {.nranks        = 3,
                                .deadline_ms   = MISMATCH_TIMEOUT_MS + 15000,
                                .fx_timeout_ms = MISMATCH_TIMEOUT_MS,
                                .rank_fn       = mismatched_p2p,
                                .arg           = &m};
    struct harness_run_info info;
    const struct harness_result *res;
    char sent[64];
    char posted[64];

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    harness_dump(&info, m.by_dtype ? "p2p datatype mismatch" : "p2p count mismatch");
    expect_no_process_left(&info);
    res = info.shared->res;
    for (int i = 0; i < 3; i++) {
        expect_failure(&res[i], i, FX_ERR_MISMATCH, res[i].t_mark_ms, MISMATCH_BOUND_MS, both,
                       m.by_dtype ? "datatype" : "count");
    }
    if (m.by_dtype) {
        snprintf(sent, sizeof(sent), "sent datatype float");
        snprintf(posted, sizeof(posted), "receives datatype int64");
    } else {
        snprintf(sent, sizeof(sent), "sent count %zu", m.count);
        snprintf(posted, sizeof(posted), "receives count %zu", m.recv_count);
    }
    cr_expect_eq(res[2].aux, 1, "the receiver's fx_recv itself must fail");
    if (m.count >= m.recv_count + BIG_BYTES / 8) {
        cr_expect_eq(res[0].aux, 1,
                     "a sender with %zu elements nobody receives must fail in its fx_send",
                     m.count - m.recv_count);
    }
    cr_expect(strstr(res[2].err, sent) != NULL && strstr(res[2].err, posted) != NULL,
              "the receiver's error must give both values ('%s', '%s'): '%s'", sent, posted,
              res[2].err);
    harness_free(&info);
}

Test(p2p, count_mismatch_fails_receiver_and_sender, .timeout = 60, .fini = harness_kill_all)
{
    expect_mismatch((struct mismatch){0, 4099, 4100});
}

Test(p2p, datatype_mismatch_fails_receiver_and_sender, .timeout = 60, .fini = harness_kill_all)
{
    expect_mismatch((struct mismatch){1, 4099, 4099});
}

/* The receiver takes half: the other 32 MiB can go nowhere, so the sender's own fx_send blocks
 * until the receiver's error reaches it. */
Test(p2p, large_count_mismatch_fails_the_blocked_sender, .timeout = 60, .fini = harness_kill_all)
{
    expect_mismatch((struct mismatch){0, 16u << 20, 8u << 20});
}

#define PEER_TIMEOUT_MS 3000
#define VICTIM          2

/* Ranks 0, 1 and 3 wait in fx_recv for a message from rank 2: rank 3 over its ring connection
 * from rank 2, ranks 0 and 1 for a connection rank 2 never makes. Rank 2 waits until they are
 * in the call, then dies by SIGKILL (arg NULL) or destroys its communicator and exits (arg set;
 * then rank 3 does not wait, so the others learn it only from the stall machinery). */
static int victim_leaves(fx_comm_t comm, struct harness_child *c)
{
    int clean = c->arg != NULL;
    float buf[16];
    fx_status s;

    if (c->index == VICTIM) {
        harness_sync_wait(c, 0, c->nranks - 1 - clean, 10000);
        harness_sleep_ms(100);
        c->res->t_mark_ms = harness_now_ms();
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (!clean) {
            kill(getpid(), SIGKILL);
        }
        fx_comm_destroy(comm);
        _exit(0);
    }
    if (clean && c->index == 3) {
        harness_sync_wait(c, 1, 1, 30000); /* until the others are done */
        harness_set_status(c, comm, FX_ERR_PEER_FAILED);
        return 0;
    }
    harness_sync_add(c, 0, 1);
    s = fx_recv(buf, 16, FX_FLOAT32, VICTIM, comm);
    harness_set_status(c, comm, s);
    harness_sync_add(c, 1, 1);
    return 0;
}

static void expect_peer_failed(int clean, double bound_ms)
{
    static const int victim[] = {VICTIM, -1};
    static int flag           = 1;
    struct harness_opts opts  = {.nranks        = 4,
                                 .deadline_ms   = 40000,
                                 .fx_timeout_ms = PEER_TIMEOUT_MS,
                                 .rank_fn       = victim_leaves,
                                 .arg           = clean ? &flag : NULL};
    struct harness_run_info info;
    const struct harness_result *res;
    double gone_at;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    harness_dump(&info, clean ? "rank 2 left" : "rank 2 killed");
    expect_no_process_left(&info);
    res     = info.shared->res;
    gone_at = res[VICTIM].t_mark_ms;
    cr_expect(gone_at > 0, "rank 2 never reached its exit");
    for (int i = 0; i < 4; i++) {
        if (i != VICTIM && !(clean && i == 3)) {
            expect_failure(&res[i], i, FX_ERR_PEER_FAILED, gone_at, bound_ms, victim, NULL);
        }
    }
    harness_free(&info);
}

Test(p2p, killed_peer_gives_peer_failed_naming_it, .timeout = 60, .fini = harness_kill_all)
{
    expect_peer_failed(0, 2000);
}

/* Found by the stall reports: within the timeout (and the verdict's grace) of the departure. */
Test(p2p, departed_peer_gives_peer_failed_naming_it, .timeout = 60, .fini = harness_kill_all)
{
    expect_peer_failed(1, PEER_TIMEOUT_MS + 2500);
}

/* ---- bad arguments ---- */

#define ARGS_COUNT 16

/* Expects FX_ERR_INVALID_ARG and an error text containing text. */
static void want_invalid(struct harness_child *c, fx_comm_t comm, fx_status got, const char *call,
                         const char *text)
{
    char err[256] = "";

    if (comm != NULL) {
        fx_comm_get_error(comm, err, sizeof(err));
    } else {
        snprintf(err, sizeof(err), "%s", fx_last_error());
    }
    if (got != FX_ERR_INVALID_ARG || strstr(err, text) == NULL) {
        c->res->wrong++;
        harness_logf(c, "%s returned %d (%s) with '%s', want FX_ERR_INVALID_ARG and '%s'", call,
                     got, fx_strerror(got), err, text);
    }
}

static void bad_send_recv(fx_comm_t comm, struct harness_child *c, float *b)
{
    fx_request_t req = NULL;
    int me           = c->index;
    int n            = c->nranks;
    int ok           = (me + 1) % n;
    char self[64];

    snprintf(self, sizeof(self), "peer %d is this rank", me);
    want_invalid(c, comm, fx_send(b, ARGS_COUNT, FX_FLOAT32, -1, comm), "fx_send(peer -1)",
                 "fx_send: peer -1 out of range [0, 3)");
    want_invalid(c, comm, fx_send(b, ARGS_COUNT, FX_FLOAT32, n, comm), "fx_send(peer n)",
                 "fx_send: peer 3 out of range [0, 3)");
    want_invalid(c, comm, fx_send(b, ARGS_COUNT, FX_FLOAT32, me, comm), "fx_send(self)", self);
    want_invalid(c, comm, fx_send(NULL, ARGS_COUNT, FX_FLOAT32, ok, comm), "fx_send(NULL)",
                 "fx_send: buf is NULL with count 16");
    want_invalid(c, comm, fx_send(b, ARGS_COUNT, (fx_datatype)99, ok, comm), "fx_send(dtype 99)",
                 "fx_send: invalid datatype 99");
    want_invalid(c, comm, fx_send(b, SIZE_MAX / 2, FX_FLOAT32, ok, comm), "fx_send(overflow)",
                 "overflows the address space");
    want_invalid(c, NULL, fx_send(b, ARGS_COUNT, FX_FLOAT32, ok, NULL), "fx_send(comm NULL)",
                 "fx_send: comm is NULL");
    want_invalid(c, comm, fx_recv(b, ARGS_COUNT, FX_FLOAT32, 7, comm), "fx_recv(peer 7)",
                 "fx_recv: peer 7 out of range [0, 3)");
    want_invalid(c, comm, fx_recv(b, ARGS_COUNT, FX_FLOAT32, me, comm), "fx_recv(self)", self);
    want_invalid(c, comm, fx_recv(NULL, 1, FX_FLOAT32, ok, comm), "fx_recv(NULL)",
                 "fx_recv: buf is NULL with count 1");
    want_invalid(c, comm, fx_recv(b, ARGS_COUNT, (fx_datatype)-1, ok, comm), "fx_recv(dtype -1)",
                 "fx_recv: invalid datatype -1");
    want_invalid(c, comm, fx_recv(b, SIZE_MAX / 3, FX_FLOAT64, ok, comm), "fx_recv(overflow)",
                 "fx_recv: count");
    want_invalid(c, comm, fx_isend(b, ARGS_COUNT, FX_FLOAT32, ok, comm, NULL), "fx_isend(req NULL)",
                 "fx_isend: request is NULL");
    want_invalid(c, comm, fx_irecv(b, ARGS_COUNT, FX_FLOAT32, 7, comm, &req), "fx_irecv(peer 7)",
                 "fx_irecv: peer 7 out of range [0, 3)");
    want_invalid(c, comm,
                 fx_isendrecv(b, ARGS_COUNT, ok, b + 8, ARGS_COUNT, ok, FX_FLOAT32, comm, &req),
                 "fx_isendrecv(overlap)", "fx_isendrecv: sendbuf and recvbuf overlap");
    want_invalid(c, NULL, fx_irecv(b, ARGS_COUNT, FX_FLOAT32, ok, NULL, &req),
                 "fx_irecv(comm NULL)", "fx_irecv: comm is NULL");
    /* A failed post leaves no handle: waiting on it is an error, not a wait on garbage. */
    req = (fx_request_t)(uintptr_t)0x5a5a5a5a;
    want_invalid(c, comm, fx_isend(b, ARGS_COUNT, (fx_datatype)99, ok, comm, &req),
                 "fx_isend(dtype 99)", "fx_isend: invalid datatype 99");
    if (req != NULL) {
        c->res->wrong++;
        harness_logf(c, "a failed fx_isend left its request handle set");
    }
    want_invalid(c, NULL, fx_wait(req, 1000), "fx_wait(request of a failed post)",
                 "fx_wait: request is NULL");
}

static void bad_sendrecv(fx_comm_t comm, struct harness_child *c, float *b)
{
    int me = c->index;
    int ok = (me + 1) % c->nranks;
    char self[64];
    char bad_dtype[64];

    snprintf(self, sizeof(self), "fx_sendrecv: src %d is this rank", me);
    snprintf(bad_dtype, sizeof(bad_dtype), "fx_sendrecv: invalid datatype %d", FX_NUM_DATATYPES);
    want_invalid(c, comm, fx_sendrecv(b, ARGS_COUNT, ok, b + 8, ARGS_COUNT, ok, FX_FLOAT32, comm),
                 "fx_sendrecv(overlap)", "fx_sendrecv: sendbuf and recvbuf overlap");
    want_invalid(c, comm, fx_sendrecv(b, ARGS_COUNT, ok, b, ARGS_COUNT, ok, FX_FLOAT32, comm),
                 "fx_sendrecv(same buffer)", "overlap");
    want_invalid(c, comm, fx_sendrecv(b, ARGS_COUNT, 3, b + 32, ARGS_COUNT, ok, FX_FLOAT32, comm),
                 "fx_sendrecv(dest 3)", "fx_sendrecv: dest 3 out of range");
    want_invalid(c, comm, fx_sendrecv(b, ARGS_COUNT, ok, b + 32, ARGS_COUNT, me, FX_FLOAT32, comm),
                 "fx_sendrecv(src self)", self);
    want_invalid(c, comm, fx_sendrecv(b, ARGS_COUNT, ok, NULL, ARGS_COUNT, ok, FX_FLOAT32, comm),
                 "fx_sendrecv(recvbuf NULL)", "fx_sendrecv: recvbuf is NULL with count 16");
    want_invalid(c, comm,
                 fx_sendrecv(b, ARGS_COUNT, ok, b + 32, ARGS_COUNT, ok, FX_NUM_DATATYPES, comm),
                 "fx_sendrecv(dtype)", bad_dtype);
}

/* Bad calls on every rank, then a correct ring exchange: the bad ones consumed no message
 * number, so the first good message of each pair is still #1 on both sides. */
static int bad_then_good(fx_comm_t comm, struct harness_child *c)
{
    float b[ARGS_COUNT * 4] = {0};
    float got               = -1;
    float mine              = (float)c->index;
    int to                  = (c->index + 1) % c->nranks;
    int from                = (c->index + c->nranks - 1) % c->nranks;
    fx_status s;

    bad_send_recv(comm, c, b);
    bad_sendrecv(comm, c, b);
    s = fx_sendrecv(&mine, 1, to, &got, 1, from, FX_FLOAT32, comm);
    if (s != FX_OK) {
        return failed(c, comm, s, "fx_sendrecv after the bad calls");
    }
    if (got != (float)from) {
        c->res->wrong++;
        harness_logf(c, "got %g from rank %d", (double)got, from);
    }
    return collectives_still_work(comm, c) || done(comm, c);
}

Test(p2p, bad_arguments_are_rejected_with_clear_text, .timeout = 60, .fini = harness_kill_all)
{
    run_clean(3, bad_then_good, NULL, 30000, "bad arguments on 3 ranks");
}
