/*
 * The whole collective set over real rank processes, each job with its algorithms forced by
 * FX_ALGO (or left to the tuner): all-reduce, all-gather, reduce-scatter, broadcast, reduce,
 * all-to-all and barrier, for every datatype x op x count, in place and out of place, blocking
 * and non-blocking (fx_wait and fx_test), roots rotating, on 1 to 8 ranks. Results are checked
 * against the exact reference of refdata.h; replicated results (all-reduce, all-gather,
 * broadcast) must also be bitwise the same on every rank. Then the new calls' bad input, and
 * mismatched calls that must fail with FX_ERR_MISMATCH rather than hang.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collcheck.h"
#include "harness.h"
#include "refdata.h"

#define NCOUNTS  5
#define BIG      262147
#define MAX_CASE HARNESS_NHASH

static const size_t counts[NCOUNTS] = {0, 1, 7, 1021, BIG};

enum coll {
    C_ALLREDUCE,
    C_ALLGATHER,
    C_REDUCESCATTER,
    C_BROADCAST,
    C_REDUCE,
    C_ALLTOALL,
    C_BARRIER,
    C_END
};

static const char *const coll_names[C_END] = {
    "allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall", "barrier"};

struct set_case {
    enum coll coll;
    struct ref_case k; /* count: per rank (reduce-scatter: the result block; all-to-all: one
                          block) */
    struct variant var;
    int root;
};

static struct set_case cases[MAX_CASE];

/* Whether a collective's result is the same on every rank (then ranks compare hashes). */
static int replicated(enum coll coll)
{
    return coll == C_ALLREDUCE || coll == C_ALLGATHER || coll == C_BROADCAST;
}

static size_t add(size_t n, enum coll coll, fx_datatype dt, fx_op op, int ci, int nranks)
{
    int v = (int)(dt + op + ci + coll) % NVARIANTS;
    struct set_case *sc;

    if (n >= MAX_CASE) {
        return n;
    }
    sc       = &cases[n];
    sc->coll = coll;
    sc->k    = (struct ref_case){dt, op, counts[ci], nranks, 0};
    if ((coll == C_ALLTOALL || coll == C_REDUCESCATTER) && counts[ci] == BIG) {
        sc->k.count = BIG / (size_t)nranks; /* nranks blocks per rank */
    }
    sc->k.seed = case_seed(16 + (int)coll, &sc->k, v);
    sc->var    = variant_of(v, dt);
    if (coll == C_ALLTOALL) {
        sc->var.inplace = 0; /* no in-place form */
    }
    sc->root = (int)(n % (size_t)nranks);
    return n + 1;
}

/* FXTEST_QUICK (slow runs under the sanitizers): five of the jobs, without the large count. */
static int quick(void)
{
    const char *q = getenv("FXTEST_QUICK");

    return q != NULL && q[0] != '\0' && strcmp(q, "0") != 0;
}

/* The matrix every rank runs in order: reductions over datatype x op x count, the others over
 * datatype x count, each case in one of the four variants (rotating), then the barrier in all
 * four. */
static size_t build_cases(int nranks)
{
    static const enum coll reducing[] = {C_ALLREDUCE, C_REDUCESCATTER, C_REDUCE};
    static const enum coll moving[]   = {C_ALLGATHER, C_BROADCAST, C_ALLTOALL};
    size_t n                          = 0;

    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (int ci = 0; ci < (quick() ? NCOUNTS - 1 : NCOUNTS); ci++) {
            for (int i = 0; i < 3; i++) {
                for (int op = 0; op < FX_NUM_OPS; op++) {
                    n = add(n, reducing[i], (fx_datatype)dt, (fx_op)op, ci, nranks);
                }
                n = add(n, moving[i], (fx_datatype)dt, FX_NUM_OPS, ci, nranks);
            }
        }
    }
    for (int v = 0; v < NVARIANTS && n < MAX_CASE; v++) {
        cases[n] = (struct set_case){
            C_BARRIER, {FX_UINT8, FX_NUM_OPS, 0, nranks, 0}, variant_of(v, FX_UINT8), 0};
        n += 1;
    }
    return n;
}

/* Buffers a child reuses for every case, each big enough for nranks * BIG 8-byte elements. */
struct bufs {
    unsigned char *send;
    unsigned char *recv;
    unsigned char *expect;
    unsigned char *scratch;
    size_t bytes;
};

static void free_bufs(struct bufs *b)
{
    free(b->send);
    free(b->recv);
    free(b->expect);
    free(b->scratch);
}

static int alloc_bufs(struct bufs *b, int nranks)
{
    b->bytes   = (size_t)nranks * BIG * sizeof(uint64_t);
    b->send    = malloc(b->bytes);
    b->recv    = malloc(b->bytes);
    b->expect  = malloc(b->bytes);
    b->scratch = malloc(b->bytes);
    return b->send && b->recv && b->expect && b->scratch ? 0 : -1;
}

/* Starts (or runs, blocking) one call of the case with these buffers. */
static fx_status call(const struct set_case *sc, const void *s, void *r, fx_comm_t comm)
{
    const struct ref_case *k = &sc->k;
    fx_request_t req         = NULL;
    fx_status st;

    if (sc->var.mode == MODE_BLOCKING) {
        switch (sc->coll) {
        case C_ALLREDUCE:
            return fx_allreduce(s, r, k->count, k->dt, k->op, comm);
        case C_ALLGATHER:
            return fx_allgather(s, r, k->count, k->dt, comm);
        case C_REDUCESCATTER:
            return fx_reduce_scatter(s, r, k->count, k->dt, k->op, comm);
        case C_BROADCAST:
            return fx_broadcast(s, r, k->count, k->dt, sc->root, comm);
        case C_REDUCE:
            return fx_reduce(s, r, k->count, k->dt, k->op, sc->root, comm);
        case C_ALLTOALL:
            return fx_alltoall(s, r, k->count, k->dt, comm);
        default:
            return fx_barrier(comm);
        }
    }
    switch (sc->coll) {
    case C_ALLREDUCE:
        st = fx_iallreduce(s, r, k->count, k->dt, k->op, comm, &req);
        break;
    case C_ALLGATHER:
        st = fx_iallgather(s, r, k->count, k->dt, comm, &req);
        break;
    case C_REDUCESCATTER:
        st = fx_ireduce_scatter(s, r, k->count, k->dt, k->op, comm, &req);
        break;
    case C_BROADCAST:
        st = fx_ibroadcast(s, r, k->count, k->dt, sc->root, comm, &req);
        break;
    case C_REDUCE:
        st = fx_ireduce(s, r, k->count, k->dt, k->op, sc->root, comm, &req);
        break;
    case C_ALLTOALL:
        st = fx_ialltoall(s, r, k->count, k->dt, comm, &req);
        break;
    default:
        st = fx_ibarrier(comm, &req);
        break;
    }
    return complete(st, req, sc->var.mode);
}

/* The reference for the whole reduction of nranks * count elements (reduce-scatter) or count
 * elements (all-reduce, reduce) into b->expect. */
static void expect_reduction(const struct ref_case *k, size_t total, struct bufs *b)
{
    struct ref_case whole = *k;

    whole.count = total;
    ref_expect(&whole, b->expect, b->scratch);
}

/* Runs one case on this rank. Checks the result when verify is set, always that the send buffer
 * was left alone and that buffers the collective must not write were not written. Returns 0,
 * or 1 when the call failed. */
static int run_case(fx_comm_t comm, struct harness_child *c, const struct set_case *sc, int verify,
                    struct bufs *b, uint64_t *hash)
{
    const struct ref_case *k = &sc->k;
    const char *name         = coll_names[sc->coll];
    int n                    = c->nranks;
    int me                   = c->index;
    size_t es                = ref_dt_size(k->dt);
    size_t bytes             = k->count * es;
    size_t sbytes            = bytes; /* what this rank sends */
    size_t rbytes            = bytes; /* what lands in its receive buffer */
    unsigned char *send      = b->send;
    unsigned char *recv      = b->recv;
    struct ref_case whole    = *k;
    char first[160]          = "";
    size_t wrong             = 0;
    uint64_t send_hash;
    fx_status status;

    switch (sc->coll) {
    case C_ALLGATHER:
        rbytes = bytes * (size_t)n;
        break;
    case C_REDUCESCATTER:
    case C_ALLTOALL:
        sbytes = bytes * (size_t)n;
        rbytes = sc->coll == C_ALLTOALL ? sbytes : bytes;
        break;
    default:
        break;
    }
    whole.count = sbytes / (es ? es : 1);
    memset(b->recv, 0x5a, (rbytes > sbytes ? rbytes : sbytes) + 64);
    /* Contributions: reductions use ref_fill's exact values, moves raw bits. */
    if (sc->coll == C_ALLGATHER || sc->coll == C_BROADCAST || sc->coll == C_ALLTOALL) {
        ref_fill_gather(&whole, me, send);
    } else if (sc->coll != C_BARRIER) {
        ref_fill(&whole, me, send);
    }
    if (sc->var.inplace) {
        switch (sc->coll) {
        case C_ALLGATHER:
            memcpy(recv + (size_t)me * bytes, send, bytes);
            send = recv + (size_t)me * bytes;
            break;
        case C_REDUCESCATTER:
            memcpy(recv, send, sbytes);
            send = recv;
            recv = recv + (size_t)me * bytes;
            break;
        case C_BROADCAST:
        case C_REDUCE:
        case C_ALLREDUCE:
            memcpy(recv, send, sbytes);
            send = recv;
            break;
        default:
            break;
        }
    }
    send_hash = harness_hash(b->send, sc->var.inplace ? 0 : sbytes);
    status    = call(sc, k->count == 0 && !sc->var.inplace ? NULL : send,
                  k->count == 0 && !sc->var.inplace ? NULL : recv, comm);
    if (status != FX_OK) {
        return record_error(c, comm, name, k, sc->var, status);
    }
    if (fx_comm_last_algo(comm) == NULL || strcmp(fx_comm_last_algo(comm), "none") == 0) {
        record_wrong(c, name, k, sc->var, 1, "fx_comm_last_algo names no algorithm");
    }
    switch (sc->coll) {
    case C_ALLREDUCE:
        *hash = harness_hash(recv, bytes);
        if (verify) {
            expect_reduction(k, k->count, b);
            wrong = ref_compare(k, recv, b->expect, first, sizeof(first));
        }
        break;
    case C_ALLGATHER:
        *hash = harness_hash(b->recv, rbytes);
        if (verify) {
            wrong = ref_check_gather(k, b->recv, first, sizeof(first));
        }
        break;
    case C_BROADCAST:
        *hash = harness_hash(recv, bytes);
        if (verify) {
            ref_fill_gather(&whole, sc->root, b->expect);
            for (size_t i = 0; i < bytes; i++) {
                wrong += recv[i] != b->expect[i];
            }
            snprintf(first, sizeof(first), "bytes differ from root %d's", sc->root);
        }
        break;
    case C_REDUCESCATTER:
        expect_reduction(k, k->count * (size_t)n, b);
        wrong = ref_compare(k, recv, b->expect + (size_t)me * bytes, first, sizeof(first));
        break;
    case C_REDUCE:
        if (me == sc->root) {
            expect_reduction(k, k->count, b);
            wrong = ref_compare(k, recv, b->expect, first, sizeof(first));
        } else if (!sc->var.inplace) {
            for (size_t i = 0; i < bytes && wrong == 0; i++) {
                wrong += recv[i] != 0x5a;
            }
            snprintf(first, sizeof(first), "a non-root's recvbuf was written");
        }
        break;
    case C_ALLTOALL:
        for (int s = 0; s < n && wrong == 0; s++) {
            ref_fill_gather(&whole, s, b->expect);
            if (memcmp(recv + (size_t)s * bytes, b->expect + (size_t)me * bytes, bytes) != 0) {
                wrong = 1;
                snprintf(first, sizeof(first), "block from rank %d differs", s);
            }
        }
        break;
    default:
        break;
    }
    if (b->recv[sc->var.inplace && sc->coll == C_REDUCESCATTER ? sbytes : rbytes] != 0x5a) {
        wrong += 1;
        snprintf(first, sizeof(first), "written past the end of recvbuf");
    }
    if (wrong != 0) {
        record_wrong(c, name, k, sc->var, wrong, first);
    }
    if (send_hash != harness_hash(b->send, sc->var.inplace ? 0 : sbytes)) {
        record_wrong(c, name, k, sc->var, 1, "the send buffer was modified");
    }
    return 0;
}

static int run_set(fx_comm_t comm, struct harness_child *c)
{
    size_t ncases = build_cases(c->nranks);
    struct bufs b = {0};
    int failed    = 0;

    if (alloc_bufs(&b, c->nranks + 1) != 0) {
        harness_logf(c, "out of memory");
        free_bufs(&b);
        return 3;
    }
    for (size_t i = 0; i < ncases && !failed; i++) {
        int verify = !replicated(cases[i].coll) || (int)(i % (size_t)c->nranks) == c->index;

        failed = run_case(comm, c, &cases[i], verify, &b, &c->res->hashes[i]);
        c->res->ops += !failed;
    }
    free_bufs(&b);
    if (!failed) {
        harness_set_status(c, comm, FX_OK);
    }
    return failed || c->res->wrong != 0 ? 1 : 0;
}

/* A job: FX_ALGO and the rank count. (Criterion hands parameters to the test's own process:
 * no pointers in them.) */
struct job {
    char algo[192];
    int nranks;
    int quick; /* also run under FXTEST_QUICK */
};

#define SET_A                                                                                      \
    "allreduce:tree,allgather:rd,reducescatter:ring,broadcast:chain,reduce:chain,"                 \
    "alltoall:pairwise,barrier:dissemination"
#define SET_B "allreduce:rd,allgather:bruck,broadcast:binomial,reduce:binomial"
#define SET_C "allreduce:rabenseifner,allgather:ring,broadcast:chain,reduce:binomial"
#define SET_D "allreduce:ring,allgather:bruck,broadcast:binomial,reduce:chain"

static struct job jobs[] = {
    {"", 1, 1},    {"", 3, 0},    {"", 8, 0},    {SET_A, 2, 0}, {SET_A, 4, 1},
    {SET_A, 5, 0}, {SET_B, 3, 0}, {SET_B, 6, 1}, {SET_B, 8, 0}, {SET_C, 2, 0},
    {SET_C, 7, 1}, {SET_D, 4, 0}, {SET_D, 5, 1},
};

ParameterizedTestParameters(coll_set, every_collective_matches_reference)
{
    return cr_make_param_array(struct job, jobs, sizeof(jobs) / sizeof(jobs[0]));
}

ParameterizedTest(struct job *j, coll_set, every_collective_matches_reference, .timeout = 600,
                  .fini = harness_kill_all)
{
    struct harness_run_info info;
    size_t ncases = build_cases(j->nranks);
    char what[256];
    int reported = 0;

    if (quick() && !j->quick) {
        cr_skip_test("FXTEST_QUICK: this job runs in the full suite only");
    }
    setenv("FX_ALGO", j->algo, 1);
    snprintf(what, sizeof(what), "FX_ALGO='%s' on %d ranks", j->algo, j->nranks);
    run_clean(j->nranks, run_set, 500000, what, &info);
    for (size_t i = 0; i < ncases; i++) {
        for (int r = 1; r < info.nprocs && replicated(cases[i].coll) && reported < 10; r++) {
            int same = info.shared->res[r].hashes[i] == info.shared->res[0].hashes[i];

            reported += !same;
            cr_expect(same, "%s: %s %s count %zu: rank %d's result differs bitwise from rank 0's",
                      what, coll_names[cases[i].coll], ref_dt_name(cases[i].k.dt), cases[i].k.count,
                      r);
        }
    }
    harness_free(&info);
}

/* ---- bad input: a clear error naming what was wrong, and the communicator still works ---- */

/* One call that must fail with FX_ERR_INVALID_ARG and a message containing `needle`. */
static void expect_invalid(struct harness_child *c, fx_comm_t comm, const char *what,
                           fx_status status, const char *needle)
{
    char err[512] = "";

    fx_comm_get_error(comm, err, sizeof(err));
    if (status != FX_ERR_INVALID_ARG || strstr(err, needle) == NULL) {
        harness_logf(c, "%s: status %d, error '%s', want '%s'; ", what, status, err, needle);
        c->res->wrong++;
    }
}

static int run_bad_input(fx_comm_t comm, struct harness_child *c)
{
    int n            = c->nranks;
    float buf[64]    = {0};
    float other[64]  = {0};
    int64_t v        = 1;
    fx_request_t req = NULL;
    fx_status status;

    expect_invalid(c, comm, "broadcast root n", fx_broadcast(buf, buf, 4, FX_FLOAT32, n, comm),
                   "root 4 out of range [0, 4)");
    expect_invalid(c, comm, "reduce root -1", fx_reduce(buf, buf, 4, FX_FLOAT32, FX_SUM, -1, comm),
                   "root -1 out of range [0, 4)");
    expect_invalid(c, comm, "ibroadcast without a request",
                   fx_ibroadcast(buf, buf, 4, FX_FLOAT32, 0, comm, NULL), "request is NULL");
    expect_invalid(c, comm, "reduce op", fx_reduce(buf, buf, 4, FX_FLOAT32, (fx_op)99, 0, comm),
                   "invalid op 99");
    expect_invalid(c, comm, "reduce datatype",
                   fx_reduce(buf, buf, 4, (fx_datatype)77, FX_SUM, 0, comm), "invalid datatype 77");
    expect_invalid(c, comm, "alltoall overflow",
                   fx_alltoall(buf, other, SIZE_MAX / 8, FX_FLOAT32, comm),
                   "times 4 ranks overflows the address space");
    expect_invalid(c, comm, "reducescatter overflow",
                   fx_reduce_scatter(buf, other, SIZE_MAX / 8, FX_FLOAT32, FX_SUM, comm),
                   "times 4 ranks overflows");
    expect_invalid(c, comm, "alltoall in place", fx_alltoall(buf, buf + 1, 4, FX_FLOAT32, comm),
                   "overlap (there is no in-place form)");
    expect_invalid(c, comm, "reducescatter overlap",
                   fx_reduce_scatter(buf, buf + 1, 4, FX_FLOAT32, FX_SUM, comm), "not rank");
    expect_invalid(c, comm, "broadcast NULL recvbuf",
                   fx_broadcast(buf, NULL, 4, FX_FLOAT32, 0, comm), "recvbuf is NULL with count 4");
    expect_invalid(c, comm, "alltoall NULL sendbuf", fx_alltoall(NULL, other, 4, FX_FLOAT32, comm),
                   "sendbuf is NULL with count 4");
    /* Non-roots may pass NULL where they pass nothing: broadcast's sendbuf, reduce's recvbuf. */
    status = fx_broadcast(c->index == 1 ? buf : NULL, buf, 4, FX_FLOAT32, 1, comm);
    if (status == FX_OK) {
        status = fx_reduce(buf, c->index == 2 ? other : NULL, 4, FX_FLOAT32, FX_SUM, 2, comm);
    }
    if (status == FX_OK) {
        status = fx_ibarrier(comm, &req);
        status = status == FX_OK ? fx_wait(req, 10000) : status;
    }
    if (status == FX_OK) {
        status = fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, comm);
        c->res->wrong += status == FX_OK && v != n;
    }
    harness_set_status(c, comm, status);
    return 0;
}

Test(coll_set, bad_input_is_rejected_naming_it_and_comm_still_works, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_run_info info;

    run_clean(4, run_bad_input, 40000, "bad input", &info);
    harness_free(&info);
}

/* ---- mismatched calls: FX_ERR_MISMATCH naming both ranks' values, never a hang ---- */

enum mismatch { MM_ROOT, MM_KIND, MM_COUNT, MM_DTYPE };

static int run_mismatch(fx_comm_t comm, struct harness_child *c)
{
    enum mismatch mm = *(enum mismatch *)c->arg;
    int odd          = c->index == 1;
    float buf[256]   = {0};
    float out[1024]  = {0};
    fx_status status;

    switch (mm) {
    case MM_ROOT:
        status = fx_broadcast(buf, buf, 64, FX_FLOAT32, odd ? 2 : 0, comm);
        break;
    case MM_KIND:
        status = odd ? fx_reduce(buf, out, 64, FX_FLOAT32, FX_SUM, 0, comm)
                     : fx_broadcast(buf, buf, 64, FX_FLOAT32, 0, comm);
        break;
    case MM_COUNT:
        status = fx_reduce_scatter(buf, out, odd ? 32 : 16, FX_FLOAT32, FX_SUM, comm);
        break;
    default:
        status = fx_alltoall(buf, out, 8, odd ? FX_INT32 : FX_FLOAT32, comm);
        break;
    }
    /* A rank whose own part matched may finish before the mismatch is found (its messages
     * went out, nothing it received was wrong); the communicator is broken all the same, and
     * its next call says so. */
    if (status == FX_OK) {
        int64_t v = 1;

        status = fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, comm);
    }
    c->res->status = status;
    fx_comm_get_error(comm, c->res->err, sizeof(c->res->err));
    return 0;
}

/* Every rank fails (none hangs) and one at least names the mismatch: `needle`, or `alt` where
 * a transport found the lengths differ before any header could be compared. */
static void expect_mismatch(enum mismatch mm, const char *needle, const char *alt)
{
    struct harness_opts opts = {.nranks        = 4,
                                .deadline_ms   = 30000,
                                .fx_timeout_ms = 10000,
                                .rank_fn       = run_mismatch,
                                .arg           = &mm};
    struct harness_run_info info;
    int named = 0;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    cr_expect(!info.deadline_hit, "the mismatch hung until the deadline");
    for (int r = 0; r < info.nprocs; r++) {
        const struct harness_result *res = &info.shared->res[r];

        cr_expect(res->status == FX_ERR_MISMATCH || res->status == FX_ERR_PEER_FAILED ||
                      res->status == FX_ERR_ABORTED || res->status == FX_ERR_CONNECTION,
                  "rank %d: status %d (%s): %s", r, res->status, fx_strerror(res->status),
                  res->err);
        named += strstr(res->err, needle) != NULL || (alt != NULL && strstr(res->err, alt) != NULL);
    }
    cr_expect(named > 0, "no rank's error contains '%s' (rank 0: %s)", needle,
              info.shared->res[0].err);
    harness_free(&info);
}

Test(coll_set, mismatched_root_kind_count_and_datatype_fail_naming_both, .timeout = 120,
     .fini = harness_kill_all)
{
    expect_mismatch(MM_ROOT, "broadcast root", NULL);
    expect_mismatch(MM_KIND, "called reduce", "sent for operation #1 while");
    expect_mismatch(MM_COUNT, "reducescatter count", "bytes where 64 + 128 were expected");
    expect_mismatch(MM_DTYPE, "alltoall datatype", NULL);
}
