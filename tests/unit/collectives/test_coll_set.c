/*
 * Reduce-scatter, broadcast, reduce, barrier and all-to-all plans (coll_set.h), run for all
 * ranks at once through the simulator in eager and rendezvous mode: the data that lands against
 * a reference, final-reduction flags, untouched receive buffers, bytes and messages per link,
 * critical-path depth, operand order of float sums, argument checks; and the simulator's
 * rendezvous mode itself, on the ring and point-to-point plans too.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_plan.h"
#include "collectives/coll_set.h"
#include "collectives/coll_sim.h"

#define MAX_RANKS 17
#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

enum algo {
    RS,
    BCAST_CHAIN,
    BCAST_BINOMIAL,
    REDUCE_CHAIN,
    REDUCE_BINOMIAL,
    ALLTOALL,
    RING_ALLREDUCE, /* the existing plans, for rendezvous mode */
    RING_ALLGATHER,
    P2P_RING, /* rank k sends to k + 1 and receives from k - 1 */
};

static const char *const algo_name[] = {"reduce_scatter", "bcast_chain",     "bcast_binomial",
                                        "reduce_chain",   "reduce_binomial", "alltoall",
                                        "ring_allreduce", "ring_allgather",  "p2p_ring"};

/* One configuration of a collective run. */
struct cfg {
    enum algo algo;
    int n;
    size_t count;
    size_t es;
    size_t chunk_bytes;
    uint32_t nslots;
    int in_place;
    int root;
    int ordered; /* a ring order other than rank order (chain and ring plans) */
    uint32_t seed;
    int rendezvous;
};

#define CFG_FMT "%s n %d count %zu elem %zu chunk %zu nslots %u %s root %d%s seed %u %s"
#define CFG_ARGS(c)                                                                                \
    algo_name[(c).algo], (c).n, (c).count, (c).es, (c).chunk_bytes, (c).nslots,                    \
        (c).in_place ? "in place" : "out of place", (c).root, (c).ordered ? " ordered" : "",       \
        (c).seed, (c).rendezvous ? "rendezvous" : "eager"

/* All ranks' plans, inputs and buffers, and the final flags the reduce callback saw. */
struct run {
    struct cfg c;
    int order[MAX_RANKS];
    struct fx_plan plans[MAX_RANKS];
    unsigned char *in[MAX_RANKS];   /* each rank's send data, kept apart from the buffers */
    unsigned char *send[MAX_RANKS]; /* NULL where the send buffer is inside recv */
    unsigned char *recv[MAX_RANKS]; /* NULL where a rank passes no receive buffer */
    size_t send_count;
    size_t recv_count;
    uint16_t *finals[MAX_RANKS]; /* per receive element: final reductions that wrote it */
    size_t stray_finals;         /* final reductions outside every receive buffer */
    int is_float;
    struct fx_coll_sim_rank ranks[MAX_RANKS];
    struct fx_coll_sim_result res;
};

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

/* Counts a final reduction of count elements at dst against the receive buffer holding it. */
static void note_final(struct run *r, const void *dst, size_t count)
{
    uintptr_t a = (uintptr_t)dst;

    for (int k = 0; k < r->c.n; k++) {
        uintptr_t base = (uintptr_t)r->ranks[k].recvbuf;

        if (base != 0 && a >= base && a < base + r->recv_count * r->c.es) {
            size_t elem = (a - base) / r->c.es;

            for (size_t i = 0; i < count && elem + i < r->recv_count; i++) {
                r->finals[k][elem + i]++;
            }
            return;
        }
    }
    r->stray_finals++;
}

/* Wrapping sum in the element's width, or float sum for the float runs. */
static void sum_cb(void *ctx, void *dst, const void *local, const void *slot, size_t count,
                   int final)
{
    struct run *r = ctx;
    size_t es     = r->c.es;

    for (size_t i = 0; i < count; i++) {
        if (r->is_float) {
            float a;
            float b;

            memcpy(&a, (const char *)local + i * 4, 4);
            memcpy(&b, (const char *)slot + i * 4, 4);
            a += b;
            memcpy((char *)dst + i * 4, &a, 4);
        } else {
            uint64_t v = load((const unsigned char *)local + i * es, es) +
                         load((const unsigned char *)slot + i * es, es);

            store((unsigned char *)dst + i * es, es, v);
        }
    }
    if (final) {
        note_final(r, dst, count);
    }
}

static void run_free(struct run *r)
{
    for (int k = 0; k < MAX_RANKS; k++) {
        fx_plan_fini(&r->plans[k]);
        free(r->in[k]);
        free(r->send[k]);
        free(r->recv[k]);
        free(r->finals[k]);
    }
    fx_coll_sim_result_fini(&r->res);
    free(r);
}

static bool is_reduce(enum algo a)
{
    return a == REDUCE_CHAIN || a == REDUCE_BINOMIAL;
}

static bool is_bcast(enum algo a)
{
    return a == BCAST_CHAIN || a == BCAST_BINOMIAL;
}

/* A ring order other than rank order: odd positions reversed against even ones. */
static void make_order(int *order, int n)
{
    int p = 0;

    for (int k = 0; k < n; k += 2) {
        order[p++] = k;
    }
    for (int k = n - 1 - (n % 2 == 0 ? 0 : 1); k > 0; k -= 2) {
        order[p++] = k;
    }
}

/* Places rank k's buffers: in place shares one allocation as the executor would alias them. */
static void place_buffers(struct run *r, int k)
{
    const struct cfg *c = &r->c;
    size_t sbytes       = r->send_count * c->es;
    size_t rbytes       = r->recv_count * c->es;
    unsigned char *rbuf = malloc(rbytes + 1);
    const void *sendbuf = NULL;

    cr_assert_not_null(rbuf);
    memset(rbuf, 0xa5, rbytes);
    if (c->in_place && c->algo == RS) {
        /* Receive buffer = the own block of the send buffer. */
        free(rbuf);
        r->send[k] = malloc(sbytes + 1);
        cr_assert_not_null(r->send[k]);
        memcpy(r->send[k], r->in[k], sbytes);
        sendbuf = r->send[k];
        rbuf    = r->send[k] + (size_t)k * rbytes;
    } else if (c->in_place && (is_bcast(c->algo) || is_reduce(c->algo)) && k == c->root) {
        memcpy(rbuf, r->in[k], sbytes);
        sendbuf = rbuf;
    } else if (c->in_place && is_reduce(c->algo)) {
        /* Non-roots of a reduce may pass no receive buffer at all. */
        free(rbuf);
        rbuf = NULL;
    }
    if (sendbuf == NULL) {
        r->send[k] = malloc(sbytes + 1);
        cr_assert_not_null(r->send[k]);
        memcpy(r->send[k], r->in[k], sbytes);
        sendbuf = r->send[k];
    }
    r->recv[k]  = (c->in_place && c->algo == RS) ? NULL : rbuf;
    r->ranks[k] = (struct fx_coll_sim_rank){&r->plans[k], sendbuf, r->send_count, rbuf,
                                            rbuf ? r->recv_count : 0};
}

static struct run *run_new(const struct cfg *c)
{
    struct run *r  = calloc(1, sizeof(*r));
    size_t nblocks = (c->algo == RS || c->algo == ALLTOALL) ? (size_t)c->n : 1;

    cr_assert_not_null(r);
    r->c          = *c;
    r->send_count = c->count * nblocks;
    r->recv_count =
        (c->algo == ALLTOALL || c->algo == RING_ALLGATHER) ? c->count * (size_t)c->n : c->count;
    make_order(r->order, c->n);
    for (int k = 0; k < c->n; k++) {
        fx_plan_init(&r->plans[k]);
        r->in[k]     = malloc(r->send_count * c->es + 1);
        r->finals[k] = calloc(r->recv_count + 1, sizeof(uint16_t));
        cr_assert(r->in[k] && r->finals[k]);
        for (size_t b = 0; b < r->send_count * c->es; b++) {
            r->in[k][b] = input_byte(k, b);
        }
        place_buffers(r, k);
    }
    return r;
}

/* The receive buffer rank k ended with (in place reduce-scatter: inside its send buffer). */
static const unsigned char *result_of(const struct run *r, int k)
{
    return r->ranks[k].recvbuf;
}

static fx_status build_one(const struct cfg *c, struct fx_plan *p, int k, const int *order)
{
    switch (c->algo) {
    case RS:
        return fx_coll_ring_reduce_scatter(p, c->n, k, order, c->count, c->es, c->chunk_bytes,
                                           c->nslots);
    case BCAST_CHAIN:
        return fx_coll_bcast_chain(p, c->n, k, order, c->root, c->count, c->es, c->chunk_bytes);
    case BCAST_BINOMIAL:
        return fx_coll_bcast_binomial(p, c->n, k, c->root, c->count, c->es, c->chunk_bytes);
    case REDUCE_CHAIN:
        return fx_coll_reduce_chain(p, c->n, k, order, c->root, c->count, c->es, c->chunk_bytes,
                                    c->nslots);
    case REDUCE_BINOMIAL:
        return fx_coll_reduce_binomial(p, c->n, k, c->root, c->count, c->es, c->chunk_bytes,
                                       c->nslots);
    case ALLTOALL:
        return fx_coll_alltoall_pairwise(p, c->n, k, c->count, c->es, c->chunk_bytes);
    case RING_ALLREDUCE:
        return fx_coll_ring_allreduce_ordered(p, c->n, k, order, c->count, c->es, c->chunk_bytes,
                                              c->nslots);
    case RING_ALLGATHER:
        return fx_coll_ring_allgather_ordered(p, c->n, k, order, c->count, c->es, c->chunk_bytes);
    default:
        return fx_coll_p2p(p, c->n, k, c->n > 1 ? (k + 1) % c->n : -1, c->count,
                           c->n > 1 ? (k + c->n - 1) % c->n : -1, c->count, c->es, c->chunk_bytes);
    }
}

/* Builds every rank's plan, checks slot sizes against the chunk, and simulates. */
static void build_and_simulate(struct run *r)
{
    const struct cfg *c          = &r->c;
    struct fx_coll_sim_opts opts = {.seed = c->seed, .rendezvous = c->rendezvous};
    size_t chunk_bytes           = c->chunk_bytes ? c->chunk_bytes : (1u << 20);

    for (int k = 0; k < c->n; k++) {
        const struct fx_plan *p = &r->plans[k];

        cr_assert_eq(build_one(c, &r->plans[k], k, c->ordered ? r->order : NULL), FX_OK, CFG_FMT,
                     CFG_ARGS(*c));
        cr_expect(p->nslots <= c->nslots, "rank %d uses %u slots; " CFG_FMT, k, p->nslots,
                  CFG_ARGS(*c));
        cr_expect(p->slot_count * c->es <= (chunk_bytes > c->es ? chunk_bytes : c->es),
                  "rank %d slot of %zu elements; " CFG_FMT, k, p->slot_count, CFG_ARGS(*c));
    }
    cr_assert_eq(fx_coll_sim_run_opts(r->ranks, c->n, sum_cb, r, &opts, &r->res), FX_OK,
                 "%s; " CFG_FMT, r->res.error, CFG_ARGS(*c));
}

static void expect_bytes(const struct run *r, int k, const unsigned char *got,
                         const unsigned char *want, size_t nelem)
{
    size_t es = r->c.es;

    if (nelem == 0 || memcmp(got, want, nelem * es) == 0) {
        return;
    }
    for (size_t i = 0; i < nelem; i++) {
        if (memcmp(got + i * es, want + i * es, es) != 0) {
            cr_expect_fail("rank %d element %zu is %#llx, expected %#llx; " CFG_FMT, k, i,
                           (unsigned long long)load(got + i * es, es),
                           (unsigned long long)load(want + i * es, es), CFG_ARGS(r->c));
            return;
        }
    }
}

/* ref[i] = wrapping sum over ranks of in[k][offset + i]. */
static void sum_ref(const struct run *r, size_t offset, unsigned char *ref)
{
    size_t es = r->c.es;

    for (size_t i = 0; i < r->c.count; i++) {
        uint64_t v = 0;

        for (int k = 0; k < r->c.n; k++) {
            v += load(r->in[k] + (offset + i) * es, es);
        }
        store(ref + i * es, es, v);
    }
}

/* Every element of rank k's receive buffer had exactly one final reduction (n > 1). */
static void expect_one_final(const struct run *r, int k)
{
    for (size_t i = 0; i < r->c.count && r->c.n > 1; i++) {
        if (r->finals[k][i] != 1) {
            cr_expect_fail("rank %d element %zu: %u final reductions; " CFG_FMT, k, i,
                           r->finals[k][i], CFG_ARGS(r->c));
            return;
        }
    }
}

/* The ring position of rank k under the run's order. */
static int pos_of(const struct run *r, int k)
{
    for (int p = 0; p < r->c.n; p++) {
        if ((r->c.ordered ? r->order[p] : p) == k) {
            return p;
        }
    }
    return -1;
}

static int ring_at(const struct run *r, int p)
{
    p %= r->c.n;
    return r->c.ordered ? r->order[p] : p;
}

/* Each rank sends (n - 1) * count elements, only to its ring successor. */
static void check_rs(struct run *r, unsigned char *ref)
{
    const struct cfg *c = &r->c;
    uint64_t bytes      = (uint64_t)(c->n - 1) * c->count * c->es;

    for (int k = 0; k < c->n; k++) {
        int right = ring_at(r, pos_of(r, k) + 1);

        sum_ref(r, (size_t)k * c->count, ref);
        expect_bytes(r, k, result_of(r, k), ref, c->count);
        expect_one_final(r, k);
        cr_expect_eq(r->res.rank_bytes_sent[k], bytes, "rank %d sent %llu; " CFG_FMT, k,
                     (unsigned long long)r->res.rank_bytes_sent[k], CFG_ARGS(*c));
        if (c->n > 1) {
            cr_expect_eq(r->res.link_bytes[k * c->n + right], bytes, "rank %d; " CFG_FMT, k,
                         CFG_ARGS(*c));
        }
    }
}

/* Every rank holds root's data; n - 1 links (chain: the ring from root) carry count each. */
static void check_bcast(struct run *r)
{
    const struct cfg *c = &r->c;
    uint64_t bytes      = c->count * c->es;
    uint64_t received;

    for (int k = 0; k < c->n; k++) {
        expect_bytes(r, k, result_of(r, k), r->in[c->root], c->count);
        received = 0;
        for (int s = 0; s < c->n; s++) {
            received += r->res.link_bytes[s * c->n + k];
        }
        cr_expect_eq(received, k == c->root ? 0 : bytes, "rank %d received %llu; " CFG_FMT, k,
                     (unsigned long long)received, CFG_ARGS(*c));
        if (c->algo == BCAST_CHAIN && k != ring_at(r, pos_of(r, c->root) + c->n - 1)) {
            cr_expect_eq(r->res.link_bytes[k * c->n + ring_at(r, pos_of(r, k) + 1)], bytes,
                         "rank %d; " CFG_FMT, k, CFG_ARGS(*c));
        }
    }
    cr_expect_eq(r->res.total_bytes, (uint64_t)(c->n - 1) * bytes, CFG_FMT, CFG_ARGS(*c));
}

/* Root holds the sum; other receive buffers untouched; each non-root sends count once. */
static void check_reduce(struct run *r, unsigned char *ref)
{
    const struct cfg *c = &r->c;

    sum_ref(r, 0, ref);
    expect_bytes(r, c->root, result_of(r, c->root), ref, c->count);
    expect_one_final(r, c->root);
    cr_expect_eq(r->stray_finals, 0, CFG_FMT, CFG_ARGS(*c));
    for (int k = 0; k < c->n; k++) {
        cr_expect_eq(r->res.rank_bytes_sent[k], k == c->root ? 0 : c->count * c->es,
                     "rank %d sent %llu; " CFG_FMT, k,
                     (unsigned long long)r->res.rank_bytes_sent[k], CFG_ARGS(*c));
        if (k == c->root || r->recv[k] == NULL) {
            continue;
        }
        for (size_t b = 0; b < c->count * c->es; b++) {
            if (r->recv[k][b] != 0xa5) {
                cr_expect_fail("non-root %d wrote its receive buffer at byte %zu; " CFG_FMT, k, b,
                               CFG_ARGS(*c));
                break;
            }
        }
    }
}

/*
 * All-to-all: block d of rank s's send data lands at block s of rank d, count elements per
 * ordered pair. All-gather: rank s's data at block s everywhere.
 */
static void check_gathered(struct run *r)
{
    const struct cfg *c = &r->c;
    size_t bytes        = c->count * c->es;
    bool a2a            = c->algo == ALLTOALL;

    for (int d = 0; d < c->n; d++) {
        for (int s = 0; s < c->n; s++) {
            expect_bytes(r, d, result_of(r, d) + (size_t)s * bytes,
                         r->in[s] + (a2a ? (size_t)d * bytes : 0), c->count);
            if (a2a) {
                cr_expect_eq(r->res.link_bytes[s * c->n + d], s == d ? 0 : bytes,
                             "link %d -> %d; " CFG_FMT, s, d, CFG_ARGS(*c));
            }
        }
    }
}

/* Builds, simulates and checks one configuration against its reference. */
static void check(const struct cfg *c)
{
    struct run *r      = run_new(c);
    unsigned char *ref = malloc(c->count * c->es + 1);

    cr_assert_not_null(ref);
    build_and_simulate(r);
    switch (c->algo) {
    case RS:
        check_rs(r, ref);
        break;
    case BCAST_CHAIN:
    case BCAST_BINOMIAL:
        check_bcast(r);
        break;
    case REDUCE_CHAIN:
    case REDUCE_BINOMIAL:
        check_reduce(r, ref);
        break;
    case ALLTOALL:
    case RING_ALLGATHER:
        check_gathered(r);
        break;
    case RING_ALLREDUCE:
        sum_ref(r, 0, ref);
        for (int k = 0; k < c->n; k++) {
            expect_bytes(r, k, result_of(r, k), ref, c->count);
        }
        break;
    default:
        for (int k = 0; k < c->n && c->n > 1; k++) {
            expect_bytes(r, k, result_of(r, k), r->in[(k + c->n - 1) % c->n], c->count);
        }
        break;
    }
    free(ref);
    run_free(r);
}

/* The fewest slots the algorithm accepts for n ranks (coll_set.h). */
static uint32_t min_slots(enum algo a, int n)
{
    if (a == RS || a == REDUCE_BINOMIAL) {
        return n >= 3 ? 2 : 1;
    }
    return 1;
}

/*
 * One algorithm on n ranks: counts {0, 1, n - 1, n + 1, 7, 1021} x element sizes x chunk sizes,
 * each in eager and rendezvous mode; the variant counter walks slots (minimum to minimum + 2),
 * placement, root (0, n - 1, middle), ring order and scheduling seed through their values.
 */
static void sweep(enum algo algo, int n)
{
    static const size_t elem_sizes[] = {1, 2, 4, 8};
    static const size_t chunks[]     = {0, 8, 24};
    const size_t counts[]            = {0, 1, (size_t)n - 1, (size_t)n + 1, 7, 1021};
    const int roots[]                = {0, n - 1, n / 2};
    uint32_t v                       = 0;

    for (size_t ci = 0; ci < NELEMS(counts); ci++) {
        for (size_t ei = 0; ei < NELEMS(elem_sizes); ei++) {
            for (size_t ki = 0; ki < NELEMS(chunks); ki++, v++) {
                struct cfg c = {
                    .algo        = algo,
                    .n           = n,
                    .count       = counts[ci],
                    .es          = elem_sizes[ei],
                    .chunk_bytes = chunks[ki],
                    .nslots      = min_slots(algo, n) + v % 3,
                    .in_place    = algo != ALLTOALL && algo < RING_ALLREDUCE && (v & 1),
                    .root        = roots[v % 3],
                    .ordered     = (v >> 1) & 1,
                    .seed        = (v % 4) == 0 ? 0 : v,
                };

                check(&c);
                c.rendezvous = 1;
                check(&c);
            }
        }
    }
}

struct sweep_param {
    enum algo algo;
    int n;
};

static struct sweep_param *sweep_params(size_t *len)
{
    static struct sweep_param p[6 * MAX_RANKS];

    for (int a = 0; a < 6; a++) {
        for (int n = 1; n <= MAX_RANKS; n++) {
            p[a * MAX_RANKS + n - 1] = (struct sweep_param){(enum algo)a, n};
        }
    }
    *len = NELEMS(p);
    return p;
}

ParameterizedTestParameters(coll_set, lands_the_reference_on_every_rank)
{
    size_t len;
    struct sweep_param *p = sweep_params(&len);

    return cr_make_param_array(struct sweep_param, p, len);
}

ParameterizedTest(struct sweep_param *p, coll_set, lands_the_reference_on_every_rank, .timeout = 60)
{
    sweep(p->algo, p->n);
}

/* Several chunks of a large count, on a few rank counts, every algorithm, both modes. */
Test(coll_set, large_counts_pipeline_in_chunks, .timeout = 60)
{
    static const int nranks[] = {2, 5, 17};

    for (int a = 0; a < 6; a++) {
        for (size_t ni = 0; ni < NELEMS(nranks); ni++) {
            int n        = nranks[ni];
            struct cfg c = {.algo        = (enum algo)a,
                            .n           = n,
                            .count       = (a == RS || a == ALLTOALL) ? 20011 : 100003,
                            .es          = 4,
                            .chunk_bytes = (a == RS || a == ALLTOALL) ? 16384 : 65536,
                            .nslots      = min_slots((enum algo)a, n),
                            .in_place    = a != ALLTOALL && ni == 1,
                            .root        = n / 2,
                            .ordered     = 1};

            check(&c);
            c.rendezvous = 1;
            c.seed       = 7;
            check(&c);
        }
    }
}

/* The ring plans and point-to-point plans keep working when sends wait for their receives. */
Test(coll_set, existing_plans_complete_under_rendezvous, .timeout = 30)
{
    static const enum algo algos[] = {RING_ALLREDUCE, RING_ALLGATHER, P2P_RING};

    for (size_t a = 0; a < NELEMS(algos); a++) {
        for (int n = 1; n <= 9; n++) {
            for (uint32_t seed = 0; seed < 3; seed++) {
                struct cfg c = {.algo        = algos[a],
                                .n           = n,
                                .count       = seed == 2 ? 0 : 37 * (size_t)n + seed,
                                .es          = (size_t)1 << seed,
                                .chunk_bytes = 16,
                                .nslots      = 1 + seed,
                                .ordered     = (int)(seed & 1),
                                .seed        = seed,
                                .rendezvous  = 1};

                check(&c);
            }
        }
    }
}

/* Sends that complete only because they are buffered: fine eagerly, a deadlock in rendezvous. */
Test(coll_set, rendezvous_mode_finds_a_send_that_waits_for_itself, .timeout = 10)
{
    struct fx_plan plans[2];
    struct fx_coll_sim_rank ranks[2];
    struct fx_coll_sim_result res;
    struct fx_coll_sim_opts opts = {.seed = 0, .rendezvous = 0};
    uint32_t data[2][4]          = {{1, 2, 3, 4}, {5, 6, 7, 8}};
    uint32_t out[2][4];

    for (int k = 0; k < 2; k++) {
        fx_plan_init(&plans[k]);
        plans[k].nranks    = 2;
        plans[k].rank      = k;
        plans[k].elem_size = 4;
        cr_assert_eq(fx_plan_push(&plans[k], &(struct fx_plan_op){.kind  = FX_PLAN_SEND,
                                                                  .buf   = FX_BUF_SEND,
                                                                  .peer  = 1 - k,
                                                                  .dep   = -1,
                                                                  .count = 4}),
                     0);
        cr_assert_eq(fx_plan_push(&plans[k], &(struct fx_plan_op){.kind  = FX_PLAN_RECV,
                                                                  .buf   = FX_BUF_RECV,
                                                                  .peer  = 1 - k,
                                                                  .dep   = 0,
                                                                  .count = 4}),
                     1);
        ranks[k] = (struct fx_coll_sim_rank){&plans[k], data[k], 4, out[k], 4};
    }
    cr_expect_eq(fx_coll_sim_run_opts(ranks, 2, NULL, NULL, &opts, &res), FX_OK, "%s", res.error);
    cr_expect_eq(out[0][3], 8);
    fx_coll_sim_result_fini(&res);
    opts.rendezvous = 1;
    cr_expect_eq(fx_coll_sim_run_opts(ranks, 2, NULL, NULL, &opts, &res), FX_ERR_INTERNAL, "%s",
                 res.error);
    cr_expect(strstr(res.error, "deadlock") != NULL, "%s", res.error);
    cr_expect(strstr(res.error, "rank 0 op 0 (send peer 1: waiting for its receive") != NULL, "%s",
              res.error);
    fx_coll_sim_result_fini(&res);
    cr_expect_eq(fx_coll_sim_run_opts(ranks, 2, NULL, NULL, NULL, &res), FX_OK, "%s", res.error);
    fx_coll_sim_result_fini(&res);
    for (int k = 0; k < 2; k++) {
        fx_plan_fini(&plans[k]);
    }
}

static int ceil_log2(int n)
{
    int k = 0;

    while ((1 << k) < n) {
        k++;
    }
    return k;
}

/* Barrier: ceil(log2 n) empty messages per rank, one per link r -> r + 2^k, NULL buffers. */
Test(coll_set, barrier_sends_log2_empty_messages_per_rank, .timeout = 30)
{
    for (int n = 1; n <= MAX_RANKS; n++) {
        for (uint32_t mode = 0; mode < 4; mode++) {
            struct fx_plan plans[MAX_RANKS];
            struct fx_coll_sim_rank ranks[MAX_RANKS];
            struct fx_coll_sim_result res;
            struct fx_coll_sim_opts opts = {.seed = mode * 5, .rendezvous = (int)(mode & 1)};
            int rounds                   = ceil_log2(n);

            for (int k = 0; k < n; k++) {
                fx_plan_init(&plans[k]);
                cr_assert_eq(fx_coll_barrier(&plans[k], n, k), FX_OK);
                cr_expect_eq(plans[k].nops, 2 * (size_t)rounds, "n %d", n);
                cr_expect_eq(plans[k].elem_size, 1);
                ranks[k] = (struct fx_coll_sim_rank){&plans[k], NULL, 0, NULL, 0};
            }
            cr_assert_eq(fx_coll_sim_run_opts(ranks, n, NULL, NULL, &opts, &res), FX_OK,
                         "n %d mode %u: %s", n, mode, res.error);
            cr_expect_eq(res.total_bytes, 0);
            cr_expect_eq(res.total_msgs, (uint64_t)n * (uint64_t)rounds, "n %d", n);
            /* A send and the receive it unlocks per round: two levels each. */
            cr_expect_eq(res.depth, 2 * (uint32_t)rounds, "n %d depth %u", n, res.depth);
            for (int k = 0; k < n; k++) {
                for (int d = 1; d < n; d <<= 1) {
                    cr_expect_eq(res.link_msgs[k * n + (k + d) % n], 1, "n %d link %d -> %d", n, k,
                                 (k + d) % n);
                }
                fx_plan_fini(&plans[k]);
            }
            fx_coll_sim_result_fini(&res);
        }
    }
}

/* Builds and simulates one configuration; returns the run for its result's numbers. */
static struct run *simulated(const struct cfg *c)
{
    struct run *r = run_new(c);

    build_and_simulate(r);
    return r;
}

static int max_popcount_below(int n)
{
    int best = 0;

    for (int v = 0; v < n; v++) {
        best = __builtin_popcount((unsigned)v) > best ? __builtin_popcount((unsigned)v) : best;
    }
    return best;
}

/* One chunk: chains are n - 1 hops deep, binomial trees as deep as their deepest leaf. */
Test(coll_set, depth_follows_the_shape, .timeout = 30)
{
    for (int n = 2; n <= MAX_RANKS; n++) {
        for (int a = 0; a < 5; a++) {
            struct cfg c = {
                .algo = (enum algo)a, .n = n, .count = 64, .es = 4, .nslots = 2, .root = n / 3};
            struct run *r = simulated(&c);
            uint32_t want = 2 * (uint32_t)(n - 1);

            if (a == BCAST_BINOMIAL) {
                want = 2 * (uint32_t)max_popcount_below(n);
            }
            if (a == REDUCE_BINOMIAL) {
                /* The deepest leaf's way up, at most one more level per child of the root. */
                cr_expect_geq(r->res.depth, 2 * (uint32_t)max_popcount_below(n), CFG_FMT,
                              CFG_ARGS(c));
                want = r->res.depth;
            }
            cr_expect_leq(r->res.depth,
                          a == BCAST_BINOMIAL || a == REDUCE_BINOMIAL ? 2 * (uint32_t)ceil_log2(n)
                                                                      : want,
                          CFG_FMT " depth %u", CFG_ARGS(c), r->res.depth);
            cr_expect_eq(r->res.depth, want, CFG_FMT " depth %u", CFG_ARGS(c), r->res.depth);
            cr_expect_eq(r->res.total_msgs,
                         a == RS ? (uint64_t)n * (uint64_t)(n - 1) : (uint64_t)(n - 1), CFG_FMT,
                         CFG_ARGS(c));
            run_free(r);
        }
    }
}

/* Float inputs of many magnitudes, so that a different association shows in the bits. */
static float float_input(int rank, size_t i)
{
    unsigned char a = input_byte(rank, 2 * i);
    unsigned char b = input_byte(rank, 2 * i + 1);

    return ((float)a - 127.5f) / 7.0f * (float)(1u << (b % 20));
}

static float float_at(const struct run *r, int k, size_t i)
{
    float f;

    memcpy(&f, r->in[k] + i * 4, 4);
    return f;
}

/* A binomial subtree's sum: own value, then each child's subtree in ascending order. */
static float tree_sum(const struct run *r, int v, size_t i)
{
    int limit = v == 0 ? 1 << ceil_log2(r->c.n) : (v & -v);
    float acc = float_at(r, (v + r->c.root) % r->c.n, i);

    for (int m = 1; m < limit && v + m < r->c.n; m <<= 1) {
        acc = acc + tree_sum(r, v + m, i);
    }
    return acc;
}

/* A chain's sum ending at ring position q: from q + 1 around, each rank adding its own value. */
static float chain_sum(const struct run *r, int q, size_t i, size_t block)
{
    float acc = float_at(r, ring_at(r, q + 1), block + i);

    for (int j = 2; j <= r->c.n; j++) {
        acc = float_at(r, ring_at(r, q + j), block + i) + acc;
    }
    return acc;
}

/* The float result's reference in the documented association, for rank k's element i. */
static float float_ref(const struct run *r, int k, size_t i)
{
    if (r->c.algo == REDUCE_BINOMIAL) {
        return tree_sum(r, 0, i);
    }
    return chain_sum(r, pos_of(r, k), i, r->c.algo == RS ? (size_t)k * r->c.count : 0);
}

/* Float sums come out bit for bit as the algorithm's fixed association, whatever the schedule. */
Test(coll_set, float_sums_follow_a_fixed_association, .timeout = 60)
{
    static const enum algo algos[] = {RS, REDUCE_CHAIN, REDUCE_BINOMIAL};

    for (size_t a = 0; a < NELEMS(algos); a++) {
        for (int n = 1; n <= MAX_RANKS; n += 2) {
            for (uint32_t seed = 0; seed < 4; seed++) {
                struct cfg c  = {.algo        = algos[a],
                                 .n           = n,
                                 .count       = 61,
                                 .es          = 4,
                                 .chunk_bytes = 16 << seed,
                                 .nslots      = min_slots(algos[a], n) + seed % 2,
                                 .in_place    = (int)(seed >> 1),
                                 .root        = (int)seed % n,
                                 .ordered     = (int)(seed & 1),
                                 .seed        = seed,
                                 .rendezvous  = (int)(seed & 1)};
                struct run *r = run_new(&c);

                r->is_float = 1;
                for (int k = 0; k < n; k++) {
                    for (size_t i = 0; i < r->send_count; i++) {
                        float f = float_input(k, i);

                        memcpy(r->in[k] + i * 4, &f, 4);
                    }
                    free(r->send[k]);
                    free(r->recv[k]);
                    r->send[k] = NULL;
                    r->recv[k] = NULL;
                    place_buffers(r, k);
                }
                build_and_simulate(r);
                for (int k = 0; k < n; k++) {
                    if (algos[a] != RS && k != c.root) {
                        continue;
                    }
                    for (size_t i = 0; i < c.count; i++) {
                        float want = float_ref(r, k, i);

                        if (memcmp(result_of(r, k) + i * 4, &want, 4) != 0) {
                            cr_expect_fail("rank %d element %zu differs from %a; " CFG_FMT, k, i,
                                           (double)want, CFG_ARGS(c));
                            break;
                        }
                    }
                }
                run_free(r);
            }
        }
    }
}

/* Each builder's argument checks: NULL plan, ranks, root, elem size, overflow, order, slots. */
Test(coll_set, rejects_invalid_arguments, .timeout = 10)
{
    struct fx_plan p;
    int dup[4]  = {0, 1, 1, 3};
    int oob[4]  = {0, 1, 2, 4};
    size_t huge = SIZE_MAX / 4;

    fx_plan_init(&p);
    for (int a = 0; a < 6; a++) {
        struct cfg ok = {.algo = (enum algo)a, .n = 4, .count = 8, .es = 4, .nslots = 2};
        struct cfg c  = ok;

        cr_expect_eq(build_one(&c, &p, 1, NULL), FX_OK, "%s", algo_name[a]);
        cr_expect_eq(build_one(&c, NULL, 1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        cr_expect_eq(build_one(&c, &p, -1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        cr_expect_eq(build_one(&c, &p, 4, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        c.n = 0;
        cr_expect_eq(build_one(&c, &p, 0, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        c    = ok;
        c.es = 0;
        cr_expect_eq(build_one(&c, &p, 1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        c       = ok;
        c.count = huge; /* huge * 4 bytes fits, huge * 4 ranks * 4 bytes does not */
        cr_expect_eq(build_one(&c, &p, 1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        if (a != RS && a != ALLTOALL) {
            c      = ok;
            c.root = -1;
            cr_expect_eq(build_one(&c, &p, 1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
            c.root = 4;
            cr_expect_eq(build_one(&c, &p, 1, NULL), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        }
        if (a == RS || a == BCAST_CHAIN || a == REDUCE_CHAIN) {
            cr_expect_eq(build_one(&ok, &p, 1, dup), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
            cr_expect_eq(build_one(&ok, &p, 1, oob), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
            /* A permutation without this rank's duplicate is still refused on rank 0. */
            cr_expect_eq(build_one(&ok, &p, 0, dup), FX_ERR_INVALID_ARG, "%s", algo_name[a]);
        }
        if (a == RS || a == REDUCE_CHAIN || a == REDUCE_BINOMIAL) {
            c        = ok;
            c.nslots = min_slots((enum algo)a, 4) - 1;
            cr_expect_eq(build_one(&c, &p, 1, NULL), FX_ERR_UNSUPPORTED, "%s", algo_name[a]);
            c.n = 2;
            cr_expect_eq(build_one(&c, &p, 1, NULL),
                         c.nslots >= min_slots((enum algo)a, 2) ? FX_OK : FX_ERR_UNSUPPORTED, "%s",
                         algo_name[a]);
            c.n = 1;
            cr_expect_eq(build_one(&c, &p, 0, NULL), FX_OK, "%s one rank", algo_name[a]);
            c        = ok;
            c.count  = 0;
            c.nslots = 0;
            cr_expect_eq(build_one(&c, &p, 1, NULL), FX_OK, "%s count 0", algo_name[a]);
            cr_expect_eq(p.nops, 0, "%s count 0", algo_name[a]);
        }
    }
    cr_expect_eq(fx_coll_barrier(NULL, 4, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_barrier(&p, 0, 0), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_barrier(&p, 4, 4), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_coll_barrier(&p, 4, -1), FX_ERR_INVALID_ARG);
    fx_plan_fini(&p);
}

/* One rank: a plan of one final COPY (nothing for count 0 or the barrier). */
Test(coll_set, single_rank_plans_copy_at_most, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    for (int a = 0; a < 6; a++) {
        struct cfg c = {.algo = (enum algo)a, .n = 1, .count = 13, .es = 2, .nslots = 1};

        cr_assert_eq(build_one(&c, &p, 0, NULL), FX_OK, "%s", algo_name[a]);
        cr_assert_eq(p.nops, 1, "%s", algo_name[a]);
        cr_expect_eq(p.ops[0].kind, FX_PLAN_COPY, "%s", algo_name[a]);
        cr_expect(p.ops[0].flags & FX_PLAN_FINAL, "%s", algo_name[a]);
        cr_expect_eq(p.ops[0].count, 13, "%s", algo_name[a]);
        c.count = 0;
        cr_assert_eq(build_one(&c, &p, 0, NULL), FX_OK, "%s", algo_name[a]);
        cr_expect_eq(p.nops, 0, "%s", algo_name[a]);
    }
    cr_assert_eq(fx_coll_barrier(&p, 1, 0), FX_OK);
    cr_expect_eq(p.nops, 0);
    fx_plan_fini(&p);
}
