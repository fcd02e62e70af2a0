/*
 * Collectives over real rank processes on loopback TCP, checked against an exact reference:
 * allreduce for every datatype x op x count x in-place/out-of-place x blocking/non-blocking,
 * allgather for every datatype x count x in-place/out-of-place x blocking/non-blocking, on 1 to
 * 8 ranks; NaN propagation of MIN/MAX; bitwise-identical results on random data; several
 * non-blocking operations outstanding at once.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collcheck.h"
#include "harness.h"
#include "refdata.h"

#define BIG_COUNT 1048573
#define NCOUNTS   5

static const size_t counts[NCOUNTS] = {0, 1, 7, 1021, BIG_COUNT};

/* The buffers a child reuses for every case. */
struct bufs {
    void *send;
    void *recv;
    void *expect;
    void *scratch;
    void *gather;
};

static fx_status do_allreduce(const void *s, void *r, const struct ref_case *k, enum mode mode,
                              fx_comm_t comm)
{
    fx_request_t req = NULL;
    fx_status status;

    if (mode == MODE_BLOCKING) {
        return fx_allreduce(s, r, k->count, k->dt, k->op, comm);
    }
    status = fx_iallreduce(s, r, k->count, k->dt, k->op, comm, &req);
    return complete(status, req, mode);
}

static fx_status do_allgather(const void *s, void *r, const struct ref_case *k, enum mode mode,
                              fx_comm_t comm)
{
    fx_request_t req = NULL;
    fx_status status;

    if (mode == MODE_BLOCKING) {
        return fx_allgather(s, r, k->count, k->dt, comm);
    }
    status = fx_iallgather(s, r, k->count, k->dt, comm, &req);
    return complete(status, req, mode);
}

enum coll { COLL_ALLREDUCE, COLL_ALLGATHER };

/* One case of the matrix: the collective, its arguments and data, how it is called. */
struct coll_case {
    enum coll coll;
    struct ref_case k;
    struct variant var;
};

#define MAX_CASES    HARNESS_NHASH
#define MAX_REPORTED 10

static struct coll_case cases[MAX_CASES];

_Static_assert(FX_NUM_DATATYPES *(FX_NUM_OPS + 1) * NCOUNTS * NVARIANTS <= MAX_CASES,
               "the matrix does not fit in the hash table");

/* Every variant runs at every count, unless FXTEST_QUICK is set in the environment (for slow
 * runs under valgrind or sanitizers): then the largest count runs in one variant per (datatype,
 * op), rotating through the four. */
static int variant_enabled(size_t count, int dt, int op, int v)
{
    const char *quick = getenv("FXTEST_QUICK");

    if (count != BIG_COUNT || quick == NULL || quick[0] == '\0' || strcmp(quick, "0") == 0) {
        return 1;
    }
    return (dt + op) % NVARIANTS == v;
}

static size_t add_case(size_t n, enum coll coll, struct ref_case k, int v)
{
    if (!variant_enabled(k.count, k.dt, k.op, v)) {
        return n;
    }
    k.seed   = case_seed((int)coll + 1, &k, v);
    cases[n] = (struct coll_case){coll, k, variant_of(v, k.dt)};
    return n + 1;
}

/* Fills cases[] with the matrix in the order every rank runs it: allreduce over datatype x op
 * x count x variant, then allgather over datatype x count x variant. Returns its length. */
static size_t build_cases(int nranks)
{
    const int per_dt = FX_NUM_OPS * NCOUNTS * NVARIANTS;
    size_t n         = 0;

    for (int i = 0; i < FX_NUM_DATATYPES * per_dt; i++) {
        struct ref_case k = {i / per_dt, i / (NCOUNTS * NVARIANTS) % FX_NUM_OPS,
                             counts[i / NVARIANTS % NCOUNTS], nranks, 0};

        n = add_case(n, COLL_ALLREDUCE, k, i % NVARIANTS);
    }
    for (int i = 0; i < FX_NUM_DATATYPES * NCOUNTS * NVARIANTS; i++) {
        struct ref_case k = {i / (NCOUNTS * NVARIANTS), FX_SUM, counts[i / NVARIANTS % NCOUNTS],
                             nranks, 0};

        n = add_case(n, COLL_ALLGATHER, k, i % NVARIANTS);
    }
    return n;
}

/* One allreduce case on this rank: fill, run, hash the result and, when verify is set, compare
 * it with the reference. Returns 0, or 1 when the call failed. */
static int allreduce_case(fx_comm_t comm, struct harness_child *c, const struct coll_case *cc,
                          int verify, struct bufs *b, uint64_t *hash)
{
    const struct ref_case *k = &cc->k;
    size_t bytes             = k->count * ref_dt_size(k->dt);
    void *send               = cc->var.inplace ? b->recv : b->send;
    char first[160];
    uint64_t send_hash;
    fx_status status;
    double t0;
    size_t wrong;

    ref_fill(k, c->index, send);
    if (!cc->var.inplace) {
        memset(b->recv, 0xa5, bytes);
    }
    send_hash = harness_hash(b->send, cc->var.inplace ? 0 : bytes);
    if (k->count == 0) { /* NULL buffers are valid with count 0 */
        send = cc->var.inplace ? b->recv : NULL;
    }
    t0     = harness_now_ms();
    status = do_allreduce(send, k->count == 0 ? send : b->recv, k, cc->var.mode, comm);
    c->res->aux += (long long)(harness_now_ms() - t0);
    if (status != FX_OK) {
        return record_error(c, comm, "allreduce", k, cc->var, status);
    }
    *hash = harness_hash(b->recv, bytes);
    if (verify) {
        ref_expect(k, b->expect, b->scratch);
        wrong = ref_compare(k, b->recv, b->expect, first, sizeof(first));
        if (wrong != 0) {
            record_wrong(c, "allreduce", k, cc->var, wrong, first);
        }
    }
    if (send_hash != harness_hash(b->send, cc->var.inplace ? 0 : bytes)) {
        record_wrong(c, "allreduce", k, cc->var, 1, "the send buffer was modified");
    }
    return 0;
}

/* One allgather case on this rank; in place, the rank's data sits at its slot of recv. */
static int allgather_case(fx_comm_t comm, struct harness_child *c, const struct coll_case *cc,
                          int verify, struct bufs *b, uint64_t *hash)
{
    const struct ref_case *k = &cc->k;
    size_t bytes             = k->count * ref_dt_size(k->dt);
    void *send = cc->var.inplace ? (char *)b->gather + (size_t)c->index * bytes : b->send;
    void *recv = b->gather;
    char first[160];
    fx_status status;
    double t0;
    size_t wrong;

    memset(b->gather, 0x5a, bytes * (size_t)k->nranks);
    ref_fill_gather(k, c->index, send);
    if (k->count == 0 && !cc->var.inplace) {
        send = NULL;
        recv = NULL;
    }
    t0     = harness_now_ms();
    status = do_allgather(send, recv, k, cc->var.mode, comm);
    c->res->aux += (long long)(harness_now_ms() - t0);
    if (status != FX_OK) {
        return record_error(c, comm, "allgather", k, cc->var, status);
    }
    *hash = harness_hash(b->gather, bytes * (size_t)k->nranks);
    wrong = verify ? ref_check_gather(k, b->gather, first, sizeof(first)) : 0;
    if (wrong != 0) {
        record_wrong(c, "allgather", k, cc->var, wrong, first);
    }
    return 0;
}

static void free_bufs(struct bufs *b)
{
    free(b->send);
    free(b->recv);
    free(b->expect);
    free(b->scratch);
    free(b->gather);
}

static int alloc_bufs(struct bufs *b, size_t count, int nranks)
{
    size_t bytes = count * sizeof(uint64_t);

    b->send    = malloc(bytes);
    b->recv    = malloc(bytes);
    b->expect  = malloc(bytes);
    b->scratch = malloc(bytes);
    b->gather  = malloc(bytes * (size_t)nranks);
    return b->send && b->recv && b->expect && b->scratch && b->gather ? 0 : -1;
}

/* Runs the whole matrix on one communicator. Case i is checked against the reference by rank
 * i % nranks only; every rank records each result's hash, and the parent requires them equal,
 * so every rank's every result is checked while the reference is computed once per case. */
static int run_matrix(fx_comm_t comm, struct harness_child *c)
{
    size_t ncases = build_cases(c->nranks);
    struct bufs b = {0};
    int failed    = 0;

    if (alloc_bufs(&b, BIG_COUNT, c->nranks) != 0) {
        harness_logf(c, "out of memory");
        free_bufs(&b);
        return 3;
    }
    for (size_t i = 0; i < ncases && !failed; i++) {
        int verify = (int)(i % (size_t)c->nranks) == c->index;

        if (cases[i].coll == COLL_ALLREDUCE) {
            failed = allreduce_case(comm, c, &cases[i], verify, &b, &c->res->hashes[i]);
        } else {
            failed = allgather_case(comm, c, &cases[i], verify, &b, &c->res->hashes[i]);
        }
        c->res->ops += !failed;
    }
    free_bufs(&b);
    if (!failed) {
        harness_set_status(c, comm, FX_OK);
    }
    return failed || c->res->wrong != 0 ? 1 : 0;
}

/* Every rank's result of every case is bitwise the same as rank 0's. */
static void expect_same_hashes(const struct harness_run_info *info, size_t ncases)
{
    int reported = 0;

    for (size_t i = 0; i < ncases; i++) {
        const struct coll_case *cc = &cases[i];

        for (int r = 1; r < info->nprocs && reported < MAX_REPORTED; r++) {
            int same = info->shared->res[r].hashes[i] == info->shared->res[0].hashes[i];

            reported += !same;
            cr_expect(same,
                      "%s %s %s count %zu %s %s, nranks %d: rank %d's result differs "
                      "from rank 0's",
                      cc->coll == COLL_ALLREDUCE ? "allreduce" : "allgather", ref_dt_name(cc->k.dt),
                      ref_op_name(cc->k.op), cc->k.count,
                      cc->var.inplace ? "in-place" : "out-of-place", mode_names[cc->var.mode],
                      cc->k.nranks, r);
        }
    }
}

static int nranks_1_to_8[] = {1, 2, 3, 4, 5, 6, 7, 8};

ParameterizedTestParameters(collectives, matrix_matches_reference)
{
    return cr_make_param_array(int, nranks_1_to_8, 8);
}

/* Allreduce and allgather, every datatype x op x count x variant, on one communicator. */
ParameterizedTest(int *nranks, collectives, matrix_matches_reference, .timeout = 290,
                  .fini = harness_kill_all)
{
    size_t ncases = build_cases(*nranks);
    struct harness_run_info info;
    char what[64];

    snprintf(what, sizeof(what), "matrix on %d ranks", *nranks);
    run_clean(*nranks, run_matrix, 270000, what, &info);
    cr_expect_eq(info.shared->res[0].ops, (long long)ncases, "%lld of %zu cases ran",
                 info.shared->res[0].ops, ncases);
    expect_same_hashes(&info, ncases);
    harness_free(&info);
}

/* MIN/MAX of fp16, bf16, fp32, fp64 where some ranks (and at some indices all) pass a NaN. */
static int nan_case(fx_comm_t comm, struct harness_child *c, const struct ref_case *k,
                    struct variant var, struct bufs *b)
{
    char first[160];
    fx_status status;
    size_t wrong;

    ref_fill(k, c->index, b->send);
    ref_inject_nan(k, c->index, b->send);
    if (var.inplace) {
        memcpy(b->recv, b->send, k->count * ref_dt_size(k->dt));
    }
    status = do_allreduce(var.inplace ? b->recv : b->send, b->recv, k, var.mode, comm);
    if (status != FX_OK) {
        return record_error(c, comm, "allreduce", k, var, status);
    }
    ref_expect(k, b->expect, b->scratch);
    wrong = ref_compare_nan(k, b->recv, b->expect, first, sizeof(first));
    if (wrong != 0) {
        record_wrong(c, "allreduce (NaN)", k, var, wrong, first);
    }
    c->res->ops++;
    return 0;
}

static int run_nan(fx_comm_t comm, struct harness_child *c)
{
    static const fx_datatype dts[]   = {FX_FLOAT16, FX_BFLOAT16, FX_FLOAT32, FX_FLOAT64};
    static const size_t nan_counts[] = {1, 7, 1021};
    struct bufs b                    = {0};
    int failed                       = 0;

    if (alloc_bufs(&b, 1021, 1) != 0) {
        free_bufs(&b);
        return 3;
    }
    for (int i = 0; i < 4 * 2 * 3 && !failed; i++) {
        struct ref_case k = {dts[i / 6], i / 3 % 2 ? FX_MAX : FX_MIN, nan_counts[i % 3], c->nranks,
                             0};

        k.seed = case_seed(3, &k, i);
        failed = nan_case(comm, c, &k, variant_of(i % NVARIANTS, k.dt), &b);
    }
    free_bufs(&b);
    if (!failed) {
        harness_set_status(c, comm, FX_OK);
    }
    return failed || c->res->wrong != 0;
}

static int nranks_nan[] = {2, 3, 5};

ParameterizedTestParameters(collectives, min_max_propagate_nan)
{
    return cr_make_param_array(int, nranks_nan, 3);
}

ParameterizedTest(int *nranks, collectives, min_max_propagate_nan, .timeout = 60,
                  .fini = harness_kill_all)
{
    struct harness_run_info info;
    char what[64];

    snprintf(what, sizeof(what), "NaN min/max on %d ranks", *nranks);
    run_clean(*nranks, run_nan, 50000, what, &info);
    harness_free(&info);
}

/* Random data: uniform in [-1, 1) scaled by 2^-3 .. 2^4, stored in the datatype. */
static double random_value(fx_datatype dt, uint64_t seed, int rank, size_t i)
{
    uint64_t b = ref_bits(seed, rank, i);
    double x   = ((double)(b >> 11) * 0x1p-52 - 1.0) * ldexp(1.0, (int)(b & 7) - 3);

    return dt == FX_FLOAT32 ? (double)(float)x : x;
}

static void fill_random(const struct ref_case *k, int rank, void *buf)
{
    for (size_t i = 0; i < k->count; i++) {
        double x = random_value(k->dt, k->seed, rank, i);

        if (k->dt == FX_FLOAT32) {
            ((float *)buf)[i] = (float)x;
        } else {
            ((double *)buf)[i] = x;
        }
    }
}

/* Number of elements farther from the long double reference than the reduction's error bound
 * ((nranks + 1) ulps of the sum of magnitudes, and one more ulp for AVG's division). */
static size_t check_random(const struct ref_case *k, const void *got, char *first, size_t len)
{
    double eps   = k->dt == FX_FLOAT32 ? 0x1p-24 : 0x1p-53;
    size_t wrong = 0;

    for (size_t i = 0; i < k->count; i++) {
        long double sum = 0;
        long double mag = 0;
        double g        = k->dt == FX_FLOAT32 ? ((const float *)got)[i] : ((const double *)got)[i];

        for (int r = 0; r < k->nranks; r++) {
            double x = random_value(k->dt, k->seed, r, i);

            sum += x;
            mag += fabs(x);
        }
        if (k->op == FX_AVG) {
            sum /= k->nranks;
            mag = mag / k->nranks + fabsl(sum);
        }
        if (fabsl((long double)g - sum) > (k->nranks + 1) * eps * mag && wrong++ == 0) {
            snprintf(first, len, "first at [%zu]: got %.17g want %.17Lg", i, g, sum);
        }
    }
    return wrong;
}

static int random_case(fx_comm_t comm, struct harness_child *c, const struct ref_case *k,
                       struct variant var, struct bufs *b)
{
    char first[160];
    fx_status status;
    size_t wrong;

    fill_random(k, c->index, var.inplace ? b->recv : b->send);
    status = do_allreduce(var.inplace ? b->recv : b->send, b->recv, k, var.mode, comm);
    if (status != FX_OK) {
        return record_error(c, comm, "allreduce", k, var, status);
    }
    wrong = check_random(k, b->recv, first, sizeof(first));
    if (wrong != 0) {
        record_wrong(c, "allreduce (random)", k, var, wrong, first);
    }
    c->res->hash = ref_mix(c->res->hash ^ harness_hash(b->recv, k->count * ref_dt_size(k->dt)));
    c->res->ops++;
    return 0;
}

static int run_random(fx_comm_t comm, struct harness_child *c)
{
    static const size_t random_counts[] = {1021, BIG_COUNT};
    struct bufs b                       = {0};
    int failed                          = 0;

    if (alloc_bufs(&b, BIG_COUNT, 1) != 0) {
        free_bufs(&b);
        return 3;
    }
    for (int i = 0; i < 2 * 2 * 2 && !failed; i++) {
        struct ref_case k = {i / 4 ? FX_FLOAT64 : FX_FLOAT32, i / 2 % 2 ? FX_AVG : FX_SUM,
                             random_counts[i % 2], c->nranks, 0};

        k.seed = case_seed(4, &k, i);
        failed = random_case(comm, c, &k, variant_of(i % NVARIANTS, k.dt), &b);
    }
    free_bufs(&b);
    if (!failed) {
        harness_set_status(c, comm, FX_OK);
    }
    return failed || c->res->wrong != 0;
}

static int nranks_random[] = {2, 3, 5, 8};

ParameterizedTestParameters(collectives, random_data_bitwise_identical_on_all_ranks)
{
    return cr_make_param_array(int, nranks_random, 4);
}

ParameterizedTest(int *nranks, collectives, random_data_bitwise_identical_on_all_ranks,
                  .timeout = 120, .fini = harness_kill_all)
{
    struct harness_run_info info;
    char what[64];

    snprintf(what, sizeof(what), "random fp32/fp64 on %d ranks", *nranks);
    run_clean(*nranks, run_random, 100000, what, &info);
    for (int r = 1; r < info.nprocs; r++) {
        cr_expect_eq(info.shared->res[r].hash, info.shared->res[0].hash,
                     "rank %d's results differ bitwise from rank 0's (hash %016llx vs %016llx)", r,
                     (unsigned long long)info.shared->res[r].hash,
                     (unsigned long long)info.shared->res[0].hash);
    }
    harness_free(&info);
}

/* One of several outstanding operations, with its own buffers. */
struct pending {
    struct ref_case k;
    int gather;
    void *send;
    void *recv;
    fx_request_t req;
};

static const struct ref_case pending_cases[] = {
    {FX_INT32, FX_SUM, 1021, 0, 0},     {FX_FLOAT32, FX_MAX, 7, 0, 0},
    {FX_FLOAT16, FX_AVG, 65537, 0, 0},  {FX_UINT8, FX_PROD, 1, 0, 0},
    {FX_FLOAT64, FX_SUM, 262147, 0, 0}, {FX_BFLOAT16, FX_MIN, 1021, 0, 0},
};

#define NPENDING 4

static fx_status start_pending(fx_comm_t comm, struct harness_child *c, struct pending *p)
{
    size_t bytes = p->k.count * ref_dt_size(p->k.dt);

    p->send = malloc(bytes);
    p->recv = malloc(bytes * (size_t)c->nranks);
    if (p->send == NULL || p->recv == NULL) {
        return FX_ERR_NO_MEMORY;
    }
    if (p->gather) {
        ref_fill_gather(&p->k, c->index, p->send);
        return fx_iallgather(p->send, p->recv, p->k.count, p->k.dt, comm, &p->req);
    }
    ref_fill(&p->k, c->index, p->send);
    return fx_iallreduce(p->send, p->recv, p->k.count, p->k.dt, p->k.op, comm, &p->req);
}

static size_t check_pending(const struct pending *p, char *first, size_t len)
{
    void *expect;
    void *scratch;
    size_t wrong;

    if (p->gather) {
        return ref_check_gather(&p->k, p->recv, first, len);
    }
    expect  = malloc(p->k.count * sizeof(uint64_t));
    scratch = malloc(p->k.count * sizeof(uint64_t));
    if (expect == NULL || scratch == NULL) {
        snprintf(first, len, "out of memory");
        wrong = 1;
    } else {
        ref_expect(&p->k, expect, scratch);
        wrong = ref_compare(&p->k, p->recv, expect, first, len);
    }
    free(expect);
    free(scratch);
    return wrong;
}

/* Waits for p (fx_wait, or polling when poll is set) and checks its result. */
static int finish_pending(fx_comm_t comm, struct harness_child *c, struct pending *p, int poll)
{
    struct variant var = {0, poll ? MODE_TEST : MODE_WAIT};
    fx_status status   = complete(FX_OK, p->req, var.mode);
    const char *coll   = p->gather ? "iallgather (outstanding)" : "iallreduce (outstanding)";
    char first[160];
    size_t wrong;

    if (status != FX_OK) {
        return record_error(c, comm, coll, &p->k, var, status);
    }
    wrong = check_pending(p, first, sizeof(first));
    if (wrong != 0) {
        record_wrong(c, coll, &p->k, var, wrong, first);
    }
    c->res->ops++;
    return 0;
}

/* Starts NPENDING operations from pending_cases[first..], then completes them in the order
 * given (forward, reverse, or polling all of them round-robin). */
static int pending_batch(fx_comm_t comm, struct harness_child *c, int first, int order)
{
    struct pending p[NPENDING] = {0};
    int failed                 = 0;

    for (int i = 0; i < NPENDING && !failed; i++) {
        struct variant var = {0, MODE_WAIT};
        fx_status status;

        p[i].k        = pending_cases[(first + i) % 6];
        p[i].k.nranks = c->nranks;
        p[i].k.seed   = ref_mix((uint64_t)(first * 16 + order * 4 + i));
        p[i].gather   = order == 2 && i % 2 == 1;
        status        = start_pending(comm, c, &p[i]);
        if (status != FX_OK) {
            failed = record_error(c, comm, "start", &p[i].k, var, status);
        }
    }
    for (int j = 0; j < NPENDING && !failed; j++) {
        failed = finish_pending(comm, c, &p[order == 1 ? NPENDING - 1 - j : j], order == 2);
    }
    for (int i = 0; i < NPENDING; i++) {
        free(p[i].send);
        free(p[i].recv);
    }
    return failed;
}

static int run_pending(fx_comm_t comm, struct harness_child *c)
{
    int failed = 0;

    for (int batch = 0; batch < 6 && !failed; batch++) {
        failed = pending_batch(comm, c, batch, batch % 3);
    }
    if (!failed) {
        harness_set_status(c, comm, FX_OK);
    }
    return failed || c->res->wrong != 0;
}

static int nranks_pending[] = {2, 4, 7};

ParameterizedTestParameters(collectives, outstanding_requests_complete_in_any_wait_order)
{
    return cr_make_param_array(int, nranks_pending, 3);
}

ParameterizedTest(int *nranks, collectives, outstanding_requests_complete_in_any_wait_order,
                  .timeout = 90, .fini = harness_kill_all)
{
    struct harness_run_info info;
    char what[64];

    snprintf(what, sizeof(what), "outstanding requests on %d ranks", *nranks);
    run_clean(*nranks, run_pending, 80000, what, &info);
    harness_free(&info);
}

/* ---- FX_ALGO: rank 0's value holds for the job, and the algorithm used is reported ---- */

/* Rank 0 exports c->arg as FX_ALGO ("" for none), the others ask for the exchange; then one
 * 64-element int32 all-reduce, checked, and the algorithm it used goes to res->log. */
static int forced_algo(struct harness_child *c)
{
    fx_comm_t comm = NULL;
    int32_t buf[64];
    fx_status status;

    setenv("FX_ALGO", c->index == 0 ? (const char *)c->arg : "allreduce:pair", 1);
    harness_use_loopback();
    status              = fx_comm_init_rank(&comm, c->nranks, c->id, c->index);
    c->res->init_status = status;
    if (status != FX_OK) {
        harness_set_status(c, NULL, status);
        return 1;
    }
    for (int i = 0; i < 64; i++) {
        buf[i] = (c->index + 1) * i;
    }
    status = fx_allreduce(buf, buf, 64, FX_INT32, FX_SUM, comm);
    for (int i = 0; i < 64 && status == FX_OK; i++) {
        c->res->wrong += buf[i] != i * c->nranks * (c->nranks + 1) / 2;
    }
    snprintf(c->res->log, sizeof(c->res->log), "%s", fx_comm_last_algo(comm));
    harness_set_status(c, comm, status);
    fx_comm_destroy(comm);
    return status != FX_OK;
}

static void expect_algo_used(const char *rank0_env, const char *want)
{
    struct harness_opts opts = {
        .nranks = 2, .deadline_ms = 30000, .raw_fn = forced_algo, .arg = (void *)rank0_env};
    struct harness_run_info info;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    for (int r = 0; r < info.nprocs; r++) {
        const struct harness_result *res = &info.shared->res[r];

        cr_expect_eq(res->status, FX_OK, "FX_ALGO='%s': rank %d: %s", rank0_env, r, res->err);
        cr_expect_eq(res->wrong, 0, "FX_ALGO='%s': rank %d has wrong elements", rank0_env, r);
        cr_expect_str_eq(res->log, want, "FX_ALGO='%s' on rank 0: rank %d ran %s, want %s",
                         rank0_env, r, res->log, want);
    }
    harness_free(&info);
}

Test(collectives, fx_algo_of_rank_0_holds_for_the_job, .timeout = 60, .fini = harness_kill_all)
{
    expect_algo_used("allreduce:ring", "ring");
    expect_algo_used("", "pair"); /* the tuner's choice for 256 bytes on two ranks */
}

/* A malformed FX_ALGO fails init on the rank that has it, naming the bad item. */
static int bad_algo(struct harness_child *c)
{
    fx_comm_t comm = NULL;
    fx_status status;

    setenv("FX_ALGO", "allreduce:bogus", 1);
    harness_use_loopback();
    status              = fx_comm_init_rank(&comm, 1, c->id, 0);
    c->res->init_status = status;
    snprintf(c->res->err, sizeof(c->res->err), "%s", fx_last_error());
    if (status == FX_OK) {
        fx_comm_destroy(comm);
    }
    return 0;
}

Test(collectives, malformed_fx_algo_fails_init_naming_it, .timeout = 30, .fini = harness_kill_all)
{
    struct harness_opts opts = {.nranks = 1, .deadline_ms = 20000, .raw_fn = bad_algo};
    struct harness_run_info info;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    cr_expect_eq(info.shared->res[0].init_status, FX_ERR_INVALID_ARG);
    cr_expect(strstr(info.shared->res[0].err, "allreduce has no algorithm 'bogus'") != NULL,
              "init error: %s", info.shared->res[0].err);
    harness_free(&info);
}

/* ---- fx_comm_split ---- */

/* Splits 6 ranks three ways: even ranks (color 0, keys reversing their order), odd ranks but
 * the last (color 7, by rank) and the last rank alone with FX_SPLIT_NOCOLOR; checks each new
 * communicator's size, rank order and an all-reduce on it, then splits the even group again
 * and runs a collective on the parent between the two to show both stay usable. */
static int run_split(fx_comm_t comm, struct harness_child *c)
{
    int me           = c->index;
    int last         = me == c->nranks - 1;
    int color        = last ? FX_SPLIT_NOCOLOR : me % 2 == 0 ? 0 : 7;
    fx_comm_t sub    = NULL;
    fx_comm_t sub2   = NULL;
    int64_t v        = me;
    int rank         = -1;
    int size         = -1;
    fx_status status = fx_comm_split(comm, color, color == 0 ? -me : me, &sub);

    if (status != FX_OK) {
        return record_error(c, comm, "split", &(struct ref_case){0}, variant_of(0, 0), status);
    }
    if (last) {
        c->res->wrong += sub != NULL;
        harness_set_status(c, comm, fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, comm));
        return 0;
    }
    fx_comm_rank(sub, &rank);
    fx_comm_size(sub, &size);
    /* Even ranks 0, 2, 4 in reverse order; odd ranks 1, 3 in rank order. */
    if (color == 0) {
        c->res->wrong += size != 3 || rank != (4 - me) / 2;
    } else {
        c->res->wrong += size != 2 || rank != me / 2;
    }
    status = fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, sub);
    c->res->wrong += status == FX_OK && v != (color == 0 ? 0 + 2 + 4 : 1 + 3);
    if (status == FX_OK) {
        v      = me;
        status = fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, comm);
        c->res->wrong += status == FX_OK && v != 15;
    }
    if (status == FX_OK && color == 0) {
        status = fx_comm_split(sub, rank == 0 ? FX_SPLIT_NOCOLOR : 1, 0, &sub2);
        c->res->wrong += status == FX_OK && (rank == 0) != (sub2 == NULL);
        if (status == FX_OK && sub2 != NULL) {
            v      = 1;
            status = fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, sub2);
            c->res->wrong += status == FX_OK && v != 2;
        }
    }
    if (status != FX_OK) {
        harness_logf(c, "rank %d: %s", me, fx_strerror(status));
    }
    harness_set_status(c, comm, status);
    fx_comm_destroy(sub2);
    fx_comm_destroy(sub);
    return status != FX_OK;
}

Test(collectives, split_makes_working_sub_communicators, .timeout = 60, .fini = harness_kill_all)
{
    struct harness_run_info info;

    run_clean(6, run_split, 50000, "split of 6 ranks", &info);
    harness_free(&info);
}

/* Rank 1 passes an invalid color: every rank returns FX_ERR_INVALID_ARG naming it. */
static int run_bad_split(fx_comm_t comm, struct harness_child *c)
{
    fx_comm_t sub    = NULL;
    fx_status status = fx_comm_split(comm, c->index == 1 ? -5 : 0, 0, &sub);

    c->res->status = status;
    fx_comm_get_error(comm, c->res->err, sizeof(c->res->err));
    c->res->wrong += sub != NULL;
    /* The parent stays usable. */
    if (status == FX_ERR_INVALID_ARG) {
        int64_t v = 1;

        c->res->wrong += fx_allreduce(&v, &v, 1, FX_INT64, FX_SUM, comm) != FX_OK || v != c->nranks;
    }
    return 0;
}

Test(collectives, split_with_an_invalid_color_fails_on_every_rank, .timeout = 60,
     .fini = harness_kill_all)
{
    struct harness_opts opts = {
        .nranks = 4, .deadline_ms = 30000, .sync_destroy = 1, .rank_fn = run_bad_split};
    struct harness_run_info info;

    cr_assert_eq(harness_run(&opts, &info), 0, "harness could not start");
    for (int r = 0; r < info.nprocs; r++) {
        const struct harness_result *res = &info.shared->res[r];

        cr_expect_eq(res->status, FX_ERR_INVALID_ARG, "rank %d: status %d", r, res->status);
        cr_expect(strstr(res->err, "rank 1 passed color -5") != NULL, "rank %d: %s", r, res->err);
        cr_expect_eq(res->wrong, 0, "rank %d: a new communicator, or the parent broke", r);
    }
    harness_free(&info);
}
