/*
 * The cost model against the plans: for every algorithm with a plan builder, all ranks' plans
 * run through the simulator, and the model's bytes (busiest rank's rank_bytes_sent), reduced
 * bytes (the busiest rank's RECV_REDUCE elements) and steps (the critical-path depth, two
 * levels per message) must match. Then the time formula, the algorithms without plans here,
 * and argument checks.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_algos.h"
#include "collectives/coll_cost.h"
#include "collectives/coll_sim.h"

#define MAX_RANKS 17
#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define NSLOTS    8192 /* enough that no plan waits for a slot, so depth is pure latency */

typedef fx_status (*cost_fn)(const struct fx_cost_params *p, int nranks, size_t count,
                             size_t elem_size, size_t chunk_bytes, struct fx_cost *out);

enum family { ALLREDUCE, ALLGATHER };

struct model {
    const char *name;
    cost_fn cost;
    enum family family;
    int id;
};

enum { RING_AR, PAIR_AR, PAIR_AR_IN_PLACE, TREE_AR, RD_AR, RAB_AR, RING_AG, RD_AG, BRUCK_AG };

static const struct model models[] = {
    {"ring_allreduce", fx_cost_ring_allreduce, ALLREDUCE, RING_AR},
    {"pair_allreduce", fx_cost_pair_allreduce, ALLREDUCE, PAIR_AR},
    {"pair_allreduce in place", fx_cost_pair_allreduce, ALLREDUCE, PAIR_AR_IN_PLACE},
    {"tree_allreduce", fx_cost_tree_allreduce, ALLREDUCE, TREE_AR},
    {"rd_allreduce", fx_cost_rd_allreduce, ALLREDUCE, RD_AR},
    {"rabenseifner_allreduce", fx_cost_rabenseifner_allreduce, ALLREDUCE, RAB_AR},
    {"ring_allgather", fx_cost_ring_allgather, ALLGATHER, RING_AG},
    {"rd_allgather", fx_cost_rd_allgather, ALLGATHER, RD_AG},
    {"bruck_allgather", fx_cost_bruck_allgather, ALLGATHER, BRUCK_AG},
};

static fx_status build(const struct model *m, struct fx_plan *plan, int n, int rank, size_t count,
                       size_t es, size_t chunk)
{
    switch (m->id) {
    case RING_AR:
        return fx_coll_ring_allreduce(plan, n, rank, count, es, chunk, NSLOTS);
    case PAIR_AR:
    case PAIR_AR_IN_PLACE:
        return n == 2 ? fx_coll_pair_allreduce(plan, rank, count, es, m->id == PAIR_AR_IN_PLACE)
                      : FX_ERR_UNSUPPORTED;
    case TREE_AR:
        return fx_coll_tree_allreduce(plan, n, rank, count, es, chunk, NSLOTS);
    case RD_AR:
        return fx_coll_rd_allreduce(plan, n, rank, count, es, chunk, NSLOTS);
    case RAB_AR:
        return fx_coll_rabenseifner_allreduce(plan, n, rank, count, es, chunk, NSLOTS);
    case RING_AG:
        return fx_coll_ring_allgather(plan, n, rank, count, es, chunk);
    case RD_AG:
        return fx_coll_rd_allgather(plan, n, rank, count, es, chunk);
    default:
        return fx_coll_bruck_allgather(plan, n, rank, count, es, chunk);
    }
}

static void sum_cb(void *ctx, void *dst, const void *local, const void *slot, size_t count,
                   int final)
{
    size_t es = *(const size_t *)ctx;

    (void) final;
    for (size_t i = 0; i < count * es; i++) {
        ((unsigned char *)dst)[i] =
            (unsigned char)(((const unsigned char *)local)[i] + ((const unsigned char *)slot)[i]);
    }
}

/* What the simulator measured. */
struct measured {
    uint64_t bytes;   /* the busiest rank's bytes sent */
    uint64_t reduced; /* the busiest rank's bytes reduced */
    uint32_t depth;
    int copies_first; /* a rank's plan starts with a local copy feeding its first send */
};

/* Builds and simulates all ranks; returns the builders' status (FX_OK when simulated). */
static fx_status measure(const struct model *m, int n, size_t count, size_t es, size_t chunk,
                         struct measured *out)
{
    struct fx_plan plans[MAX_RANKS];
    struct fx_coll_sim_rank ranks[MAX_RANKS];
    struct fx_coll_sim_result res;
    size_t rcount    = m->family == ALLGATHER ? count * (size_t)n : count;
    unsigned char *b = calloc((size_t)n * (count + rcount) * es + 1, 1);
    fx_status status = FX_OK;

    cr_assert_not_null(b);
    memset(out, 0, sizeof(*out));
    for (int k = 0; k < n; k++) {
        fx_plan_init(&plans[k]);
    }
    for (int k = 0; k < n && status == FX_OK; k++) {
        uint64_t red = 0;

        status = build(m, &plans[k], n, k, count, es, chunk);
        for (size_t i = 0; status == FX_OK && i < plans[k].nops; i++) {
            red += plans[k].ops[i].kind == FX_PLAN_RECV_REDUCE ? plans[k].ops[i].count * es : 0;
        }
        out->reduced = red > out->reduced ? red : out->reduced;
        ranks[k]     = (struct fx_coll_sim_rank){
                .plan       = &plans[k],
                .sendbuf    = b + (size_t)k * count * es,
                .send_count = count,
                .recvbuf    = b + (size_t)n * count * es + (size_t)k * rcount * es,
                .recv_count = rcount,
        };
        if (m->id == PAIR_AR_IN_PLACE) {
            ranks[k].sendbuf = ranks[k].recvbuf;
        }
    }
    if (status == FX_OK) {
        cr_assert_eq(fx_coll_sim_run(ranks, n, sum_cb, &es, 0, &res), FX_OK, "%s: %s", m->name,
                     res.error);
        for (int k = 0; k < n; k++) {
            out->bytes = res.rank_bytes_sent[k] > out->bytes ? res.rank_bytes_sent[k] : out->bytes;
            out->copies_first |= plans[k].nops > 0 && plans[k].ops[0].kind == FX_PLAN_COPY &&
                                 plans[k].ops[0].buf == FX_BUF_SCRATCH;
        }
        out->depth = res.depth;
        fx_coll_sim_result_fini(&res);
    }
    for (int k = 0; k < n; k++) {
        fx_plan_fini(&plans[k]);
    }
    free(b);
    return status;
}

static int pow2_floor(int n)
{
    int p = 1;

    while (2 * p <= n) {
        p *= 2;
    }
    return p;
}

static int is_pow2(int n)
{
    return (n & (n - 1)) == 0;
}

/* Levels the depth has beyond 2 * steps: a first local copy into scratch that no fold hides. */
static uint32_t copy_levels(const struct model *m, int n)
{
    if (m->id == PAIR_AR_IN_PLACE) {
        return 1;
    }
    return m->id == RD_AR && is_pow2(n) ? 1 : 0;
}

/* Checks one configuration: bytes and reduced bytes exactly, depth against steps. */
static void check_model(const struct model *m, int n, size_t count, size_t es, size_t chunk)
{
    static const struct fx_cost_params p = {1e-6, 1e-9, 1e-10};
    struct measured got;
    struct fx_cost c;
    fx_status built  = measure(m, n, count, es, chunk, &got);
    fx_status status = m->cost(&p, n, count, es, chunk, &c);

    if (built == FX_ERR_UNSUPPORTED) {
        cr_expect_eq(status, FX_ERR_UNSUPPORTED, "%s n %d: the plan is unsupported", m->name, n);
        return;
    }
    cr_assert_eq(built, FX_OK, "%s n %d count %zu", m->name, n, count);
    cr_assert_eq(status, FX_OK, "%s n %d count %zu", m->name, n, count);
    cr_expect_eq(c.bytes, got.bytes,
                 "%s n %d count %zu elem %zu chunk %zu: model %llu bytes, plan %llu", m->name, n,
                 count, es, chunk, (unsigned long long)c.bytes, (unsigned long long)got.bytes);
    cr_expect_eq(c.reduced_bytes, got.reduced,
                 "%s n %d count %zu elem %zu: model reduces %llu bytes, plan %llu", m->name, n,
                 count, es, (unsigned long long)c.reduced_bytes, (unsigned long long)got.reduced);
    if (count == 0 || n == 1) {
        cr_expect_eq(c.steps, 0, "%s n %d count %zu", m->name, n, count);
        cr_expect_leq(got.depth, 1, "%s n %d count %zu", m->name, n, count);
    } else if (m->id == TREE_AR) {
        /* A node reduces its second child's chunk after its first: up to one more level per
         * tree level on the way up. */
        cr_expect(got.depth >= 2 * c.steps && got.depth <= 2 * c.steps + c.steps / 2,
                  "%s n %d count %zu chunk %zu: depth %u for %u steps", m->name, n, count, chunk,
                  got.depth, c.steps);
    } else if (m->id == RD_AR && !is_pow2(n)) {
        /* The folding ranks start one level behind the others (fold receive against the
         * others' copy to scratch); that lag lengthens the path only where it reaches
         * another folding rank before the hand-back. */
        cr_expect(got.depth == 2 * c.steps || got.depth == 2 * c.steps - 1,
                  "%s n %d count %zu chunk %zu: depth %u for %u steps", m->name, n, count, chunk,
                  got.depth, c.steps);
    } else if (m->id == RAB_AR && count < (size_t)pow2_floor(n)) {
        /* Empty blocks send nothing, which can shorten the path. */
        cr_expect_leq(got.depth, 2 * c.steps, "%s n %d count %zu: depth %u for %u steps", m->name,
                      n, count, got.depth, c.steps);
    } else {
        cr_expect_eq(got.depth, 2 * c.steps + copy_levels(m, n),
                     "%s n %d count %zu chunk %zu: depth %u for %u steps", m->name, n, count, chunk,
                     got.depth, c.steps);
    }
}

ParameterizedTestParameters(cost, bytes_and_steps_match_the_plans)
{
    static int nranks[MAX_RANKS];

    for (int i = 0; i < MAX_RANKS; i++) {
        nranks[i] = i + 1;
    }
    return cr_make_param_array(int, nranks, MAX_RANKS);
}

ParameterizedTest(int *n, cost, bytes_and_steps_match_the_plans, .timeout = 60)
{
    size_t counts[]              = {0, 1, 7, (size_t)*n + 1, 1021, 5000};
    static const size_t es[]     = {1, 4, 8};
    static const size_t chunks[] = {0, 64, 1000};

    for (size_t mi = 0; mi < NELEMS(models); mi++) {
        for (size_t ci = 0; ci < NELEMS(counts); ci++) {
            for (size_t ei = 0; ei < NELEMS(es); ei++) {
                check_model(&models[mi], *n, counts[ci], es[ei], chunks[(ci + ei) % 3]);
            }
        }
    }
}

/* Chunks of `len` bytes and one chunk's bytes, as the plans cut them. */
static void chunks_of(size_t len, size_t es, size_t chunk_bytes, uint64_t *k, uint64_t *c)
{
    uint64_t elems = (chunk_bytes ? chunk_bytes : (size_t)1 << 20) / es;
    uint64_t cb    = (elems ? elems : 1) * es;

    *k = (len + cb - 1) / cb;
    *c = cb < len ? cb : len;
}

Test(cost, time_adds_the_alpha_beta_gamma_terms, .timeout = 10)
{
    static const struct fx_cost_params unit[3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};

    for (size_t mi = 0; mi < NELEMS(models); mi++) {
        for (int n = 2; n <= 9; n++) {
            const struct model *m = &models[mi];
            struct fx_cost c[3];
            uint64_t k;
            uint64_t cb;
            size_t count = 777;

            if (m->cost(&unit[0], n, count, 4, 256, &c[0]) != FX_OK) {
                continue;
            }
            cr_assert_eq(m->cost(&unit[1], n, count, 4, 256, &c[1]), FX_OK);
            cr_assert_eq(m->cost(&unit[2], n, count, 4, 256, &c[2]), FX_OK);
            if (m->id == TREE_AR) {
                /* Pipelined: each tree streams its half (the larger one is 389 elements). */
                chunks_of(389 * 4, 4, 256, &k, &cb);
                cr_expect_eq(c[0].time_s, (double)(c[0].steps + k - 1), "%s n %d", m->name, n);
                cr_expect_eq(c[1].time_s, (double)(c[1].bytes + (c[1].steps - 1) * cb));
                cr_expect_eq(c[2].time_s, (double)(c[2].reduced_bytes + (c[2].steps - 1) * cb));
                continue;
            }
            cr_expect_eq(c[0].time_s, (double)c[0].steps, "%s n %d", m->name, n);
            cr_expect_eq(c[1].time_s, (double)c[1].bytes, "%s n %d", m->name, n);
            cr_expect_eq(c[2].time_s, (double)c[2].reduced_bytes, "%s n %d", m->name, n);
        }
    }
}

/* The algorithms whose plans are built elsewhere: the formulas' values on small cases. */
Test(cost, formulas_of_the_other_collectives, .timeout = 10)
{
    static const struct fx_cost_params one = {1, 1, 1};
    struct fx_cost c;

    /* Chain of 4 ranks, 4000 bytes in 4 chunks: 3 + 4 - 1 stages, fill of 2 chunks. */
    cr_assert_eq(fx_cost_chain_broadcast(&one, 4, 1000, 4, 1000, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 4000 && c.reduced_bytes == 0);
    cr_expect_eq(c.time_s, 6.0 + 6000.0);
    cr_assert_eq(fx_cost_chain_reduce(&one, 4, 1000, 4, 1000, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 4000 && c.reduced_bytes == 4000);
    cr_expect_eq(c.time_s, 6.0 + 6000.0 + 6000.0);
    /* Binomial over 5 ranks: 3 rounds; the root sends, or receives and reduces, in each. */
    cr_assert_eq(fx_cost_binomial_broadcast(&one, 5, 10, 8, 0, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 240 && c.reduced_bytes == 0);
    cr_assert_eq(fx_cost_binomial_reduce(&one, 5, 10, 8, 0, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 80 && c.reduced_bytes == 240);
    cr_expect_eq(c.time_s, 3.0 + 80.0 + 240.0);
    cr_assert_eq(fx_cost_ring_reduce_scatter(&one, 4, 10, 2, 0, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 60 && c.reduced_bytes == 60);
    cr_assert_eq(fx_cost_pairwise_alltoall(&one, 5, 10, 4, 0, &c), FX_OK);
    cr_expect(c.steps == 4 && c.bytes == 160 && c.reduced_bytes == 0);
    cr_assert_eq(fx_cost_dissemination_barrier(&one, 5, 0, 0, 0, &c), FX_OK);
    cr_expect(c.steps == 3 && c.bytes == 0 && c.time_s == 3.0);
    cr_assert_eq(fx_cost_dissemination_barrier(&one, 1, 0, 0, 0, &c), FX_OK);
    cr_expect(c.steps == 0 && c.time_s == 0.0);
    cr_assert_eq(fx_cost_chain_broadcast(&one, 1, 1000, 4, 0, &c), FX_OK);
    cr_expect(c.steps == 0 && c.bytes == 0 && c.time_s == 0.0);
}

/* With typical parameters, latency-bound algorithms win small messages and bandwidth-bound
 * ones large messages, as a tuner needs. */
Test(cost, small_messages_favour_latency_large_ones_bandwidth, .timeout = 10)
{
    static const struct fx_cost_params p = {5e-6, 1.0 / 10e9, 1.0 / 20e9};
    struct fx_cost ring;
    struct fx_cost rd;
    struct fx_cost rab;

    cr_assert_eq(fx_cost_ring_allreduce(&p, 16, 64, 4, 0, &ring), FX_OK);
    cr_assert_eq(fx_cost_rd_allreduce(&p, 16, 64, 4, 0, &rd), FX_OK);
    cr_expect_lt(rd.time_s, ring.time_s);
    cr_assert_eq(fx_cost_ring_allreduce(&p, 16, 64u << 20, 4, 0, &ring), FX_OK);
    cr_assert_eq(fx_cost_rd_allreduce(&p, 16, 64u << 20, 4, 0, &rd), FX_OK);
    cr_assert_eq(fx_cost_rabenseifner_allreduce(&p, 16, 64u << 20, 4, 0, &rab), FX_OK);
    cr_expect_lt(ring.time_s, rd.time_s);
    cr_expect_lt(rab.time_s, rd.time_s);
}

Test(cost, rejects_invalid_arguments_and_leaves_out_alone, .timeout = 10)
{
    static const struct fx_cost_params ok  = {1e-6, 1e-9, 1e-10};
    static const struct fx_cost_params neg = {-1, 0, 0};
    struct fx_cost_params nan_p            = {NAN, 0, 0};
    struct fx_cost c                       = {.steps = 77};

    for (size_t mi = 0; mi < NELEMS(models); mi++) {
        cost_fn f = models[mi].cost;

        cr_expect_eq(f(NULL, 2, 8, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&ok, 2, 8, 4, 0, NULL), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&ok, 0, 8, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&ok, -4, 8, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&ok, 2, 8, 0, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&neg, 2, 8, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&nan_p, 2, 8, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
        cr_expect_eq(f(&ok, 2, SIZE_MAX / 2, 4, 0, &c), FX_ERR_INVALID_ARG, "%s", models[mi].name);
    }
    cr_expect_eq(fx_cost_ring_allgather(&ok, 4, SIZE_MAX / 8 + 1, 2, 0, &c), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_cost_pairwise_alltoall(&ok, 4, SIZE_MAX / 8 + 1, 2, 0, &c), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_cost_dissemination_barrier(&ok, 0, 0, 0, 0, &c), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_cost_chain_broadcast(NULL, 4, 8, 4, 0, &c), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_cost_pair_allreduce(&ok, 3, 8, 4, 0, &c), FX_ERR_UNSUPPORTED);
    cr_expect_eq(fx_cost_rd_allgather(&ok, 6, 8, 4, 0, &c), FX_ERR_UNSUPPORTED);
    cr_expect_eq(c.steps, 77, "out written on error");
}
