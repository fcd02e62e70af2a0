/*
 * Ring all-reduce and all-gather plans, run for all ranks at once through the simulator: the
 * data that lands, the final-reduction flags, bytes per rank and per link, plan reuse, argument
 * checks, and that the simulator catches broken and deadlocking plans.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_plan.h"
#include "collectives/coll_sim.h"

#define MAX_RANKS 16

/* One configuration of a collective run. */
struct cfg {
    int n;
    size_t count;
    size_t es;
    size_t chunk_bytes;
    uint32_t nslots;
    int in_place;
    uint32_t seed;
};

/* All ranks' plans, inputs and buffers, and what the reduce callback observed. */
struct run {
    struct cfg c;
    struct fx_plan plans[MAX_RANKS];
    unsigned char *in[MAX_RANKS];   /* the original inputs */
    unsigned char *send[MAX_RANKS]; /* NULL in place */
    unsigned char *recv[MAX_RANKS];
    size_t recv_count;
    uint16_t *calls;  /* reduce calls per element index */
    uint16_t *finals; /* final reduce calls per element index */
    size_t bad_local; /* reduce calls whose local operand was not at dst's offset */
    struct fx_coll_sim_rank ranks[MAX_RANKS];
    struct fx_coll_sim_result res;
};

#define CFG_FMT "n %d count %zu elem %zu chunk %zu nslots %u %s seed %u"
#define CFG_ARGS(c)                                                                                \
    (c).n, (c).count, (c).es, (c).chunk_bytes, (c).nslots,                                         \
        (c).in_place ? "in place" : "out of place", (c).seed

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

static unsigned char input_byte(int rank, size_t byte)
{
    uint64_t x = ((uint64_t)rank + 1) * 0x9e3779b97f4a7c15ull + byte * 0xbf58476d1ce4e5b9ull;

    x ^= x >> 29;
    return (unsigned char)(x * 0x94d049bb133111ebull >> 56);
}

/* Which rank's receive buffer holds p, and at which element; -1 when none. */
static int locate(const struct run *r, const void *p, size_t *elem)
{
    uintptr_t a = (uintptr_t)p;

    for (int k = 0; k < r->c.n; k++) {
        uintptr_t base = (uintptr_t)r->recv[k];

        if (a >= base && a < base + r->recv_count * r->c.es) {
            *elem = (a - base) / r->c.es;
            return k;
        }
    }
    return -1;
}

/* The simulator's reduce callback: wrapping sum in the element's width, counting calls. */
static void sum_cb(void *ctx, void *dst, const void *local, const void *slot, size_t count,
                   int final)
{
    struct run *r = ctx;
    size_t es     = r->c.es;
    size_t elem   = 0;
    int k         = locate(r, dst, &elem);
    const unsigned char *lbase;

    for (size_t i = 0; i < count; i++) {
        uint64_t v = load((const unsigned char *)local + i * es, es) +
                     load((const unsigned char *)slot + i * es, es);

        store((unsigned char *)dst + i * es, es, v);
    }
    if (k < 0) {
        r->bad_local++;
        return;
    }
    lbase = r->send[k] ? r->send[k] : r->recv[k];
    if ((uintptr_t)local != (uintptr_t)lbase + elem * es) {
        r->bad_local++;
    }
    for (size_t i = 0; i < count && elem + i < r->c.count; i++) {
        r->calls[elem + i]++;
        r->finals[elem + i] += final ? 1 : 0;
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
    free(r->calls);
    free(r->finals);
    fx_coll_sim_result_fini(&r->res);
    free(r);
}

/* Allocates buffers with inputs; recv is filled with 0xa5 except where in place needs input. */
static struct run *run_new(const struct cfg *c, int gather)
{
    struct run *r = calloc(1, sizeof(*r));
    size_t bytes  = c->count * c->es;

    cr_assert_not_null(r);
    r->c          = *c;
    r->recv_count = gather ? c->count * (size_t)c->n : c->count;
    r->calls      = calloc(c->count + 1, sizeof(uint16_t));
    r->finals     = calloc(c->count + 1, sizeof(uint16_t));
    cr_assert(r->calls && r->finals);
    for (int k = 0; k < c->n; k++) {
        unsigned char *own;

        fx_plan_init(&r->plans[k]);
        r->in[k]   = malloc(bytes + 1);
        r->recv[k] = malloc(r->recv_count * c->es + 1);
        cr_assert(r->in[k] && r->recv[k]);
        for (size_t b = 0; b < bytes; b++) {
            r->in[k][b] = input_byte(k, b);
        }
        memset(r->recv[k], 0xa5, r->recv_count * c->es);
        own = r->recv[k] + (gather ? (size_t)k * bytes : 0);
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

static fx_status simulate(struct run *r)
{
    return fx_coll_sim_run(r->ranks, r->c.n, sum_cb, r, r->c.seed, &r->res);
}

static size_t seg_len(size_t count, int n, int k)
{
    return count / (size_t)n + ((size_t)k < count % (size_t)n ? 1 : 0);
}

/* Bytes rank k sends in a ring all-reduce: every segment but k + 1 (reduce-scatter) and
 * every segment but k + 2 (all-gather). */
static uint64_t allreduce_bytes(const struct cfg *c, int k)
{
    if (c->n == 1) {
        return 0;
    }
    return (uint64_t)(2 * c->count - seg_len(c->count, c->n, (k + 1) % c->n) -
                      seg_len(c->count, c->n, (k + 2) % c->n)) *
           c->es;
}

/* Every link carries traffic only from a rank to its right neighbour. */
static void expect_ring_links(const struct run *r)
{
    int n = r->c.n;

    for (int s = 0; s < n; s++) {
        for (int d = 0; d < n; d++) {
            if (d != (s + 1) % n) {
                cr_expect_eq(r->res.link_bytes[s * n + d], 0,
                             "link %d -> %d carried %llu bytes; " CFG_FMT, s, d,
                             (unsigned long long)r->res.link_bytes[s * n + d], CFG_ARGS(r->c));
            }
        }
    }
}

static void expect_recv(const struct run *r, int k, const unsigned char *want, size_t nelem)
{
    size_t es = r->c.es;

    if (memcmp(r->recv[k], want, nelem * es) == 0) {
        return;
    }
    for (size_t i = 0; i < nelem; i++) {
        if (memcmp(r->recv[k] + i * es, want + i * es, es) != 0) {
            cr_expect_fail("rank %d element %zu is %#llx, expected %#llx; " CFG_FMT, k, i,
                           (unsigned long long)load(r->recv[k] + i * es, es),
                           (unsigned long long)load(want + i * es, es), CFG_ARGS(r->c));
            return;
        }
    }
}

/* Builds, simulates and checks one all-reduce against the wrapping-sum reference. */
static void check_allreduce(const struct cfg *c)
{
    struct run *r = run_new(c, 0);
    unsigned char *ref;

    for (int k = 0; k < c->n; k++) {
        cr_assert_eq(fx_coll_ring_allreduce(&r->plans[k], c->n, k, c->count, c->es, c->chunk_bytes,
                                            c->nslots),
                     FX_OK, CFG_FMT, CFG_ARGS(*c));
    }
    cr_assert_eq(simulate(r), FX_OK, "%s; " CFG_FMT, r->res.error, CFG_ARGS(*c));
    ref = calloc(c->count * c->es + 1, 1);
    cr_assert_not_null(ref);
    for (size_t i = 0; i < c->count; i++) {
        uint64_t v = 0;

        for (int k = 0; k < c->n; k++) {
            v += load(r->in[k] + i * c->es, c->es);
        }
        store(ref + i * c->es, c->es, v);
    }
    for (int k = 0; k < c->n; k++) {
        expect_recv(r, k, ref, c->count);
        cr_expect_eq(r->res.rank_bytes_sent[k], allreduce_bytes(c, k),
                     "rank %d sent %llu bytes; " CFG_FMT, k,
                     (unsigned long long)r->res.rank_bytes_sent[k], CFG_ARGS(*c));
    }
    for (size_t i = 0; i < c->count && c->n > 1; i++) {
        if (r->finals[i] != 1 || r->calls[i] != c->n - 1) {
            cr_expect_fail("element %zu: %u final of %u reductions, expected 1 of %d; " CFG_FMT, i,
                           r->finals[i], r->calls[i], c->n - 1, CFG_ARGS(*c));
            break;
        }
    }
    cr_expect_eq(r->bad_local, 0, "local operand misplaced; " CFG_FMT, CFG_ARGS(*c));
    expect_ring_links(r);
    free(ref);
    run_free(r);
}

static void check_allgather(const struct cfg *c)
{
    struct run *r = run_new(c, 1);
    size_t bytes  = c->count * c->es;
    unsigned char *ref;

    for (int k = 0; k < c->n; k++) {
        cr_assert_eq(fx_coll_ring_allgather(&r->plans[k], c->n, k, c->count, c->es, c->chunk_bytes),
                     FX_OK, CFG_FMT, CFG_ARGS(*c));
    }
    cr_assert_eq(simulate(r), FX_OK, "%s; " CFG_FMT, r->res.error, CFG_ARGS(*c));
    ref = malloc(bytes * (size_t)c->n + 1);
    cr_assert_not_null(ref);
    for (int k = 0; k < c->n; k++) {
        memcpy(ref + (size_t)k * bytes, r->in[k], bytes);
    }
    for (int k = 0; k < c->n; k++) {
        expect_recv(r, k, ref, c->count * (size_t)c->n);
        cr_expect_eq(r->res.rank_bytes_sent[k], (uint64_t)(c->n - 1) * bytes,
                     "rank %d sent %llu bytes; " CFG_FMT, k,
                     (unsigned long long)r->res.rank_bytes_sent[k], CFG_ARGS(*c));
    }
    expect_ring_links(r);
    free(ref);
    run_free(r);
}

static const size_t small_counts[]  = {0, 1, 2, 3, 7, 13, 1021};
static const size_t elem_sizes[]    = {1, 2, 4, 8};
static const uint32_t slot_counts[] = {1, 2, 8};

/* Chunk sizes: default, 8 bytes, 12 bytes (not a multiple of 8-byte elements), 64 KiB. */
static const size_t chunk_sizes[] = {0, 8, 12, 65536};

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

ParameterizedTestParameters(ring_plan, allreduce_sums_on_every_rank)
{
    static int nranks[MAX_RANKS];

    for (int i = 0; i < MAX_RANKS; i++) {
        nranks[i] = i + 1;
    }
    return cr_make_param_array(int, nranks, MAX_RANKS);
}

/* counts x elem sizes x chunks x slots x placement for one nranks; 1021 with tiny chunks only
 * at one slot count, to bound the run time. */
ParameterizedTest(int *n, ring_plan, allreduce_sums_on_every_rank, .timeout = 60)
{
    for (size_t ci = 0; ci < NELEMS(small_counts); ci++) {
        for (size_t ei = 0; ei < NELEMS(elem_sizes); ei++) {
            for (size_t ki = 0; ki < NELEMS(chunk_sizes); ki++) {
                for (size_t si = 0; si < NELEMS(slot_counts); si++) {
                    struct cfg c = {
                        *n, small_counts[ci], elem_sizes[ei], chunk_sizes[ki], slot_counts[si], 0,
                        0};

                    if (c.count > 100 && c.chunk_bytes > 0 && c.chunk_bytes < 16 && si != 1) {
                        continue;
                    }
                    check_allreduce(&c);
                    c.in_place = 1;
                    check_allreduce(&c);
                }
            }
        }
    }
}

ParameterizedTestParameters(ring_plan, allgather_concatenates_on_every_rank)
{
    static int nranks[MAX_RANKS];

    for (int i = 0; i < MAX_RANKS; i++) {
        nranks[i] = i + 1;
    }
    return cr_make_param_array(int, nranks, MAX_RANKS);
}

ParameterizedTest(int *n, ring_plan, allgather_concatenates_on_every_rank, .timeout = 60)
{
    for (size_t ci = 0; ci < NELEMS(small_counts); ci++) {
        for (size_t ei = 0; ei < NELEMS(elem_sizes); ei++) {
            for (size_t ki = 0; ki < NELEMS(chunk_sizes); ki++) {
                struct cfg c = {*n, small_counts[ci], elem_sizes[ei], chunk_sizes[ki], 1, 0, 0};

                check_allgather(&c);
                c.in_place = 1;
                check_allgather(&c);
            }
        }
    }
}

Test(ring_plan, large_counts_reduce_and_gather, .timeout = 60)
{
    static const int nranks[]    = {1, 2, 5, 16};
    static const size_t chunks[] = {0, 65536, 1024};

    for (size_t ni = 0; ni < NELEMS(nranks); ni++) {
        for (size_t ki = 0; ki < NELEMS(chunks); ki++) {
            for (int in_place = 0; in_place < 2; in_place++) {
                struct cfg c = {nranks[ni], 65537, ki == 2 ? 1 : 8, chunks[ki], 2, in_place, 0};

                check_allreduce(&c);
                check_allgather(&c);
            }
        }
    }
}

Test(ring_plan, correct_under_shuffled_schedules, .timeout = 30)
{
    for (uint32_t seed = 1; seed <= 40; seed++) {
        struct cfg c = {
            (int)(seed % 7) + 2, 97 + seed, 1u << (seed % 4), 8 * (seed % 3), 1 + seed % 3,
            (int)(seed & 1),     seed};

        check_allreduce(&c);
        check_allgather(&c);
    }
}

Test(ring_plan, sends_exact_share_when_count_divides, .timeout = 10)
{
    for (int n = 2; n <= 8; n++) {
        struct cfg c = {n, (size_t)n * 120, 4, 64, 2, 0, 0};

        check_allreduce(&c);
        /* 2 (n - 1) / n of the buffer, as the ring's bandwidth bound says. */
        cr_expect_eq(allreduce_bytes(&c, 0), 2 * (uint64_t)(n - 1) * 120 * 4);
    }
}

Test(ring_plan, single_rank_copies_with_final_flag, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    cr_assert_eq(fx_coll_ring_allreduce(&p, 1, 0, 13, 4, 0, 1), FX_OK);
    cr_assert_eq(p.nops, 1);
    cr_expect_eq(p.ops[0].kind, FX_PLAN_COPY);
    cr_expect(p.ops[0].flags & FX_PLAN_FINAL);
    cr_expect_eq(p.ops[0].count, 13);
    cr_assert_eq(fx_coll_ring_allreduce(&p, 1, 0, 0, 4, 0, 1), FX_OK);
    cr_expect_eq(p.nops, 0);
    cr_assert_eq(fx_coll_ring_allreduce(&p, 4, 2, 0, 4, 0, 1), FX_OK);
    cr_expect_eq(p.nops, 0);
    fx_plan_fini(&p);
}

/* Builds all ranks' plans of one configuration. */
static void build_all(struct run *r, int gather)
{
    const struct cfg *c = &r->c;

    for (int k = 0; k < c->n; k++) {
        fx_status status =
            gather ? fx_coll_ring_allgather(&r->plans[k], c->n, k, c->count, c->es, c->chunk_bytes)
                   : fx_coll_ring_allreduce(&r->plans[k], c->n, k, c->count, c->es, c->chunk_bytes,
                                            c->nslots);

        cr_assert_eq(status, FX_OK, CFG_FMT, CFG_ARGS(*c));
    }
}

Test(ring_plan, critical_path_grows_with_ranks_not_chunks, .timeout = 10)
{
    for (int n = 2; n <= 6; n++) {
        struct cfg one  = {n, (size_t)n * 16, 4, 0, 8, 0, 0};
        struct cfg four = {n, (size_t)n * 16, 4, 16, 8, 0, 0};
        struct cfg gath = {n, 16, 4, 0, 1, 0, 0};
        struct run *r1  = run_new(&one, 0);
        struct run *r4  = run_new(&four, 0);
        struct run *rg  = run_new(&gath, 1);

        build_all(r1, 0);
        build_all(r4, 0);
        build_all(rg, 1);
        cr_assert_eq(simulate(r1), FX_OK, "%s", r1->res.error);
        cr_assert_eq(simulate(r4), FX_OK, "%s", r4->res.error);
        cr_assert_eq(simulate(rg), FX_OK, "%s", rg->res.error);
        /* Each step is a send and the receive it feeds: two levels per step. */
        cr_expect_eq(r1->res.depth, 4 * (uint32_t)(n - 1), "n %d depth %u", n, r1->res.depth);
        cr_expect_eq(r4->res.depth, 4 * (uint32_t)(n - 1), "n %d chunked depth %u", n,
                     r4->res.depth);
        cr_expect_eq(r4->res.total_msgs, 4 * r1->res.total_msgs, "n %d", n);
        cr_expect_eq(rg->res.depth, 2 * (uint32_t)(n - 1), "n %d gather depth %u", n,
                     rg->res.depth);
        run_free(r1);
        run_free(r4);
        run_free(rg);
    }
}

Test(ring_plan, rebuild_keeps_capacity, .timeout = 10)
{
    struct fx_plan p;
    struct fx_plan_op *ops;
    size_t cap;

    fx_plan_init(&p);
    cr_assert_eq(fx_coll_ring_allreduce(&p, 8, 3, 1021, 4, 64, 2), FX_OK);
    ops = p.ops;
    cap = p.cap;
    cr_assert_gt(cap, 0);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(fx_coll_ring_allreduce(&p, 8, 3, 1021, 4, 64, 2), FX_OK);
        cr_expect_eq(p.cap, cap);
        cr_expect_eq(p.ops, ops, "rebuild %d reallocated the ops", i);
    }
    cr_assert_eq(fx_coll_ring_allreduce(&p, 8, 3, 100, 4, 64, 2), FX_OK);
    cr_expect_eq(p.ops, ops, "smaller rebuild reallocated the ops");
    cr_assert_eq(fx_coll_ring_allgather(&p, 8, 3, 10, 4, 0), FX_OK);
    cr_expect_eq(p.ops, ops, "all-gather into a reused plan reallocated the ops");
    cr_expect_eq(p.cap, cap);
    fx_plan_fini(&p);
}

Test(ring_plan, rejects_invalid_arguments, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    cr_expect_eq(fx_coll_ring_allreduce(&p, 0, 0, 8, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(&p, -1, 0, 8, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(&p, 4, 4, 8, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(&p, 4, -1, 8, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(&p, 4, 0, 8, 0, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(&p, 4, 0, SIZE_MAX / 4 + 1, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce(NULL, 4, 0, 8, 4, 0, 1), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather(&p, 0, 0, 8, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather(&p, 4, 4, 8, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather(&p, 4, -1, 8, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather(&p, 4, 0, 8, 0, 0), FX_ERR_INVALID_ARG);
    /* count * nranks * elem_size overflows although count * elem_size does not. */
    cr_expect_eq(fx_coll_ring_allgather(&p, 4, 0, SIZE_MAX / 8 + 1, 2, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather(NULL, 4, 0, 8, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(p.nops, 0);
    fx_plan_fini(&p);
}

/* Replaces a rank's plan ops by a private copy the test may edit. */
static struct fx_plan_op *own_ops(struct fx_plan *p)
{
    struct fx_plan_op *ops = malloc(p->nops * sizeof(*ops) + 1);

    cr_assert_not_null(ops);
    memcpy(ops, p->ops, p->nops * sizeof(*ops));
    free(p->ops);
    p->ops = ops;
    p->cap = p->nops;
    return ops;
}

/* Runs a broken variant and checks that the simulator fails or the result differs. */
static int broken_run_detected(struct run *r)
{
    fx_status status = simulate(r);
    unsigned char want[8];

    if (status != FX_OK) {
        cr_expect_neq(r->res.error[0], '\0');
        return 1;
    }
    for (int k = 0; k < r->c.n; k++) {
        for (size_t i = 0; i < r->c.count; i++) {
            uint64_t v = 0;

            for (int j = 0; j < r->c.n; j++) {
                v += load(r->in[j] + i * r->c.es, r->c.es);
            }
            store(want, r->c.es, v);
            if (memcmp(r->recv[k] + i * r->c.es, want, r->c.es) != 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* The index of rank k's first op of `kind` after `from` (with a dependency when need_dep). */
static size_t find_op(const struct fx_plan *p, uint8_t kind, size_t from, int need_dep)
{
    for (size_t i = from; i < p->nops; i++) {
        if (p->ops[i].kind == kind && (!need_dep || p->ops[i].dep >= 0)) {
            return i;
        }
    }
    cr_assert_fail("no %u op after %zu", kind, from);
    return 0;
}

Test(ring_plan, simulator_catches_a_dropped_dependency, .timeout = 10)
{
    struct cfg c  = {4, 64, 4, 0, 1, 0, 0};
    struct run *r = run_new(&c, 0);
    struct fx_plan_op *ops;

    build_all(r, 0);
    ops                                                = own_ops(&r->plans[1]);
    ops[find_op(&r->plans[1], FX_PLAN_SEND, 1, 1)].dep = -1;
    cr_expect(broken_run_detected(r), "forwarding before reducing went unnoticed");
    run_free(r);
}

Test(ring_plan, simulator_catches_swapped_receives, .timeout = 10)
{
    struct cfg c  = {3, 30, 8, 0, 2, 0, 0};
    struct run *r = run_new(&c, 0);
    struct fx_plan_op *ops;
    struct fx_plan_op tmp;
    size_t a;
    size_t b;

    build_all(r, 0);
    ops = own_ops(&r->plans[2]);
    a   = find_op(&r->plans[2], FX_PLAN_RECV_REDUCE, 0, 0);
    b   = find_op(&r->plans[2], FX_PLAN_RECV_REDUCE, a + 1, 0);
    /* Swap what the two receives do, keeping their positions and dependencies. */
    tmp           = ops[a];
    ops[a].offset = ops[b].offset;
    ops[a].count  = ops[b].count;
    ops[b].offset = tmp.offset;
    ops[b].count  = tmp.count;
    cr_expect(broken_run_detected(r), "swapped receives went unnoticed");
    run_free(r);
}

Test(ring_plan, simulator_reports_length_mismatch_by_rank_and_op, .timeout = 10)
{
    struct cfg c  = {3, 31, 4, 0, 2, 0, 0};
    struct run *r = run_new(&c, 0);
    struct fx_plan_op *ops;
    size_t i;

    build_all(r, 0);
    ops = own_ops(&r->plans[1]);
    i   = find_op(&r->plans[1], FX_PLAN_RECV, 0, 0);
    ops[i].count--;
    cr_expect_eq(simulate(r), FX_ERR_MISMATCH);
    cr_expect(strstr(r->res.error, "rank 1") != NULL, "%s", r->res.error);
    cr_expect(strstr(r->res.error, "bytes") != NULL, "%s", r->res.error);
    run_free(r);
}

/* Two ranks that each wait for the other's message before sending theirs. */
Test(ring_plan, simulator_detects_deadlock, .timeout = 10)
{
    struct cfg c  = {2, 4, 4, 0, 1, 0, 0};
    struct run *r = run_new(&c, 0);

    for (int k = 0; k < 2; k++) {
        struct fx_plan *p = &r->plans[k];

        p->nranks    = 2;
        p->rank      = k;
        p->count     = 4;
        p->elem_size = 4;
        cr_assert_eq(fx_plan_push(p, &(struct fx_plan_op){.kind  = FX_PLAN_RECV,
                                                          .buf   = FX_BUF_RECV,
                                                          .peer  = 1 - k,
                                                          .dep   = -1,
                                                          .count = 4}),
                     0);
        cr_assert_eq(fx_plan_push(p, &(struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                                          .buf   = FX_BUF_SEND,
                                                          .peer  = 1 - k,
                                                          .dep   = 0,
                                                          .count = 4}),
                     1);
    }
    cr_expect_eq(simulate(r), FX_ERR_INTERNAL);
    cr_expect(strstr(r->res.error, "deadlock") != NULL, "%s", r->res.error);
    cr_expect(strstr(r->res.error, "rank 0 op 0") != NULL, "%s", r->res.error);
    cr_expect(strstr(r->res.error, "rank 1 op 1") != NULL, "%s", r->res.error);
    run_free(r);
}

Test(ring_plan, simulator_reports_unreceived_messages, .timeout = 10)
{
    struct cfg c  = {2, 4, 4, 0, 1, 0, 0};
    struct run *r = run_new(&c, 0);

    for (int k = 0; k < 2; k++) {
        r->plans[k].nranks    = 2;
        r->plans[k].rank      = k;
        r->plans[k].elem_size = 4;
    }
    cr_assert_eq(fx_plan_push(&r->plans[0], &(struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                                                 .buf   = FX_BUF_SEND,
                                                                 .peer  = 1,
                                                                 .dep   = -1,
                                                                 .count = 2}),
                 0);
    cr_expect_eq(simulate(r), FX_ERR_MISMATCH);
    cr_expect(strstr(r->res.error, "from rank 0 to rank 1") != NULL, "%s", r->res.error);
    run_free(r);
}

Test(ring_plan, simulator_rejects_out_of_bounds_ops, .timeout = 10)
{
    struct cfg c  = {2, 10, 4, 0, 1, 0, 0};
    struct run *r = run_new(&c, 0);
    struct fx_plan_op *ops;

    build_all(r, 0);
    ops = own_ops(&r->plans[0]);
    ops[0].offset += 100;
    cr_expect_eq(simulate(r), FX_ERR_INVALID_ARG);
    cr_expect(strstr(r->res.error, "rank 0 op 0") != NULL, "%s", r->res.error);
    run_free(r);
}

/* ---- two-rank exchange all-reduce (coll_pair.c) ---- */

/* dst = 3 * first + second, wrapping: not commutative, so the two ranks agree only if both
 * take rank 0's data as the first operand. Counts final reductions per rank in r->finals. */
static void order_cb(void *ctx, void *dst, const void *first, const void *second, size_t count,
                     int final)
{
    struct run *r = ctx;
    size_t es     = r->c.es;

    for (size_t i = 0; i < count; i++) {
        uint64_t v = 3 * load((const unsigned char *)first + i * es, es) +
                     load((const unsigned char *)second + i * es, es);

        store((unsigned char *)dst + i * es, es, v);
    }
    r->finals[0] += final ? 1 : 0;
}

Test(ring_plan, pair_allreduce_orders_operands_alike_on_both_ranks, .timeout = 30)
{
    static const size_t counts[] = {0, 1, 7, 1021, 70000};

    for (size_t ci = 0; ci < NELEMS(counts); ci++) {
        for (size_t ei = 0; ei < NELEMS(elem_sizes); ei++) {
            for (int in_place = 0; in_place < 2; in_place++) {
                struct cfg c       = {.n        = 2,
                                      .count    = counts[ci],
                                      .es       = elem_sizes[ei],
                                      .nslots   = 1,
                                      .in_place = in_place,
                                      .seed     = (uint32_t)ci};
                struct run *r      = run_new(&c, 0);
                unsigned char *ref = calloc(c.count * c.es + 1, 1);

                cr_assert_not_null(ref);
                for (int k = 0; k < 2; k++) {
                    cr_assert_eq(fx_coll_pair_allreduce(&r->plans[k], k, c.count, c.es, in_place),
                                 FX_OK);
                    cr_expect_eq(r->plans[k].nops, c.count ? (in_place ? 3u : 2u) : 0u);
                }
                cr_assert_eq(fx_coll_sim_run(r->ranks, 2, order_cb, r, c.seed, &r->res), FX_OK,
                             "%s; " CFG_FMT, r->res.error, CFG_ARGS(c));
                for (size_t i = 0; i < c.count; i++) {
                    store(ref + i * c.es, c.es,
                          3 * load(r->in[0] + i * c.es, c.es) + load(r->in[1] + i * c.es, c.es));
                }
                for (int k = 0; k < 2; k++) {
                    expect_recv(r, k, ref, c.count);
                    cr_expect_eq(r->res.rank_bytes_sent[k], (uint64_t)(c.count * c.es));
                }
                cr_expect_eq(r->finals[0], c.count ? 2u : 0u, "final reductions: %u; " CFG_FMT,
                             r->finals[0], CFG_ARGS(c));
                cr_expect_leq(r->res.depth, in_place ? 3u : 2u, "exchange depth %u", r->res.depth);
                free(ref);
                run_free(r);
            }
        }
    }
}

Test(ring_plan, pair_allreduce_rejects_invalid_arguments, .timeout = 10)
{
    struct fx_plan plan;

    fx_plan_init(&plan);
    cr_expect_eq(fx_coll_pair_allreduce(NULL, 0, 4, 4, false), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_pair_allreduce(&plan, 2, 4, 4, false), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_pair_allreduce(&plan, -1, 4, 4, true), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_pair_allreduce(&plan, 0, 4, 0, false), FX_ERR_INVALID_ARG);
    fx_plan_fini(&plan);
}

/* ---- topology-aware ring order ---- */

/* Host tables: interleaved ranks, unequal ranks per host, one host, one rank per host. */
static const int host_tables[][12] = {
    {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}, {5, 5, 9, 7, 9, 9, 9, 7, 5, 3, 9, 7},
    {4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11},
    {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
};

static int count_hosts(const int *host, int n)
{
    int hosts = 0;

    for (int r = 0; r < n; r++) {
        bool seen = false;

        for (int q = 0; q < r; q++) {
            seen |= host[q] == host[r];
        }
        hosts += !seen;
    }
    return hosts;
}

Test(ring_plan, ring_order_keeps_hosts_adjacent, .timeout = 10)
{
    for (size_t t = 0; t < NELEMS(host_tables); t++) {
        for (int n = 1; n <= 12; n++) {
            const int *host = host_tables[t];
            int order[12];
            int seen[12]  = {0};
            int crossings = 0;
            int hosts     = count_hosts(host, n);

            fx_coll_ring_order_by_host(host, n, order);
            for (int p = 0; p < n; p++) {
                cr_assert(order[p] >= 0 && order[p] < n && !seen[order[p]],
                          "table %zu n %d: not a permutation at %d", t, n, p);
                seen[order[p]] = 1;
                crossings += host[order[p]] != host[order[(p + 1) % n]];
                if (p > 0 && host[order[p]] == host[order[p - 1]]) {
                    cr_expect_gt(order[p], order[p - 1], "ranks of a host out of rank order");
                }
            }
            cr_expect_eq(crossings, hosts > 1 ? hosts : 0,
                         "table %zu n %d: %d host crossings for %d hosts", t, n, crossings, hosts);
            cr_expect_eq(order[0], 0, "rank 0's host comes first");
        }
    }
}

/* Inside a host, ranks follow their locality keys (ties and unknown keys: rank order); hosts
 * stay adjacent and in the order of their lowest rank. */
Test(ring_plan, ring_order_sorts_each_host_by_locality, .timeout = 10)
{
    /* Two hosts interleaved; host 0's ranks 0, 2, 4, 6 have keys 30, 10, 20, 10; host 1's ranks
     * 1, 3, 5, 7 have unknown keys (INT64_MAX) except rank 7 (5). */
    static const int host[8]      = {0, 1, 0, 1, 0, 1, 0, 1};
    static const int64_t local[8] = {30, INT64_MAX, 10, INT64_MAX, 20, INT64_MAX, 10, 5};
    static const int want[8]      = {2, 6, 4, 0, 7, 1, 3, 5};
    static const int64_t equal[8] = {0};
    int order[8];

    fx_coll_ring_order(host, local, 8, order);
    for (int p = 0; p < 8; p++) {
        cr_expect_eq(order[p], want[p], "position %d: rank %d, want %d", p, order[p], want[p]);
    }
    fx_coll_ring_order(host, equal, 8, order);
    for (int p = 0; p < 8; p++) {
        cr_expect_eq(order[p], (p < 4 ? 0 : 1) + 2 * (p % 4), "equal keys keep rank order");
    }
    fx_coll_ring_order(host, NULL, 8, order);
    cr_expect_eq(order[0], 0);
    cr_expect_eq(order[4], 1, "no keys: by host, then rank");
}

/* Ordered plans through the simulator: correct sums and gathers (rank k's data at offset k *
 * count), and inter-host traffic on exactly one link per host boundary. */
static void check_ordered(const int *host, int n, size_t count, int gather, int in_place)
{
    struct cfg c  = {.n           = n,
                     .count       = count,
                     .es          = 4,
                     .chunk_bytes = 8,
                     .nslots      = 2,
                     .in_place    = in_place,
                     .seed        = 7};
    struct run *r = run_new(&c, gather);
    int order[12];
    int cross_links = 0;
    unsigned char *ref;

    fx_coll_ring_order_by_host(host, n, order);
    for (int k = 0; k < n; k++) {
        fx_status s = gather ? fx_coll_ring_allgather_ordered(&r->plans[k], n, k, order, count,
                                                              c.es, c.chunk_bytes)
                             : fx_coll_ring_allreduce_ordered(&r->plans[k], n, k, order, count,
                                                              c.es, c.chunk_bytes, c.nslots);

        cr_assert_eq(s, FX_OK);
    }
    cr_assert_eq(simulate(r), FX_OK, "%s; " CFG_FMT, r->res.error, CFG_ARGS(c));
    ref = calloc(r->recv_count * c.es + 1, 1);
    cr_assert_not_null(ref);
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < count; i++) {
            if (gather) {
                memcpy(ref + ((size_t)k * count + i) * c.es, r->in[k] + i * c.es, c.es);
            } else {
                store(ref + i * c.es, c.es,
                      load(ref + i * c.es, c.es) + load(r->in[k] + i * c.es, c.es));
            }
        }
    }
    for (int k = 0; k < n; k++) {
        expect_recv(r, k, ref, r->recv_count);
    }
    for (int s = 0; s < n; s++) {
        for (int d = 0; d < n; d++) {
            cross_links += host[s] != host[d] && r->res.link_bytes[s * n + d] > 0;
        }
    }
    cr_expect_eq(cross_links, count_hosts(host, n) > 1 ? count_hosts(host, n) : 0,
                 "%d links between hosts carry data; " CFG_FMT, cross_links, CFG_ARGS(c));
    free(ref);
    run_free(r);
}

Test(ring_plan, ordered_rings_cross_each_host_boundary_once, .timeout = 60)
{
    for (size_t t = 0; t < NELEMS(host_tables); t++) {
        for (int n = 2; n <= 12; n += 5) {
            for (int in_place = 0; in_place < 2; in_place++) {
                check_ordered(host_tables[t], n, 23, 0, in_place);
                check_ordered(host_tables[t], n, 23, 1, in_place);
            }
        }
    }
}

Test(ring_plan, ordered_plans_reject_a_bad_order, .timeout = 10)
{
    struct fx_plan plan;
    int dup[3]   = {0, 1, 1};
    int range[3] = {0, 1, 3};

    fx_plan_init(&plan);
    cr_expect_eq(fx_coll_ring_allreduce_ordered(&plan, 3, 2, dup, 9, 4, 0, 2), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allreduce_ordered(&plan, 3, 1, dup, 9, 4, 0, 2), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_ring_allgather_ordered(&plan, 3, 0, range, 9, 4, 0), FX_ERR_INVALID_ARG);
    fx_plan_fini(&plan);
}
