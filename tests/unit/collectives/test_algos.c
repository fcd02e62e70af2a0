/*
 * Tree, recursive-doubling and Rabenseifner all-reduces and recursive-doubling and Bruck
 * all-gathers, run for all ranks at once through the simulator: the data that lands (with the
 * final transformation applied exactly once to every element), bitwise identical results under
 * order-sensitive and floating-point reductions, bytes per link, shuffled schedules, tree shape
 * and argument checks.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_algos.h"
#include "collectives/coll_sim.h"

#define MAX_RANKS 17
#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

typedef fx_status (*build_fn)(struct fx_plan *plan, int nranks, int rank, size_t count,
                              size_t elem_size, size_t chunk_bytes, uint32_t nslots);

/* How the reduce callback combines elements. */
enum op_mode {
    OP_SUM,   /* wrapping integer sum; FX_PLAN_FINAL maps v to 3 v + 1 */
    OP_ORDER, /* dst = 3 first + second, wrapping: neither commutative nor associative */
    OP_FLOAT, /* float or double sum: not associative */
};

struct cfg {
    int n;
    size_t count;
    size_t es;
    size_t chunk_bytes;
    uint32_t nslots;
    int in_place;
    uint32_t seed;
    enum op_mode mode;
};

/* Expected bytes per link [src * n + dst], given a zeroed matrix. */
typedef void (*links_fn)(const struct cfg *c, uint64_t *m);

struct algo {
    const char *name;
    build_fn build;
    int gather;
    links_fn links;
    int (*unsupported)(const struct cfg *c); /* the documented FX_ERR_UNSUPPORTED condition */
};

struct run {
    struct cfg c;
    const struct algo *a;
    struct fx_plan plans[MAX_RANKS];
    unsigned char *in[MAX_RANKS];
    unsigned char *send[MAX_RANKS]; /* NULL in place */
    unsigned char *recv[MAX_RANKS];
    size_t recv_count;
    struct fx_coll_sim_rank ranks[MAX_RANKS];
    struct fx_coll_sim_result res;
};

#define CFG_FMT "%s n %d count %zu elem %zu chunk %zu nslots %u %s seed %u mode %d"
#define CFG_ARGS(r)                                                                                \
    (r)->a->name, (r)->c.n, (r)->c.count, (r)->c.es, (r)->c.chunk_bytes, (r)->c.nslots,            \
        (r)->c.in_place ? "in place" : "out of place", (r)->c.seed, (int)(r)->c.mode

static fx_status rd_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                              size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    (void)nslots;
    return fx_coll_rd_allgather(plan, nranks, rank, count, elem_size, chunk_bytes);
}

static fx_status bruck_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes, uint32_t nslots)
{
    (void)nslots;
    return fx_coll_bruck_allgather(plan, nranks, rank, count, elem_size, chunk_bytes);
}

static int pow2_floor(int n)
{
    int p = 1;

    while (2 * p <= n) {
        p *= 2;
    }
    return p;
}

static int log2_ceil(int n)
{
    int k = 0;

    while ((1 << k) < n) {
        k++;
    }
    return k;
}

static size_t chunk_elems(const struct cfg *c)
{
    size_t e = (c->chunk_bytes ? c->chunk_bytes : (size_t)1 << 20) / c->es;

    return e ? e : 1;
}

/* The rank standing for virtual rank v when n ranks fold onto a power of two. */
static int folded_rank(int v, int rem)
{
    return v < rem ? 2 * v + 1 : v + rem;
}

static int never(const struct cfg *c)
{
    (void)c;
    return 0;
}

/* Recursive doubling needs (log2 p + 1) slots per chunk of the buffer. */
static int rd_ar_unsupported(const struct cfg *c)
{
    size_t chunks = (c->count + chunk_elems(c) - 1) / chunk_elems(c);
    size_t sets   = (size_t)log2_ceil(pow2_floor(c->n)) + 1;

    return c->n > 1 && c->count > 0 && chunks * sets > (c->nslots ? c->nslots : 1);
}

static int not_pow2(const struct cfg *c)
{
    return (c->n & (c->n - 1)) != 0;
}

/* Fold pairs exchange the whole buffer once each way; each exchange once each way. */
static void rd_ar_links(const struct cfg *c, uint64_t *m)
{
    int n         = c->n;
    int p         = pow2_floor(n);
    int rem       = n - p;
    uint64_t full = (uint64_t)c->count * c->es;

    for (int i = 0; i < rem; i++) {
        m[(2 * i) * n + 2 * i + 1] += full;
        m[(2 * i + 1) * n + 2 * i] += full;
    }
    for (int v = 0; v < p; v++) {
        for (int bit = 1; bit < p; bit *= 2) {
            m[folded_rank(v, rem) * n + folded_rank(v ^ bit, rem)] += full;
        }
    }
}

/* Step k: rank r sends 2^k blocks to r ^ 2^k. */
static void rd_ag_links(const struct cfg *c, uint64_t *m)
{
    for (int r = 0; r < c->n; r++) {
        for (int bit = 1; bit < c->n; bit *= 2) {
            m[r * c->n + (r ^ bit)] += (uint64_t)bit * c->count * c->es;
        }
    }
}

/* Step k: rank r sends min(2^k, n - 2^k) blocks to r - 2^k. */
static void bruck_links(const struct cfg *c, uint64_t *m)
{
    int n = c->n;

    for (int r = 0; r < n; r++) {
        for (int d = 1; d < n; d *= 2) {
            m[r * n + (r - d + n) % n] += (uint64_t)(d < n - d ? d : n - d) * c->count * c->es;
        }
    }
}

/* Each tree carries its half (the first ceil(count / 2) elements, or the rest) both ways over
 * each of its edges. */
static void tree_links(const struct cfg *c, uint64_t *m)
{
    uint64_t half[2] = {(uint64_t)(c->count - c->count / 2) * c->es,
                        (uint64_t)(c->count / 2) * c->es};

    for (int tree = 0; tree < 2; tree++) {
        for (int r = 0; r < c->n; r++) {
            int parent;
            int kids[2];

            cr_assert_eq(fx_coll_tree_links(c->n, r, tree, &parent, kids), FX_OK);
            if (parent >= 0) {
                m[r * c->n + parent] += half[tree];
                m[parent * c->n + r] += half[tree];
            }
        }
    }
}

static uint64_t blocks_bytes(const struct cfg *c, int p, int first, int nblocks)
{
    uint64_t sum = 0;

    for (int b = first; b < first + nblocks; b++) {
        sum += c->count / (size_t)p + ((size_t)b < c->count % (size_t)p ? 1 : 0);
    }
    return sum * c->es;
}

/* Fold pairs exchange the whole buffer; halving step with mask m sends the partner's half of
 * the current range (m blocks); doubling step with mask m sends the m blocks owned. */
static void rab_links(const struct cfg *c, uint64_t *m)
{
    int n   = c->n;
    int p   = pow2_floor(n);
    int rem = n - p;

    for (int i = 0; i < rem; i++) {
        m[(2 * i) * n + 2 * i + 1] += (uint64_t)c->count * c->es;
        m[(2 * i + 1) * n + 2 * i] += (uint64_t)c->count * c->es;
    }
    for (int v = 0; v < p; v++) {
        int src = folded_rank(v, rem);

        for (int mask = p / 2; mask >= 1; mask /= 2) {
            int w = v ^ mask;

            m[src * n + folded_rank(w, rem)] += blocks_bytes(c, p, w & ~(mask - 1), mask) +
                                                blocks_bytes(c, p, v & ~(mask - 1), mask);
        }
    }
}

static const struct algo rab_ar  = {"rabenseifner_allreduce", fx_coll_rabenseifner_allreduce, 0,
                                    rab_links, never};
static const struct algo tree_ar = {"tree_allreduce", fx_coll_tree_allreduce, 0, tree_links, never};
static const struct algo rd_ar   = {"rd_allreduce", fx_coll_rd_allreduce, 0, rd_ar_links,
                                    rd_ar_unsupported};
static const struct algo rd_ag   = {"rd_allgather", rd_allgather, 1, rd_ag_links, not_pow2};
static const struct algo bruck_ag = {"bruck_allgather", bruck_allgather, 1, bruck_links, never};

static uint64_t load(const unsigned char *p, size_t es)
{
    uint64_t v = 0;

    for (size_t b = 0; b < es; b++) {
        v |= (uint64_t)p[b] << (8 * b);
    }
    return v;
}

static void store(unsigned char *p, size_t es, uint64_t v)
{
    for (size_t b = 0; b < es; b++) {
        p[b] = (unsigned char)(v >> (8 * b));
    }
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 29);
}

/* Inputs: integers, or for OP_FLOAT floats of widely different magnitudes. */
static void fill_input(unsigned char *p, const struct cfg *c, int rank)
{
    for (size_t i = 0; i < c->count; i++) {
        uint64_t x = mix(((uint64_t)rank + 1) * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull);

        if (c->mode == OP_FLOAT && c->es == 4) {
            float f = (float)((double)(x % 2001) - 1000.0) * (float)(1u << (x >> 60));

            memcpy(p + i * 4, &f, 4);
        } else if (c->mode == OP_FLOAT && c->es == 8) {
            double d = ((double)(x % 20001) - 10000.0) / 7.0 * (double)(1ull << (x >> 58));

            memcpy(p + i * 8, &d, 8);
        } else {
            store(p + i * c->es, c->es, x);
        }
    }
}

static void combine(const struct cfg *c, unsigned char *dst, const unsigned char *a,
                    const unsigned char *b, int final)
{
    if (c->mode == OP_FLOAT && c->es == 4) {
        float x;
        float y;

        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        x += y;
        memcpy(dst, &x, 4);
    } else if (c->mode == OP_FLOAT && c->es == 8) {
        double x;
        double y;

        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        x += y;
        memcpy(dst, &x, 8);
    } else if (c->mode == OP_ORDER) {
        store(dst, c->es, 3 * load(a, c->es) + load(b, c->es));
    } else {
        uint64_t v = load(a, c->es) + load(b, c->es);

        store(dst, c->es, final ? 3 * v + 1 : v);
    }
}

static void reduce_cb(void *ctx, void *dst, const void *first, const void *second, size_t count,
                      int final)
{
    const struct run *r = ctx;
    size_t es           = r->c.es;

    for (size_t i = 0; i < count; i++) {
        combine(&r->c, (unsigned char *)dst + i * es, (const unsigned char *)first + i * es,
                (const unsigned char *)second + i * es, final);
    }
}

static void run_free(struct run *r)
{
    for (int k = 0; k < MAX_RANKS; k++) {
        fx_plan_fini(&r->plans[k]);
        free(r->in[k]);
        free(r->send[k]);
        free(r->recv[k]);
    }
    fx_coll_sim_result_fini(&r->res);
    free(r);
}

static struct run *run_new(const struct algo *a, const struct cfg *c)
{
    struct run *r = calloc(1, sizeof(*r));
    size_t bytes  = c->count * c->es;

    cr_assert_not_null(r);
    r->c          = *c;
    r->a          = a;
    r->recv_count = a->gather ? c->count * (size_t)c->n : c->count;
    for (int k = 0; k < c->n; k++) {
        unsigned char *own;

        fx_plan_init(&r->plans[k]);
        r->in[k]   = malloc(bytes + 1);
        r->recv[k] = malloc(r->recv_count * c->es + 1);
        cr_assert(r->in[k] && r->recv[k]);
        fill_input(r->in[k], c, k);
        memset(r->recv[k], 0xa5, r->recv_count * c->es);
        own = r->recv[k] + (a->gather ? (size_t)k * bytes : 0);
        if (c->in_place) {
            memcpy(own, r->in[k], bytes);
        } else {
            r->send[k] = malloc(bytes + 1);
            cr_assert_not_null(r->send[k]);
            memcpy(r->send[k], r->in[k], bytes);
        }
        r->ranks[k] = (struct fx_coll_sim_rank){
            .plan       = &r->plans[k],
            .sendbuf    = c->in_place ? own : r->send[k],
            .send_count = c->count,
            .recvbuf    = r->recv[k],
            .recv_count = r->recv_count,
        };
    }
    return r;
}

/* Builds every rank's plan; returns the common status (they must agree). */
static fx_status build_all(struct run *r)
{
    fx_status first = FX_OK;

    for (int k = 0; k < r->c.n; k++) {
        fx_status s = r->a->build(&r->plans[k], r->c.n, k, r->c.count, r->c.es, r->c.chunk_bytes,
                                  r->c.nslots);

        if (k == 0) {
            first = s;
        }
        cr_assert_eq(s, first, "rank %d returned %d, rank 0 %d; " CFG_FMT, k, s, first,
                     CFG_ARGS(r));
        if (s == FX_OK) {
            const struct fx_plan *p = &r->plans[k];

            cr_assert_leq(p->slot_count * r->c.es,
                          r->c.chunk_bytes
                              ? (r->c.chunk_bytes < r->c.es ? r->c.es : r->c.chunk_bytes)
                              : (size_t)1 << 20,
                          "rank %d slot of %zu elements; " CFG_FMT, k, p->slot_count, CFG_ARGS(r));
            cr_assert_leq(p->nslots, r->c.nslots ? r->c.nslots : 1, "rank %d uses %u slots", k,
                          p->nslots);
        }
    }
    return first;
}

static void expect_recv(const struct run *r, int k, const unsigned char *want)
{
    size_t es = r->c.es;

    if (memcmp(r->recv[k], want, r->recv_count * es) == 0) {
        return;
    }
    for (size_t i = 0; i < r->recv_count; i++) {
        if (memcmp(r->recv[k] + i * es, want + i * es, es) != 0) {
            cr_expect_fail("rank %d element %zu is %#llx, expected %#llx; " CFG_FMT, k, i,
                           (unsigned long long)load(r->recv[k] + i * es, es),
                           (unsigned long long)load(want + i * es, es), CFG_ARGS(r));
            return;
        }
    }
}

/* The expected result: the sum with the final map applied once, or the concatenation. */
static unsigned char *reference(const struct run *r)
{
    size_t es          = r->c.es;
    unsigned char *ref = calloc(r->recv_count * es + 1, 1);

    cr_assert_not_null(ref);
    for (int k = 0; k < r->c.n; k++) {
        if (r->a->gather) {
            memcpy(ref + (size_t)k * r->c.count * es, r->in[k], r->c.count * es);
            continue;
        }
        for (size_t i = 0; i < r->c.count; i++) {
            store(ref + i * es, es, load(ref + i * es, es) + load(r->in[k] + i * es, es));
        }
    }
    for (size_t i = 0; i < r->c.count && !r->a->gather && r->c.n > 1; i++) {
        store(ref + i * es, es, 3 * load(ref + i * es, es) + 1);
    }
    return ref;
}

static void expect_links(const struct run *r)
{
    int n       = r->c.n;
    uint64_t *m = calloc((size_t)n * (size_t)n, sizeof(*m));

    cr_assert_not_null(m);
    if (n > 1 && r->c.count > 0) {
        r->a->links(&r->c, m);
    }
    for (int s = 0; s < n; s++) {
        for (int d = 0; d < n; d++) {
            cr_expect_eq(r->res.link_bytes[s * n + d], m[s * n + d],
                         "link %d -> %d carried %llu bytes, expected %llu; " CFG_FMT, s, d,
                         (unsigned long long)r->res.link_bytes[s * n + d],
                         (unsigned long long)m[s * n + d], CFG_ARGS(r));
        }
    }
    free(m);
}

/* Builds, simulates and checks one configuration. */
static void check(const struct algo *a, const struct cfg *c)
{
    struct run *r    = run_new(a, c);
    fx_status status = build_all(r);

    if (a->unsupported(c)) {
        cr_expect_eq(status, FX_ERR_UNSUPPORTED, "expected unsupported; " CFG_FMT, CFG_ARGS(r));
        run_free(r);
        return;
    }
    cr_assert_eq(status, FX_OK, "build: %d; " CFG_FMT, status, CFG_ARGS(r));
    cr_assert_eq(fx_coll_sim_run(r->ranks, c->n, reduce_cb, r, c->seed, &r->res), FX_OK,
                 "%s; " CFG_FMT, r->res.error, CFG_ARGS(r));
    if (c->mode == OP_SUM || a->gather) {
        unsigned char *ref = reference(r);

        for (int k = 0; k < c->n; k++) {
            expect_recv(r, k, ref);
        }
        free(ref);
    } else {
        for (int k = 1; k < c->n; k++) {
            expect_recv(r, k, r->recv[0]);
        }
    }
    expect_links(r);
    run_free(r);
}

static const size_t elem_sizes[]  = {1, 2, 4, 8};
static const size_t chunk_sizes[] = {0, 8, 12, 4096};
static const uint32_t slot_nums[] = {1, 3, 4096};

/*
 * One rank count: counts 0, 1, n - 1, n + 1, 7, 1021 and a large one over several chunks, each
 * element size, and a rotation through chunk sizes, slot counts, placement and seeds; the
 * integer sum everywhere, then the order-sensitive op (1- and 2-byte elements) or float sums.
 */
static void sweep(const struct algo *a, int n)
{
    /* All-gathers move n blocks: their large count keeps the buffer near 20000 elements. */
    size_t large    = a->gather ? 20000 / (size_t)n : 20000;
    size_t counts[] = {0, 1, (size_t)n - 1, (size_t)n + 1, 7, 1021, large};
    unsigned rot    = 0;

    for (size_t ci = 0; ci < NELEMS(counts); ci++) {
        for (size_t ei = 0; ei < NELEMS(elem_sizes); ei++) {
            for (int v = 0; v < 4; v++, rot++) {
                struct cfg c = {.n           = n,
                                .count       = counts[ci],
                                .es          = elem_sizes[ei],
                                .chunk_bytes = chunk_sizes[(rot + (unsigned)v) % 4],
                                .nslots      = slot_nums[(rot / 4 + (unsigned)v) % 3],
                                .in_place    = v & 1,
                                .seed        = v < 2 ? 0 : rot + 1,
                                .mode        = OP_SUM};

                /* Tiny chunks only for buffers of up to a few thousand elements. */
                if (c.count * (a->gather ? (size_t)n : 1) > 3000 && c.chunk_bytes > 0 &&
                    c.chunk_bytes < 4096) {
                    c.chunk_bytes = 4096;
                }
                if (v == 3) {
                    c.mode = c.es >= 4 ? OP_FLOAT : OP_ORDER;
                }
                check(a, &c);
            }
        }
    }
}

#define RANK_PARAMS(suite, name)                                                                   \
    ParameterizedTestParameters(suite, name)                                                       \
    {                                                                                              \
        static int nranks[MAX_RANKS];                                                              \
                                                                                                   \
        for (int i = 0; i < MAX_RANKS; i++) {                                                      \
            nranks[i] = i + 1;                                                                     \
        }                                                                                          \
        return cr_make_param_array(int, nranks, MAX_RANKS);                                        \
    }

RANK_PARAMS(algos, rd_allreduce_sums_alike_on_every_rank)
ParameterizedTest(int *n, algos, rd_allreduce_sums_alike_on_every_rank, .timeout = 60)
{
    sweep(&rd_ar, *n);
}

RANK_PARAMS(algos, tree_allreduce_sums_alike_on_every_rank)
ParameterizedTest(int *n, algos, tree_allreduce_sums_alike_on_every_rank, .timeout = 60)
{
    sweep(&tree_ar, *n);
}

RANK_PARAMS(algos, rabenseifner_allreduce_sums_alike_on_every_rank)
ParameterizedTest(int *n, algos, rabenseifner_allreduce_sums_alike_on_every_rank, .timeout = 60)
{
    sweep(&rab_ar, *n);
}

RANK_PARAMS(algos, rd_allgather_concatenates_on_every_rank)
ParameterizedTest(int *n, algos, rd_allgather_concatenates_on_every_rank, .timeout = 60)
{
    sweep(&rd_ag, *n);
}

RANK_PARAMS(algos, bruck_allgather_concatenates_on_every_rank)
ParameterizedTest(int *n, algos, bruck_allgather_concatenates_on_every_rank, .timeout = 60)
{
    sweep(&bruck_ag, *n);
}

Test(algos, rd_allreduce_unsupported_exactly_past_its_slots, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    /* 8 ranks: 3 exchanges, 4 values of 2 chunks each. */
    cr_expect_eq(fx_coll_rd_allreduce(&p, 8, 3, 16, 4, 32, 8), FX_OK);
    cr_expect_eq(p.nslots, 8);
    cr_expect_eq(fx_coll_rd_allreduce(&p, 8, 3, 16, 4, 32, 7), FX_ERR_UNSUPPORTED);
    cr_expect_eq(fx_coll_rd_allreduce(&p, 8, 3, 17, 4, 32, 8), FX_ERR_UNSUPPORTED);
    /* A single rank or an empty buffer needs no slot. */
    cr_expect_eq(fx_coll_rd_allreduce(&p, 1, 0, 1000, 4, 4, 0), FX_OK);
    cr_expect_eq(fx_coll_rd_allreduce(&p, 5, 4, 0, 4, 4, 0), FX_OK);
    cr_expect_eq(p.nops, 0);
    fx_plan_fini(&p);
}

Test(algos, rejects_invalid_arguments, .timeout = 10)
{
    static const struct algo *all[] = {&tree_ar, &rd_ar, &rab_ar, &rd_ag, &bruck_ag};
    struct fx_plan p;

    fx_plan_init(&p);
    for (size_t i = 0; i < NELEMS(all); i++) {
        build_fn b = all[i]->build;

        cr_expect_eq(b(NULL, 4, 0, 8, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, 0, 0, 8, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, -2, 0, 8, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, 4, 4, 8, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, 4, -1, 8, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, 4, 0, 8, 0, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
        cr_expect_eq(b(&p, 4, 0, SIZE_MAX / 2, 4, 0, 64), FX_ERR_INVALID_ARG, "%s", all[i]->name);
    }
    /* count * nranks * elem_size overflows although count * elem_size does not. */
    cr_expect_eq(fx_coll_bruck_allgather(&p, 4, 0, SIZE_MAX / 8 + 1, 2, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_rd_allgather(&p, 4, 0, SIZE_MAX / 8 + 1, 2, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_rd_allgather(&p, 6, 0, 8, 4, 0), FX_ERR_UNSUPPORTED);
    cr_expect_eq(fx_coll_rd_allgather(&p, 6, 6, 8, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(p.nops, 0);
    fx_plan_fini(&p);
}

/*
 * Rendezvous check: replays the plans where a send completes only once its matching receive
 * has been posted (as with large messages over shared memory or RDMA), receives of one peer
 * complete in order, and an op is posted after the op before it in its lane and after its
 * dependency has completed. Returns 1 when every op completes, 0 on a deadlock.
 */
struct rdv {
    int n;
    const struct fx_plan *p[MAX_RANKS];
    int *match[MAX_RANKS]; /* per op: the matching op's index on the peer, -1 for a copy */
    int *prev[MAX_RANKS];  /* per op: the previous op of its lane, -1 for none */
    char *posted[MAX_RANKS];
    char *done[MAX_RANKS];
};

static int lane_key(const struct fx_plan_op *op, int n)
{
    return op->kind == FX_PLAN_COPY ? 2 * n : (op->kind == FX_PLAN_SEND ? 0 : n) + op->peer;
}

/* The index of the k-th op of rank `rank` in lane `lane`, or -1. */
static int kth_in_lane(const struct fx_plan *p, int n, int lane, int k)
{
    for (size_t i = 0; i < p->nops; i++) {
        if (lane_key(&p->ops[i], n) == lane && k-- == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void rdv_setup(struct rdv *v, const struct run *r)
{
    v->n = r->c.n;
    for (int k = 0; k < v->n; k++) {
        const struct fx_plan *p = &r->plans[k];
        int *seen               = calloc(2 * (size_t)v->n + 1, sizeof(int));
        int *last               = malloc((2 * (size_t)v->n + 1) * sizeof(int));

        v->p[k]      = p;
        v->match[k]  = calloc(p->nops + 1, sizeof(int));
        v->prev[k]   = calloc(p->nops + 1, sizeof(int));
        v->posted[k] = calloc(p->nops + 1, 1);
        v->done[k]   = calloc(p->nops + 1, 1);
        cr_assert(seen && last && v->match[k] && v->prev[k] && v->posted[k] && v->done[k]);
        memset(last, 0xff, (2 * (size_t)v->n + 1) * sizeof(int));
        for (size_t i = 0; i < p->nops; i++) {
            const struct fx_plan_op *op = &p->ops[i];
            int lane                    = lane_key(op, v->n);
            int peer_lane               = op->kind == FX_PLAN_SEND ? v->n + k : k; /* on the peer */

            v->prev[k][i]  = last[lane];
            last[lane]     = (int)i;
            v->match[k][i] = op->kind == FX_PLAN_COPY
                                 ? -1
                                 : kth_in_lane(&r->plans[op->peer], v->n, peer_lane, seen[lane]);
            seen[lane]++;
        }
        free(seen);
        free(last);
    }
}

/* One pass: posts and completes what it can; returns how many changes it made. */
static int rdv_pass(struct rdv *v)
{
    int changes = 0;

    for (int k = 0; k < v->n; k++) {
        for (size_t i = 0; i < v->p[k]->nops; i++) {
            const struct fx_plan_op *op = &v->p[k]->ops[i];
            int pr                      = v->prev[k][i];
            int m                       = v->match[k][i];

            if (!v->posted[k][i] && (pr < 0 || v->posted[k][pr]) &&
                (op->dep < 0 || v->done[k][op->dep])) {
                v->posted[k][i] = 1;
                changes++;
            }
            if (v->posted[k][i] && !v->done[k][i] &&
                (op->kind == FX_PLAN_COPY ||
                 (m >= 0 && v->posted[op->peer][m] &&
                  (op->kind == FX_PLAN_SEND || pr < 0 || v->done[k][pr])))) {
                v->done[k][i] = 1;
                changes++;
            }
        }
    }
    return changes;
}

static int rendezvous_completes(const struct run *r, int report)
{
    struct rdv v = {0};
    int ok       = 1;

    rdv_setup(&v, r);
    while (rdv_pass(&v) > 0) {
    }
    for (int k = 0; k < v.n; k++) {
        for (size_t i = 0; i < v.p[k]->nops; i++) {
            if (!v.done[k][i] && ok && report) {
                cr_expect_fail("rank %d op %zu (kind %u peer %d) never completes; " CFG_FMT, k, i,
                               v.p[k]->ops[i].kind, (int)v.p[k]->ops[i].peer, CFG_ARGS(r));
            }
            ok &= v.done[k][i];
        }
        free(v.match[k]);
        free(v.prev[k]);
        free(v.posted[k]);
        free(v.done[k]);
    }
    return ok;
}

static void check_rendezvous(const struct algo *a)
{
    for (int n = 2; n <= MAX_RANKS; n++) {
        static const size_t counts[] = {1, 13, 200};

        for (size_t ci = 0; ci < NELEMS(counts); ci++) {
            struct cfg c = {
                .n = n, .count = counts[ci], .es = 4, .chunk_bytes = 16, .nslots = 4096};
            struct run *r = run_new(a, &c);

            if (build_all(r) == FX_OK) {
                cr_expect(rendezvous_completes(r, 1), CFG_FMT, CFG_ARGS(r));
            }
            run_free(r);
        }
    }
}

Test(algos, plans_complete_with_rendezvous_sends, .timeout = 60)
{
    check_rendezvous(&tree_ar);
    check_rendezvous(&rd_ar);
    check_rendezvous(&rab_ar);
    check_rendezvous(&rd_ag);
    check_rendezvous(&bruck_ag);
}

/* The checker itself: a plan whose receive waits for its own send deadlocks. */
Test(algos, rendezvous_check_catches_receive_after_send, .timeout = 10)
{
    struct cfg c  = {.n = 2, .count = 4, .es = 4, .nslots = 1};
    struct run *r = run_new(&rd_ag, &c);

    for (int k = 0; k < 2; k++) {
        r->plans[k].nranks    = 2;
        r->plans[k].rank      = k;
        r->plans[k].elem_size = 4;
        cr_assert_eq(fx_plan_push(&r->plans[k], &(struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                                                     .buf   = FX_BUF_SEND,
                                                                     .peer  = 1 - k,
                                                                     .dep   = -1,
                                                                     .count = 4}),
                     0);
        cr_assert_eq(fx_plan_push(&r->plans[k], &(struct fx_plan_op){.kind  = FX_PLAN_RECV,
                                                                     .buf   = FX_BUF_RECV,
                                                                     .peer  = 1 - k,
                                                                     .dep   = 0,
                                                                     .count = 4}),
                     1);
    }
    cr_assert_eq(fx_coll_sim_run(r->ranks, 2, reduce_cb, r, 0, &r->res), FX_OK, "%s", r->res.error);
    cr_expect_not(rendezvous_completes(r, 0));
    run_free(r);
}

/* Depth of rank r in a tree, following parents (bounded: a cycle fails). */
static int tree_depth(int n, int tree, int r)
{
    int d = 0;

    for (;;) {
        int parent;
        int kids[2];

        cr_assert_eq(fx_coll_tree_links(n, r, tree, &parent, kids), FX_OK);
        if (parent < 0) {
            return d;
        }
        r = parent;
        cr_assert_leq(++d, n, "n %d tree %d: parent links form a cycle", n, tree);
    }
}

/* Parents and children agree, one root, height ceil(log2 n), and no rank but 0 (odd n) is
 * interior in both trees. */
Test(algos, double_tree_is_two_complementary_binary_trees, .timeout = 10)
{
    for (int n = 1; n <= 70; n++) {
        int both = 0;

        for (int tree = 0; tree < 2; tree++) {
            int roots  = 0;
            int height = 0;

            for (int r = 0; r < n; r++) {
                int parent;
                int kids[2];
                int pk[2];
                int pp;

                cr_assert_eq(fx_coll_tree_links(n, r, tree, &parent, kids), FX_OK);
                roots += parent < 0;
                cr_expect(kids[0] >= 0 || kids[1] < 0, "n %d tree %d rank %d", n, tree, r);
                for (int k = 0; k < 2 && kids[k] >= 0; k++) {
                    cr_assert(kids[k] < n && kids[k] != r);
                    cr_assert_eq(fx_coll_tree_links(n, kids[k], tree, &pp, pk), FX_OK);
                    cr_expect_eq(pp, r, "n %d tree %d: child %d of %d names parent %d", n, tree,
                                 kids[k], r, pp);
                }
                if (parent >= 0) {
                    cr_assert_eq(fx_coll_tree_links(n, parent, tree, &pp, pk), FX_OK);
                    cr_expect(pk[0] == r || pk[1] == r, "n %d tree %d: %d not a child of %d", n,
                              tree, r, parent);
                }
                height = tree_depth(n, tree, r) > height ? tree_depth(n, tree, r) : height;
            }
            cr_expect_eq(roots, 1, "n %d tree %d: %d roots", n, tree, roots);
            cr_expect_eq(height, log2_ceil(n), "n %d tree %d: height %d", n, tree, height);
        }
        for (int r = 0; r < n; r++) {
            int parent;
            int k0[2];
            int k1[2];

            fx_coll_tree_links(n, r, 0, &parent, k0);
            fx_coll_tree_links(n, r, 1, &parent, k1);
            if (k0[0] >= 0 && k1[0] >= 0) {
                both++;
                cr_expect(n % 2 == 1 && r == 0, "n %d: rank %d interior in both trees", n, r);
            }
        }
        cr_expect_leq(both, 1);
    }
    cr_expect_eq(fx_coll_tree_links(4, 0, 2, &(int){0}, (int[2]){0}), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_tree_links(4, 4, 0, &(int){0}, (int[2]){0}), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_tree_links(0, 0, 0, &(int){0}, (int[2]){0}), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_tree_links(4, 0, 0, NULL, (int[2]){0}), FX_ERR_INVALID_ARG);
}

/*
 * Race check: for every two ops of a rank that touch overlapping memory, one writing, the
 * first must finish before the second starts by a chain of dependencies, lane order and
 * messages. Each op has three events: posted (S), data may land (A: after S and, for a
 * receive, after the matching send was posted) and completed (E). Edges: E(dep) -> S; S of the
 * previous op of a lane -> S (posting order); E of the previous receive of a lane -> E
 * (receives complete in order); S(send) -> A(receive). A send's reading ends at its own
 * completion or once its receive has completed, whichever is known first. In place, FX_BUF_SEND
 * is the receive buffer (all-reduce) or the rank's own block (all-gather); a copy onto itself
 * is skipped, as the executor skips it.
 */
struct hb {
    int n;
    const struct run *r;
    struct rdv v;               /* lanes and matches */
    size_t base[MAX_RANKS + 1]; /* first event of each rank; 3 per op */
    size_t *start;              /* CSR of edges */
    size_t *to;
    int *seen;
    int stamp;
};

struct region {
    int space; /* 0: receive buffer, 1: send buffer (out of place), 2: scratch */
    uint64_t lo;
    uint64_t hi; /* elements */
};

static size_t ev(const struct hb *h, int k, size_t i, int e)
{
    return h->base[k] + 3 * i + (size_t)e;
}

/* Lists the edges into list (pairs), or only counts them when list is NULL. */
static size_t hb_edges(const struct hb *h, size_t *list)
{
    size_t ne = 0;

#define EDGE(a, b)                                                                                 \
    do {                                                                                           \
        if (list != NULL) {                                                                        \
            list[2 * ne]     = (a);                                                                \
            list[2 * ne + 1] = (b);                                                                \
        }                                                                                          \
        ne++;                                                                                      \
    } while (0)
    for (int k = 0; k < h->n; k++) {
        for (size_t i = 0; i < h->r->plans[k].nops; i++) {
            const struct fx_plan_op *op = &h->r->plans[k].ops[i];
            int pr                      = h->v.prev[k][i];

            EDGE(ev(h, k, i, 0), ev(h, k, i, 1));
            EDGE(ev(h, k, i, 1), ev(h, k, i, 2));
            if (op->dep >= 0) {
                EDGE(ev(h, k, (size_t)op->dep, 2), ev(h, k, i, 0));
            }
            if (pr >= 0) {
                EDGE(ev(h, k, (size_t)pr, 0), ev(h, k, i, 0));
            }
            if (pr >= 0 && op->kind != FX_PLAN_SEND && op->kind != FX_PLAN_COPY) {
                EDGE(ev(h, k, (size_t)pr, 2), ev(h, k, i, 2));
            }
            if (op->kind == FX_PLAN_SEND && h->v.match[k][i] >= 0) {
                EDGE(ev(h, k, i, 0), ev(h, op->peer, (size_t)h->v.match[k][i], 1));
            }
        }
    }
#undef EDGE
    return ne;
}

static void hb_setup(struct hb *h, const struct run *r)
{
    size_t ne;
    size_t *list;

    memset(h, 0, sizeof(*h));
    h->n = r->c.n;
    h->r = r;
    rdv_setup(&h->v, r);
    for (int k = 0; k < h->n; k++) {
        h->base[k + 1] = h->base[k] + 3 * r->plans[k].nops;
    }
    ne       = hb_edges(h, NULL);
    list     = malloc(2 * ne * sizeof(size_t) + 1);
    h->start = calloc(h->base[h->n] + 2, sizeof(size_t));
    h->to    = malloc(ne * sizeof(size_t) + 1);
    h->seen  = calloc(h->base[h->n] + 1, sizeof(int));
    cr_assert(list && h->start && h->to && h->seen);
    hb_edges(h, list);
    for (size_t e = 0; e < ne; e++) {
        h->start[list[2 * e] + 2]++;
    }
    for (size_t x = 0; x <= h->base[h->n]; x++) {
        h->start[x + 1] += h->start[x];
    }
    for (size_t e = 0; e < ne; e++) {
        h->to[h->start[list[2 * e] + 1]++] = list[2 * e + 1];
    }
    free(list);
}

static void hb_free(struct hb *h)
{
    for (int k = 0; k < h->n; k++) {
        free(h->v.match[k]);
        free(h->v.prev[k]);
        free(h->v.posted[k]);
        free(h->v.done[k]);
    }
    free(h->start);
    free(h->to);
    free(h->seen);
}

/* Marks every event reachable from `from` with a new stamp. */
static void hb_reach(struct hb *h, size_t from)
{
    size_t *stack = malloc((h->base[h->n] + 1) * sizeof(size_t));
    size_t top    = 0;

    cr_assert_not_null(stack);
    h->stamp++;
    h->seen[from] = h->stamp;
    stack[top++]  = from;
    while (top > 0) {
        size_t x = stack[--top];

        for (size_t e = h->start[x]; e < h->start[x + 1]; e++) {
            if (h->seen[h->to[e]] != h->stamp) {
                h->seen[h->to[e]] = h->stamp;
                stack[top++]      = h->to[e];
            }
        }
    }
    free(stack);
}

/* The memory an op's buffer designation names, after in-place aliasing. */
static struct region region_of(const struct run *r, int k, uint8_t buf, uint64_t off,
                               uint64_t count)
{
    const struct fx_plan *p = &r->plans[k];

    if (buf == FX_BUF_SCRATCH) {
        return (struct region){2, off, off + count};
    }
    if (buf == FX_BUF_SEND && r->c.in_place) {
        off += r->a->gather ? (uint64_t)k * r->c.count : 0;
        buf = FX_BUF_RECV;
    }
    (void)p;
    return (struct region){buf == FX_BUF_RECV ? 0 : 1, off, off + count};
}

/* An op's reads and writes: up to 2 reads and 2 writes. */
static void accesses(const struct run *r, int k, size_t i, struct region rd[2], int *nrd,
                     struct region wr[2], int *nwr)
{
    const struct fx_plan_op *op = &r->plans[k].ops[i];
    const struct fx_plan *p     = &r->plans[k];

    *nrd = 0;
    *nwr = 0;
    switch (op->kind) {
    case FX_PLAN_SEND:
        rd[(*nrd)++] = region_of(r, k, op->buf, op->offset, op->count);
        break;
    case FX_PLAN_RECV:
        wr[(*nwr)++] = region_of(r, k, op->buf, op->offset, op->count);
        break;
    case FX_PLAN_RECV_REDUCE:
        wr[(*nwr)++] =
            region_of(r, k, FX_BUF_SCRATCH, (uint64_t)op->slot * p->slot_count, op->count);
        wr[(*nwr)++] = region_of(r, k, op->buf, op->offset, op->count);
        rd[(*nrd)++] = region_of(r, k, op->src, op->src_offset, op->count);
        break;
    default:
        rd[0] = region_of(r, k, op->src, op->src_offset, op->count);
        wr[0] = region_of(r, k, op->buf, op->offset, op->count);
        /* The executor skips a copy onto itself. */
        if (rd[0].space != wr[0].space || rd[0].lo != wr[0].lo) {
            *nrd = 1;
            *nwr = 1;
        }
        break;
    }
}

static int overlap(const struct region *a, const struct region *b)
{
    return a->space == b->space && a->lo < b->hi && b->lo < a->hi;
}

/* Whether ops a and b of rank k conflict (one writes what the other touches). */
static int conflict(const struct run *r, int k, size_t a, size_t b)
{
    struct region ra[2];
    struct region wa[2];
    struct region rb[2];
    struct region wb[2];
    int nra;
    int nwa;
    int nrb;
    int nwb;

    accesses(r, k, a, ra, &nra, wa, &nwa);
    accesses(r, k, b, rb, &nrb, wb, &nwb);
    for (int x = 0; x < nwa; x++) {
        for (int y = 0; y < nwb; y++) {
            if (overlap(&wa[x], &wb[y])) {
                return 1;
            }
        }
        for (int y = 0; y < nrb; y++) {
            if (overlap(&wa[x], &rb[y])) {
                return 1;
            }
        }
    }
    for (int x = 0; x < nra; x++) {
        for (int y = 0; y < nwb; y++) {
            if (overlap(&ra[x], &wb[y])) {
                return 1;
            }
        }
    }
    return 0;
}

/* The event at which op i starts touching memory: posted, or for receives, data landing. */
static int first_touch(const struct fx_plan_op *op)
{
    return op->kind == FX_PLAN_RECV || op->kind == FX_PLAN_RECV_REDUCE ? 1 : 0;
}

/* Whether op a (of rank k) is known finished before op b starts. */
static int ordered(struct hb *h, int k, size_t a, size_t b)
{
    const struct fx_plan_op *oa = &h->r->plans[k].ops[a];
    size_t target               = ev(h, k, b, first_touch(&h->r->plans[k].ops[b]));

    hb_reach(h, ev(h, k, a, 2));
    if (h->seen[target] == h->stamp) {
        return 1;
    }
    if (oa->kind == FX_PLAN_SEND && h->v.match[k][a] >= 0) {
        hb_reach(h, ev(h, oa->peer, (size_t)h->v.match[k][a], 2));
        return h->seen[target] == h->stamp;
    }
    return 0;
}

static int races_free(const struct run *r)
{
    struct hb h;
    int ok = 1;

    hb_setup(&h, r);
    for (int k = 0; k < r->c.n && ok; k++) {
        size_t nops = r->plans[k].nops;

        for (size_t a = 0; a < nops && ok; a++) {
            for (size_t b = a + 1; b < nops && ok; b++) {
                if (conflict(r, k, a, b) && !ordered(&h, k, a, b) && !ordered(&h, k, b, a)) {
                    cr_expect_fail("rank %d ops %zu (kind %u) and %zu (kind %u) race; " CFG_FMT, k,
                                   a, r->plans[k].ops[a].kind, b, r->plans[k].ops[b].kind,
                                   CFG_ARGS(r));
                    ok = 0;
                }
            }
        }
    }
    hb_free(&h);
    return ok;
}

static void check_races(const struct algo *a)
{
    static const int nranks[]     = {2, 3, 4, 5, 6, 7, 8, 9, 12};
    static const size_t counts[]  = {1, 13, 70};
    static const uint32_t slots[] = {1, 2, 4096};

    for (size_t ni = 0; ni < NELEMS(nranks); ni++) {
        for (size_t ci = 0; ci < NELEMS(counts); ci++) {
            for (size_t si = 0; si < NELEMS(slots); si++) {
                for (int in_place = 0; in_place < 2; in_place++) {
                    struct cfg c  = {.n           = nranks[ni],
                                     .count       = counts[ci],
                                     .es          = 4,
                                     .chunk_bytes = 16,
                                     .nslots      = slots[si],
                                     .in_place    = in_place};
                    struct run *r = run_new(a, &c);

                    if (build_all(r) == FX_OK) {
                        races_free(r);
                    }
                    run_free(r);
                }
            }
        }
    }
}

Test(algos, no_two_ops_race_on_memory, .timeout = 120)
{
    check_races(&tree_ar);
    check_races(&rd_ar);
    check_races(&rab_ar);
    check_races(&rd_ag);
    check_races(&bruck_ag);
}

/* One rank: a single final copy (all-reduce) or own-block copy (all-gather); count 0: no op. */
Test(algos, trivial_calls_give_trivial_plans, .timeout = 10)
{
    static const struct algo *all[] = {&tree_ar, &rd_ar, &rab_ar, &rd_ag, &bruck_ag};
    struct fx_plan p;

    fx_plan_init(&p);
    for (size_t i = 0; i < NELEMS(all); i++) {
        cr_assert_eq(all[i]->build(&p, 1, 0, 13, 4, 0, 1), FX_OK, "%s", all[i]->name);
        cr_assert_eq(p.nops, 1, "%s", all[i]->name);
        cr_expect_eq(p.ops[0].kind, FX_PLAN_COPY, "%s", all[i]->name);
        cr_expect(p.ops[0].flags & FX_PLAN_FINAL, "%s", all[i]->name);
        cr_expect_eq(p.ops[0].count, 13, "%s", all[i]->name);
        cr_expect_eq(p.nslots, 0, "%s", all[i]->name);
        cr_assert_eq(all[i]->build(&p, 4, 2, 0, 4, 0, 1), FX_OK, "%s", all[i]->name);
        cr_expect_eq(p.nops, 0, "%s", all[i]->name);
        cr_expect_eq(p.count, 0, "%s", all[i]->name);
    }
    fx_plan_fini(&p);
}

/* Rebuilding into a plan reuses its storage. */
Test(algos, rebuild_keeps_capacity, .timeout = 10)
{
    static const struct algo *all[] = {&tree_ar, &rd_ar, &rab_ar, &rd_ag, &bruck_ag};
    struct fx_plan p;

    fx_plan_init(&p);
    for (size_t i = 0; i < NELEMS(all); i++) {
        struct fx_plan_op *ops;
        size_t cap;

        cr_assert_eq(all[i]->build(&p, 8, 3, 1021, 4, 64, 4096), FX_OK, "%s", all[i]->name);
        ops = p.ops;
        cap = p.cap;
        cr_assert_eq(all[i]->build(&p, 8, 3, 1021, 4, 64, 4096), FX_OK, "%s", all[i]->name);
        cr_expect(p.ops == ops && p.cap == cap, "%s reallocated on rebuild", all[i]->name);
        cr_assert_eq(all[i]->build(&p, 8, 3, 100, 4, 64, 4096), FX_OK, "%s", all[i]->name);
        cr_expect(p.ops == ops && p.cap == cap, "%s reallocated on a smaller build", all[i]->name);
    }
    fx_plan_fini(&p);
}
