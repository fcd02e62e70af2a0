/*
 * Point-to-point plans: how a message is cut into chunks (counts 0, 1, chunk boundaries and one
 * either side), that both ends cut alike, and, through the simulator, that sends, receives and
 * exchanges between any ranks deliver every byte in order without a deadlock.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_plan.h"
#include "collectives/coll_sim.h"

#define MAX_RANKS 8

/* Chunks of CHUNK_BYTES / ES = 16 elements. */
#define ES          4
#define CHUNK_BYTES 64
#define CHUNK       (CHUNK_BYTES / ES)

static size_t expected_ops(size_t count, size_t chunk)
{
    return count == 0 ? 1 : (count + chunk - 1) / chunk;
}

/* The ops of a one-message plan cover [0, count) in order, in chunks of chunk elements. */
static void expect_chunks(const struct fx_plan *p, uint8_t kind, int peer, size_t count,
                          size_t chunk)
{
    size_t offset = 0;

    cr_assert_eq(p->nops, expected_ops(count, chunk), "count %zu chunk %zu: %zu ops", count, chunk,
                 p->nops);
    for (size_t i = 0; i < p->nops; i++) {
        const struct fx_plan_op *op = &p->ops[i];
        size_t want                 = count - offset < chunk ? count - offset : chunk;

        cr_expect_eq(op->kind, kind, "count %zu op %zu: kind %u", count, i, op->kind);
        cr_expect_eq(op->peer, peer, "count %zu op %zu: peer %d", count, i, (int)op->peer);
        cr_expect_eq(op->dep, -1, "count %zu op %zu: dep %d", count, i, (int)op->dep);
        cr_expect_eq(op->buf, kind == FX_PLAN_SEND ? FX_BUF_SEND : FX_BUF_RECV);
        cr_expect_eq(op->offset, offset, "count %zu op %zu: offset %llu, want %zu", count, i,
                     (unsigned long long)op->offset, offset);
        cr_expect_eq(op->count, want, "count %zu op %zu: %llu elements, want %zu", count, i,
                     (unsigned long long)op->count, want);
        cr_expect_eq(op->step, i, "count %zu op %zu: step %u", count, i, op->step);
        offset += op->count;
    }
    cr_expect_eq(offset, count, "count %zu: the ops cover %zu elements", count, offset);
    cr_expect_eq(p->nslots, 0, "count %zu: a p2p plan uses no scratch", count);
}

static size_t chunk_counts[] = {0,         1,         CHUNK - 1,     CHUNK,        CHUNK + 1,
                                2 * CHUNK, 3 * CHUNK, 3 * CHUNK + 1, 3 * CHUNK - 1};

ParameterizedTestParameters(p2p_plan, cuts_messages_at_chunk_boundaries)
{
    return cr_make_param_array(size_t, chunk_counts, sizeof(chunk_counts) / sizeof(size_t));
}

ParameterizedTest(size_t *count, p2p_plan, cuts_messages_at_chunk_boundaries, .timeout = 10)
{
    struct fx_plan send;
    struct fx_plan recv;

    fx_plan_init(&send);
    fx_plan_init(&recv);
    cr_assert_eq(fx_coll_p2p(&send, 4, 1, 3, *count, -1, 0, ES, CHUNK_BYTES), FX_OK);
    cr_assert_eq(fx_coll_p2p(&recv, 4, 3, -1, 0, 1, *count, ES, CHUNK_BYTES), FX_OK);
    expect_chunks(&send, FX_PLAN_SEND, 3, *count, CHUNK);
    expect_chunks(&recv, FX_PLAN_RECV, 1, *count, CHUNK);
    fx_plan_fini(&send);
    fx_plan_fini(&recv);
}

Test(p2p_plan, chunk_rounds_down_to_whole_elements_and_at_least_one, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    /* 60 bytes of 8-byte elements: 7 per chunk. */
    cr_assert_eq(fx_coll_p2p(&p, 2, 0, 1, 15, -1, 0, 8, 60), FX_OK);
    expect_chunks(&p, FX_PLAN_SEND, 1, 15, 7);
    /* A chunk smaller than one element still moves one element per op. */
    cr_assert_eq(fx_coll_p2p(&p, 2, 0, 1, 3, -1, 0, 8, 5), FX_OK);
    expect_chunks(&p, FX_PLAN_SEND, 1, 3, 1);
    fx_plan_fini(&p);
}

Test(p2p_plan, sendrecv_sends_and_receives_independently, .timeout = 10)
{
    struct fx_plan p;
    size_t sends = 0;
    size_t recvs = 0;

    fx_plan_init(&p);
    cr_assert_eq(fx_coll_p2p(&p, 5, 2, 4, 2 * CHUNK + 3, 0, CHUNK, ES, CHUNK_BYTES), FX_OK);
    cr_assert_eq(p.nops, 3 + 1);
    for (size_t i = 0; i < p.nops; i++) {
        cr_expect_eq(p.ops[i].dep, -1, "op %zu depends on op %d", i, (int)p.ops[i].dep);
        sends += p.ops[i].kind == FX_PLAN_SEND && p.ops[i].peer == 4;
        recvs += p.ops[i].kind == FX_PLAN_RECV && p.ops[i].peer == 0;
    }
    cr_expect_eq(sends, 3);
    cr_expect_eq(recvs, 1);
    /* Either count may be 0: the empty message is one header-only op. */
    cr_assert_eq(fx_coll_p2p(&p, 5, 2, 4, 0, 0, 0, ES, CHUNK_BYTES), FX_OK);
    cr_assert_eq(p.nops, 2);
    cr_expect(p.ops[0].count == 0 && p.ops[1].count == 0);
    fx_plan_fini(&p);
}

/* The executor's batches: a second call appended after a first keeps the first's ops as they
 * were, cuts its own in elements of its own size, and a bad call leaves the plan unchanged. */
Test(p2p_plan, append_adds_a_call_after_the_first, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    cr_assert_eq(fx_coll_p2p(&p, 4, 1, 3, CHUNK + 1, -1, 0, ES, CHUNK_BYTES), FX_OK);
    cr_assert_eq(p.nops, 2);
    /* 2-byte elements: twice as many per chunk. */
    cr_assert_eq(fx_coll_p2p_append(&p, 4, 1, 0, 2 * CHUNK + 5, 2, 7, 2, CHUNK_BYTES), FX_OK);
    cr_assert_eq(p.nops, 2 + 2 + 1);
    cr_expect(p.ops[0].peer == 3 && p.ops[0].count == CHUNK && p.ops[1].count == 1);
    cr_expect(p.ops[2].kind == FX_PLAN_SEND && p.ops[2].peer == 0 &&
                  p.ops[2].count == CHUNK_BYTES / 2 && p.ops[2].offset == 0,
              "the appended send's first chunk: peer %d, count %zu", (int)p.ops[2].peer,
              (size_t)p.ops[2].count);
    cr_expect(p.ops[3].count == 5 && p.ops[3].offset == CHUNK_BYTES / 2 && p.ops[3].step == 1);
    cr_expect(p.ops[4].kind == FX_PLAN_RECV && p.ops[4].peer == 2 && p.ops[4].count == 7 &&
              p.ops[4].step == 0);
    cr_expect_eq(p.elem_size, ES, "the plan keeps its first call's element size");
    cr_expect_eq(fx_coll_p2p_append(&p, 4, 1, 1, 8, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG);
    cr_expect_eq(p.nops, 5, "a rejected call adds nothing");
    fx_plan_fini(&p);
}

Test(p2p_plan, rejects_bad_peers_and_sizes, .timeout = 10)
{
    struct fx_plan p;

    fx_plan_init(&p);
    cr_expect_eq(fx_coll_p2p(&p, 4, 1, 1, 8, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "send to self");
    cr_expect_eq(fx_coll_p2p(&p, 4, 1, -1, 0, 1, 8, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "receive from self");
    cr_expect_eq(fx_coll_p2p(&p, 4, 1, 4, 8, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "peer == nranks");
    cr_expect_eq(fx_coll_p2p(&p, 4, 1, -1, 0, -2, 8, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "peer -2");
    cr_expect_eq(fx_coll_p2p(&p, 4, 4, 0, 8, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "rank == nranks");
    cr_expect_eq(fx_coll_p2p(&p, 0, 0, -1, 0, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "nranks 0");
    cr_expect_eq(fx_coll_p2p(&p, 4, 1, 0, 8, -1, 0, 0, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "elem_size 0");
    cr_expect_eq(fx_coll_p2p(NULL, 4, 1, 0, 8, -1, 0, ES, CHUNK_BYTES), FX_ERR_INVALID_ARG,
                 "plan NULL");
    fx_plan_fini(&p);
}

/* ---- the simulator: every rank's plan of one step at once ---- */

/* One simulated step: dst[k] / src[k] are rank k's peers (-1: none), counts per rank. */
struct step {
    int n;
    int dst[MAX_RANKS];
    int src[MAX_RANKS];
    size_t count;
    uint32_t seed;
};

static unsigned char byte_of(int rank, size_t i)
{
    return (unsigned char)(rank * 37 + i * 11 + (i >> 8));
}

/* Runs the step through the simulator and checks that every receiver got its sender's bytes. */
static void run_step(const struct step *st)
{
    struct fx_plan plans[MAX_RANKS];
    struct fx_coll_sim_rank ranks[MAX_RANKS];
    unsigned char *send[MAX_RANKS];
    unsigned char *recv[MAX_RANKS];
    struct fx_coll_sim_result res;
    size_t bytes = st->count * ES;
    fx_status status;

    for (int k = 0; k < st->n; k++) {
        fx_plan_init(&plans[k]);
        cr_assert_eq(fx_coll_p2p(&plans[k], st->n, k, st->dst[k], st->count, st->src[k], st->count,
                                 ES, CHUNK_BYTES),
                     FX_OK, "rank %d of %d", k, st->n);
        send[k] = malloc(bytes + 1); /* never NULL, even for count 0 */
        recv[k] = malloc(bytes + 1);
        cr_assert(send[k] != NULL && recv[k] != NULL);
        for (size_t i = 0; i < bytes; i++) {
            send[k][i] = byte_of(k, i);
        }
        memset(recv[k], 0xee, bytes + 1);
        ranks[k] = (struct fx_coll_sim_rank){&plans[k], send[k], st->count, recv[k], st->count};
    }
    status = fx_coll_sim_run(ranks, st->n, NULL, NULL, st->seed, &res);
    cr_expect_eq(status, FX_OK, "n %d count %zu seed %u: %s", st->n, st->count, st->seed,
                 res.error);
    for (int k = 0; k < st->n && status == FX_OK; k++) {
        size_t wrong = 0;

        for (size_t i = 0; st->src[k] >= 0 && i < bytes; i++) {
            wrong += recv[k][i] != byte_of(st->src[k], i);
        }
        cr_expect_eq(wrong, 0, "n %d count %zu: rank %d got %zu wrong bytes from rank %d", st->n,
                     st->count, k, wrong, st->src[k]);
        cr_expect_eq(recv[k][bytes], 0xee, "rank %d: written past the message", k);
        if (st->dst[k] >= 0) {
            cr_expect_eq(res.link_msgs[k * st->n + st->dst[k]], expected_ops(st->count, CHUNK),
                         "n %d count %zu: rank %d sent %llu messages", st->n, st->count, k,
                         (unsigned long long)res.link_msgs[k * st->n + st->dst[k]]);
        }
    }
    fx_coll_sim_result_fini(&res);
    for (int k = 0; k < st->n; k++) {
        fx_plan_fini(&plans[k]);
        free(send[k]);
        free(recv[k]);
    }
}

static struct step one_message(int n, int from, int to, size_t count)
{
    struct step st = {.n = n, .count = count};

    for (int k = 0; k < n; k++) {
        st.dst[k] = -1;
        st.src[k] = -1;
    }
    st.dst[from] = to;
    st.src[to]   = from;
    return st;
}

Test(p2p_plan, every_pair_delivers_through_the_simulator, .timeout = 30)
{
    static const size_t counts[] = {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3};

    for (int n = 2; n <= 6; n++) {
        for (int a = 0; a < n; a++) {
            for (int b = 0; b < n; b++) {
                for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]) && a != b; c++) {
                    struct step st = one_message(n, a, b, counts[c]);

                    run_step(&st);
                }
            }
        }
    }
}

/* Every rank sends to rank + shift and receives from rank - shift at once; shift n / 2 of an
 * even n pairs the ranks up, each sending to the rank it receives from. */
Test(p2p_plan, exchanges_never_deadlock_under_any_schedule, .timeout = 30)
{
    for (uint32_t seed = 0; seed < 24; seed++) {
        for (int n = 2; n <= MAX_RANKS; n++) {
            for (int shift = 1; shift < n; shift++) {
                struct step st = {.n = n, .count = (seed % 4) * CHUNK + seed % 3, .seed = seed};

                for (int k = 0; k < n; k++) {
                    st.dst[k] = (k + shift) % n;
                    st.src[k] = (k - shift + n) % n;
                }
                run_step(&st);
            }
        }
    }
}

Test(p2p_plan, differing_counts_are_caught_as_a_length_mismatch, .timeout = 10)
{
    struct fx_plan plans[2];
    struct fx_coll_sim_rank ranks[2];
    unsigned char sbuf[4 * CHUNK * ES] = {0};
    unsigned char rbuf[4 * CHUNK * ES];
    struct fx_coll_sim_result res;

    fx_plan_init(&plans[0]);
    fx_plan_init(&plans[1]);
    cr_assert_eq(fx_coll_p2p(&plans[0], 2, 0, 1, CHUNK + 1, -1, 0, ES, CHUNK_BYTES), FX_OK);
    cr_assert_eq(fx_coll_p2p(&plans[1], 2, 1, -1, 0, 0, CHUNK + 2, ES, CHUNK_BYTES), FX_OK);
    ranks[0] = (struct fx_coll_sim_rank){&plans[0], sbuf, 4 * CHUNK, NULL, 0};
    ranks[1] = (struct fx_coll_sim_rank){&plans[1], NULL, 0, rbuf, 4 * CHUNK};
    cr_expect_eq(fx_coll_sim_run(ranks, 2, NULL, NULL, 0, &res), FX_ERR_MISMATCH, "%s", res.error);
    fx_coll_sim_result_fini(&res);
    fx_plan_fini(&plans[0]);
    fx_plan_fini(&plans[1]);
}
